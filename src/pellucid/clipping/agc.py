"""Unit-wise adaptive gradient clipping (AGC; Brock et al. 2021, "NFNets").

Each output unit's gradient ``G_i`` (a row of a Linear weight, one output filter of a conv)
is rescaled when ``||G_i|| > clip_factor * max(||W_i||, eps)``; vectors (biases, norm
scales) are one unit. The paper leaves the final classifier layer unclipped:
pass ``exclude=classifier_parameters(model)``.

Units are handled a few kernels at a time (all tensors with the same row length in one
norm, all vectors in one multi-tensor norm), not by a Python loop of kernels per parameter.

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(2, 2))
    >>> w.grad = torch.tensor([[1.0, 0.0], [0.0, 0.001]])
    >>> _ = adaptive_clip_grad_([w], clip_factor=0.1)
    >>> w.grad
    tensor([[0.1414, 0.0000],
            [0.0000, 0.0010]])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

from pellucid._validation import check_float
from pellucid.clipping.functional import Parameters, as_tensor_list, check_norm_type

__all__ = ["adaptive_clip_grad_", "agc_coefficients", "classifier_parameters", "unitwise_norm"]


def unitwise_norm(x: torch.Tensor, norm_type: float = 2.0) -> torch.Tensor:
    """Norm of each output unit: over all dims but the first (whole tensor if ``ndim <= 1``).

    The result broadcasts against ``x`` (``keepdim``), as in the paper's reference code.

    Example:
        >>> unitwise_norm(torch.tensor([[3.0, 4.0], [0.0, 1.0]])).flatten().tolist()
        [5.0, 1.0]
    """
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x, norm_type, keepdim=True)
    return torch.linalg.vector_norm(x, norm_type, dim=tuple(range(1, x.ndim)), keepdim=True)


def classifier_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the model's last ``nn.Linear`` (the classifier AGC should leave out).

    Raises:
        TypeError: `model` is not an nn.Module.
        ValueError: the model has no nn.Linear layer.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        >>> [tuple(p.shape) for p in classifier_parameters(net)]
        [(2, 8), (2,)]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}.")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            "`model` must contain an nn.Linear classifier to exclude; got a model without "
            "one. Pass the parameters to leave unclipped through `exclude=` yourself."
        )
    return list(linears[-1].parameters())


class _Plan(NamedTuple):
    order: list[int]  # gradient index of each multiplier
    mults: list[torch.Tensor]  # broadcasts against grads[order[k]]: (units, 1, ...) or 0-d
    before: torch.Tensor
    after: torch.Tensor


class _Layout(NamedTuple):
    groups: list[tuple[list[int], bool, tuple[int, ...], list[int], torch.device | None]]
    order: list[int]
    sizes: list[int]  # units per group
    pick: torch.Tensor  # positions of [gradient norms..., weight norms...] in the joint vector


_LAYOUTS: dict[tuple[Any, ...], _Layout] = {}
#: Elements from which a tensor's unit norms are taken in place rather than from a copy
#: shared with same-shaped tensors: on a CPU a copy costs about as much as a norm kernel's
#: call from a few thousand elements on; on a GPU a launch costs as much as copying megabytes.
_ALONE_CPU = 1 << 15
_ALONE_DEVICE = 1 << 22


def _layout(grads: list[torch.Tensor]) -> _Layout:
    """How to group ``grads`` (cached by shapes, dtypes and devices: the same every step)."""
    key = tuple((g.shape, g.dtype, g.device) for g in grads)
    layout = _LAYOUTS.get(key)
    if layout is not None:
        return layout
    # Tensors whose units have the same shape share a kernel: matrices/convs by their
    # trailing shape (concatenated along dim 0), vectors by length (stacked: one unit each).
    # A large tensor keeps a group of its own: concatenating it would copy its weights and
    # gradient every step, which costs more than the kernel launches it saves.
    first = grads[0].device
    by_key: dict[tuple[Any, ...], list[int]] = {}
    for i, g in enumerate(grads):
        k = (g.ndim <= 1, g.shape[1:] if g.ndim > 1 else g.numel(), g.device, g.dtype)
        alone = g.numel() >= (_ALONE_CPU if g.device.type == "cpu" else _ALONE_DEVICE)
        by_key.setdefault((*k, i) if alone else k, []).append(i)
    groups = []
    for (is_vector, trail, device, *_), indices in by_key.items():
        units = [] if is_vector else [grads[i].shape[0] for i in indices]
        view = (-1,) + (1,) * len(trail) if units else ()
        groups.append((indices, is_vector, view, units, device if device != first else None))
    order = [i for indices, *_ in groups for i in indices]
    sizes = [sum(units) if units else len(indices) for indices, _, _, units, _ in groups]
    g_pos: list[int] = []
    w_pos: list[int] = []
    offset = 0
    for size in sizes:  # each group contributes [its gradient norms, its weight norms]
        g_pos += range(offset, offset + size)
        w_pos += range(offset + size, offset + 2 * size)
        offset += 2 * size
    pick = torch.tensor(g_pos + w_pos, device=first)
    if len(_LAYOUTS) >= 32:
        _LAYOUTS.clear()
    layout = _LAYOUTS[key] = _Layout(groups, order, sizes, pick)
    return layout


def _agc_plan(
    grads: list[torch.Tensor],
    params: list[torch.Tensor],
    clip_factor: float,
    eps: float,
    norm_type: float,
) -> _Plan:
    first = grads[0].device
    layout = _layout(grads)
    parts: list[torch.Tensor] = []  # per group: its gradient unit norms, then its weights'
    for indices, is_vector, _, _, moved in layout.groups:
        if len(indices) == 1:  # its own group: the norms of the tensors themselves, no copy
            g, w = grads[indices[0]], params[indices[0]].detach()
            g, w = (
                (g.reshape(1, -1), w.reshape(1, -1)) if is_vector else (g.flatten(1), w.flatten(1))
            )
            norms = torch.cat([_row_norms(g, norm_type), _row_norms(w, norm_type)])
        else:
            tensors = [grads[i] for i in indices] + [params[i] for i in indices]
            both = torch.stack(tensors) if is_vector else torch.cat(tensors)
            norms = _row_norms(both.view(both.shape[0], -1), norm_type)
        parts.append(norms if moved is None else norms.to(first))
    joint = parts[0] if len(parts) == 1 else torch.cat(parts)
    g_norm, w_norm = joint[layout.pick].view(2, -1).unbind()
    bound = w_norm.clamp(min=eps).mul_(clip_factor)
    coef = (bound / g_norm.clamp(min=1e-6)).clamp_(max=1.0)
    mults: list[torch.Tensor] = []
    pieces = coef.split(layout.sizes) if len(parts) > 1 else (coef,)
    for piece, (_, _, view, units, moved) in zip(pieces, layout.groups, strict=True):
        if moved is not None:
            piece = piece.to(moved)
        mults += piece.view(view).split(units) if units else piece.unbind()
    before = torch.linalg.vector_norm(g_norm, norm_type)
    after = torch.linalg.vector_norm(g_norm * coef, norm_type)
    return _Plan(layout.order, mults, before, after)


def _row_norms(rows: torch.Tensor, norm_type: float) -> torch.Tensor:
    """The ``norm_type`` norm of each row (zeros for rows of no elements)."""
    if rows.numel() == 0:
        return rows.new_zeros(rows.shape[0])
    return torch.linalg.vector_norm(rows, norm_type, dim=1)


@torch.no_grad()
def agc_coefficients(
    grads: list[torch.Tensor],
    params: list[torch.Tensor],
    *,
    clip_factor: float,
    eps: float,
    norm_type: float,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The pure half of AGC: one multiplier per unit, plus the total norm before and after.

    Returns ``(multipliers, total_norm_before, total_norm_after)``: for each gradient a
    tensor that broadcasts against it (shape ``(units, 1, ...)``, or 0-d for vectors), and
    the total ``norm_type`` norm of the gradients before and after scaling. Tensors whose
    units have the same shape share one norm kernel (a vector is one unit); the bounds of
    all units are then computed in one pass.

    Example:
        >>> g, w = torch.full((2, 2), 10.0), torch.ones(2, 2)
        >>> m, before, after = agc_coefficients([g], [w], clip_factor=0.1, eps=1e-3,
        ...                                     norm_type=2.0)
        >>> [round(v, 6) for v in m[0].flatten().tolist()], round(float(after), 4)
        ([0.01, 0.01], 0.2)
    """
    plan = _agc_plan(grads, params, clip_factor, eps, norm_type)
    multipliers: list[torch.Tensor | None] = [None] * len(grads)
    for i, m in zip(plan.order, plan.mults, strict=True):
        multipliers[i] = m
    return multipliers, plan.before, plan.after  # type: ignore[return-value]


