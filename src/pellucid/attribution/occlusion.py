"""Occlusion (a sliding window) and feature ablation (groups from a ``feature_mask``).

Both replace part of the input with a baseline and report how much the target score drops.
Token-id inputs (integer tensors) take ``mask_token=``: removed tokens become that id.
Every example x window (or group) is one virtual row of one batched evaluation, built chunk
by chunk on the inputs' device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pellucid._evaluate import block_scores, broadcast_baseline, map_chunks
from pellucid._registry import register
from pellucid._shell import Run, explaining
from pellucid._targets import Target
from pellucid._validation import check_int
from pellucid.attribution._coalitions import (
    CoalitionValues,
    chunk_rows,
    mix,
    resolve_feature_mask,
)
from pellucid.attribution._tokens import check_token_call, token_run
from pellucid.explanation import Explanation

__all__ = ["feature_ablation", "occlusion"]


def _window_shape(name: str, value: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        dims = tuple(check_int(name, v, min_value=1) for v in value)
        if len(dims) != len(shape):
            raise ValueError(
                f"`{name}` must have one entry per dimension of an example {shape}; "
                f"got {tuple(value)}."
            )
        return dims
    size = check_int(name, value, min_value=1)
    if len(shape) == 3:  # (C, H, W): all channels at once
        return (shape[0], size, size)
    return (size,) * len(shape)


def _window_masks(
    ids: torch.Tensor,
    counts: tuple[int, ...],
    window: tuple[int, ...],
    stride: tuple[int, ...],
    shape: tuple[int, ...],
) -> torch.Tensor:
    """Windows ``ids`` (k,) -> (k, D) bool masks (True inside the window)."""
    mask = torch.ones(ids.shape[0], *([1] * len(shape)), dtype=torch.bool, device=ids.device)
    rest = ids
    for dim in reversed(range(len(shape))):
        pos = rest % counts[dim]
        rest = rest // counts[dim]
        start = (pos * stride[dim]).unsqueeze(1)
        along = torch.arange(shape[dim], device=ids.device).unsqueeze(0)
        inside = (along >= start) & (along < start + window[dim])  # (k, L_d)
        view = [ids.shape[0]] + [1] * len(shape)
        view[dim + 1] = shape[dim]
        mask = mask & inside.view(view)
    return mask.reshape(ids.shape[0], -1)


@register(kind="perturbation", input_kinds=("tabular", "image", "text"))
def occlusion(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    window: int | Sequence[int] = 1,
    stride: int | Sequence[int] | None = None,
    baseline: float | torch.Tensor | None = None,
    mask_token: int | torch.Tensor | None = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Occlusion (Zeiler & Fergus 2014): slide a baseline-valued window over each example.

    Each feature's attribution is the mean drop of the target score, ``f(x) - f(x
    occluded)``, over the windows that cover it (captum's convention, including its window
    positions: the last window along a dimension is clipped at the edge); features no window
    covers (a stride larger than the window) get 0.

    Args:
        model: a callable ``Tensor -> Tensor``.
        inputs: a batch-first float tensor, or integer token ids with ``mask_token``.
        target: which output to explain.
        window: window shape, one entry per dimension of an example; an int is a window over
            every dimension (for ``(C, H, W)`` examples: all channels, ``window x window``).
        stride: step between windows, same forms as ``window``; default 1.
        baseline: the value occluded features take (scalar or broadcastable tensor; 0).
        mask_token: for token-id inputs (an integer tensor): the id occluded tokens take
            (one id, or a tensor of ids per position); ``window`` then counts tokens.
        batch_size: rows per forward pass (memory bound).
        max_memory: a budget for the call's peak memory, in bytes or as a size such as
            ``"2GB"`` or ``"512MiB"``: picks ``batch_size`` from the method's per-row cost
            and the model's activations measured on one row (``params["batch_size"]``).
            Pass it or ``batch_size``, not both.

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            `window` or `stride` does not fit the input shape, or `baseline` does not broadcast;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(4, 1, bias=False)
        >>> e = occlusion(net, torch.ones(2, 4))
        >>> torch.allclose(e.attributions, net.weight.detach().expand(2, 4))
        True
    """
    tokens = check_token_call("occlusion", model, inputs, mask_token, baseline=baseline)
    with explaining("occlusion", locals(), floating=not tokens) as outer:
        run, baseline = token_run(outer, mask_token) if tokens else (outer, baseline)
        x = run.inputs
        shape = tuple(x.shape[1:])
        win = _window_shape("window", window, shape)
        step = _window_shape("stride", 1 if stride is None else stride, shape)
        too_big = [d for d in range(len(shape)) if win[d] > shape[d]]
        if too_big:
            d = too_big[0]
            raise ValueError(
                f"`window` {win} must fit in one example of shape {shape}; dimension {d} is "
                f"{win[d]} > {shape[d]}."
            )
        # captum's positions: the last window is clipped at the edge, so all is covered
        counts = tuple(-(-(shape[d] - win[d]) // step[d]) + 1 for d in range(len(shape)))
        base = broadcast_baseline(baseline, x)
        windows = _Windows(counts, win, step, shape, x)
        drops, n_live = _drops(run, windows, base)
        run.result(
            windows.spread(drops, run.batch_size).view_as(x),
            baseline=base,
            params={"window": win, "stride": step},
            extras={"n_windows": windows.n, "n_evaluations": n_live},
        )
    return run.explanation


class _Windows:
    """The occlusion windows of one example shape: masks cached when small, else built."""

    def __init__(
        self,
        counts: tuple[int, ...],
        win: tuple[int, ...],
        step: tuple[int, ...],
        shape: tuple[int, ...],
        x: torch.Tensor,
    ) -> None:
        self.counts, self.win, self.step, self.shape = counts, win, step, shape
        self.n, self.dtype, self.device = math.prod(counts), x.dtype, x.device
        self.cached = None  # all window masks at once when small (the usual case)
        if self.n * math.prod(shape) <= 1 << 22:
            self.cached = self.masks(torch.arange(self.n, device=x.device))

    def masks(self, ids: torch.Tensor) -> torch.Tensor:
        if self.cached is not None:
            return self.cached.index_select(0, ids)
        return _window_masks(ids, self.counts, self.win, self.step, self.shape).to(self.dtype)

    def spread(self, drops: torch.Tensor, batch_size: int | None) -> torch.Tensor:
        """Each feature's mean drop over the windows that cover it, (N, features)."""
        n = drops.shape[0]
        total = drops.new_zeros(n, math.prod(self.shape))
        covered = torch.zeros(total.shape[1], dtype=self.dtype, device=self.device)
        size = chunk_rows(batch_size, self.shape, total=max(1, n * self.n), device=self.device)
        mask_rows = self.n if self.cached is not None else max(1, size // max(1, n))
        for lo in range(0, self.n, mask_rows):
            masks = self.masks(torch.arange(lo, min(self.n, lo + mask_rows), device=self.device))
            total += drops[:, lo : lo + masks.shape[0]] @ masks
            covered += masks.sum(0)
        return torch.where(covered > 0, total / covered.clamp_min(1), torch.zeros_like(total))


def _drops(run: Run, windows: _Windows, base: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``f(x) - f(x with window w occluded)`` for every example and window, (N, windows),
    and the number of rows evaluated."""
    prep, x, n_win, shape, cached = run.prep, run.inputs, windows.n, windows.shape, windows.cached
    n = x.shape[0]
    # contiguous: a transposed or strided input (column-major DataFrame values) too
    flat_x, flat_b = x.reshape(n, -1).contiguous(), base.reshape(n, -1).contiguous()
    full = prep.target.scores(prep.output)
    # a window whose features already equal the baseline leaves the input unchanged: its
    # drop is exactly 0, so only the windows that change something are evaluated
    live = None
    if cached is not None and not bool((flat_x != flat_b).all()):
        live = ((flat_x != flat_b).to(x.dtype) @ cached.T).reshape(-1).nonzero().view(-1)
    n_live = n * n_win if live is None else live.numel()
    size = chunk_rows(run.batch_size, shape, total=max(1, n_live), device=x.device)

    def evaluate(start: int, stop: int) -> torch.Tensor:
        idx = torch.arange(start, stop, device=x.device) if live is None else live[start:stop]
        ex = idx // n_win
        rows = mix(
            windows.masks(idx % n_win), flat_b.index_select(0, ex), flat_x.index_select(0, ex)
        )
        return prep.target.scores(prep.forward(rows.view(-1, *shape), ex), ex)

    if cached is not None and live is None:  # every window: one broadcast per block
        kept = 1 - cached

        def block(e0: int, e1: int, j0: int, j1: int) -> torch.Tensor:
            off = flat_x[e0:e1].unsqueeze(1) * kept[j0:j1].unsqueeze(0)
            on = cached[j0:j1].unsqueeze(0)
            return torch.addcmul(off, flat_b[e0:e1].unsqueeze(1), on).view(-1, *shape)

        balance = run.batch_size is None
        scores = block_scores(
            prep.forward, prep.target, block, n, n_win, size, device=x.device, balance=balance
        )
    elif live is None:
        prep.forward.expect(n * n_win)
        scores = map_chunks(evaluate, n * n_win, size)
    else:
        scores = full.repeat_interleave(n_win)
        if n_live:
            prep.forward.expect(n_live)
            scores[live] = map_chunks(evaluate, n_live, size).to(scores.dtype)
    return (full.unsqueeze(1) - scores.view(n, n_win)).to(x.dtype), n_live


@register(kind="perturbation", input_kinds=("tabular", "image", "text"))
def feature_ablation(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    feature_mask: torch.Tensor | str | None = None,
    n_segments: int = 16,
    baseline: float | torch.Tensor | None = None,
    mask_token: int | torch.Tensor | None = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Feature ablation: the drop ``f(x) - f(x with group g set to the baseline)`` per group.

    Every feature of a group gets the group's value (captum's convention); the per-group
    values are in ``extras["values"]`` (N, P).

    Args:
        model: a callable ``Tensor -> Tensor``.
        inputs: a batch-first float tensor, or integer token ids with ``mask_token``.
        target: which output to explain.
        feature_mask: integer group ids ``0..P-1`` of shape ``inputs.shape[1:]`` (shared) or
            ``inputs.shape`` (per example), ``"grid"`` or ``"slic"`` superpixels, or None
            (every feature alone).
        n_segments: number of superpixels for ``"grid"``/``"slic"``.
        baseline: the value ablated features take (scalar or broadcastable tensor; 0).
        mask_token: for token-id inputs (an integer tensor): the id ablated tokens take
            (one id, or a tensor of ids per position); group word pieces into words with
            ``feature_mask`` (see :func:`~pellucid.attribution.token_groups`).
        batch_size: rows per forward pass (memory bound).
        max_memory: a budget for the call's peak memory, in bytes or as a size such as
            ``"2GB"`` or ``"512MiB"``: picks ``batch_size`` from the method's per-row cost
            and the model's activations measured on one row (``params["batch_size"]``).
            Pass it or ``batch_size``, not both.

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            `feature_mask` does not match `inputs`, or `baseline` does not broadcast;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(4, 1, bias=False)
        >>> e = feature_ablation(net, torch.ones(1, 4), feature_mask=torch.tensor([0, 0, 1, 1]))
        >>> e.extras["values"].shape
        torch.Size([1, 2])
    """
    tokens = check_token_call("feature_ablation", model, inputs, mask_token, baseline=baseline)
    with explaining("feature_ablation", locals(), floating=not tokens) as outer:
        run, baseline = token_run(outer, mask_token) if tokens else (outer, baseline)
        x = run.inputs
        check_int("n_segments", n_segments, min_value=1)
        fmask = resolve_feature_mask(feature_mask, x, n_segments=n_segments)
        base = broadcast_baseline(baseline, x)
        game = CoalitionValues(
            run.prep.forward, run.prep.target, x, fmask, baseline=base, batch_size=run.batch_size
        )
        drop_one = ~torch.eye(fmask.n_players, dtype=torch.bool, device=x.device)
        values = (run.scores().unsqueeze(1) - game(drop_one)).to(x.dtype)
        run.result(
            fmask.spread(values).view_as(x),
            baseline=base,
            params={"feature_mask": feature_mask, "n_segments": n_segments},
            extras={"values": values, "n_players": fmask.n_players},
        )
    return run.explanation