def _check_agc_args(clip_factor: float, eps: float, norm_type: float) -> tuple[float, float, float]:
    clip_factor = check_float(
        "clip_factor",
        clip_factor,
        min_value=0.0,
        min_inclusive=False,
        hint=" The paper uses 0.01 for large batches, up to 0.16 for small ones.",
    )
    eps = check_float("eps", eps, min_value=0.0)
    return clip_factor, eps, check_norm_type(norm_type)


def split_excluded(
    params: list[torch.Tensor], exclude: Iterable[torch.Tensor]
) -> list[torch.Tensor]:
    """``params`` with a gradient, minus the excluded tensors (compared by identity)."""
    skip = {id(t) for t in as_tensor_list(exclude, "exclude")}
    return [p for p in params if p.grad is not None and id(p) not in skip]


@torch.no_grad()
def adaptive_clip_grad_(
    parameters: Parameters,
    clip_factor: float = 0.01,
    *,
    eps: float = 1e-3,
    norm_type: float = 2.0,
    exclude: Iterable[torch.Tensor] = (),
) -> torch.Tensor:
    """Unit-wise adaptive gradient clipping, in place; returns the total norm before.

    Each unit's gradient norm is bounded by ``clip_factor * max(||W_unit||, eps)``:
    ``G_i <- G_i * min(1, clip_factor * max(||W_i||, eps) / ||G_i||)``.

    Args:
        parameters: tensors with ``.grad`` (or an ``nn.Module``).
        clip_factor: the bound relative to the weight norm (lambda in the paper).
        eps: the smallest weight norm used (so zero-initialised weights can move).
        norm_type: the p of the unit-wise norms.
        exclude: parameters left unclipped, e.g. :func:`classifier_parameters`.

    Raises:
        TypeError: `parameters` is not a tensor, an iterable of tensors or an nn.Module, or a number
            argument is not a real number.
        ValueError: `clip_factor` is not > 0, `eps` is negative, or `norm_type` is not > 0.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        >>> net(torch.ones(3, 4)).sum().mul(1e3).backward()
        >>> float(adaptive_clip_grad_(net, 0.01, exclude=classifier_parameters(net))) > 0
        True
    """
    params = as_tensor_list(parameters)
    clip_factor, eps, norm_type = _check_agc_args(clip_factor, eps, norm_type)
    params = split_excluded(params, exclude)
    if not params:
        return torch.tensor(0.0)
    grads: list[torch.Tensor] = [p.grad for p in params]  # type: ignore[misc]
    plan = _agc_plan(grads, params, clip_factor, eps, norm_type)
    torch._foreach_mul_([grads[i] for i in plan.order], plan.mults)
    before = plan.before
    return before
