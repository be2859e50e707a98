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
from typing import NamedTuple

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


class _Rows(NamedTuple):
    order: list[int]  # gradient index of each row block
    rows: list[torch.Tensor]  # each gradient as (units, unit size); views when contiguous
    mults: tuple[torch.Tensor, ...]  # (units, 1) multiplier of each row block
    before: torch.Tensor
    after: torch.Tensor


def _agc_rows(grads: list[torch.Tensor], params: list[torch.Tensor], clip_factor: float,
              eps: float, norm_type: float) -> _Rows:
    first = grads[0].device
    by_width: dict[tuple[int, torch.device], list[int]] = {}
    shapes = []
    for i, g in enumerate(grads):
        units = g.shape[0] if g.ndim > 1 else 1  # a vector is one unit
        width = g.numel() // units if units else 0
        shapes.append((units, width))
        by_width.setdefault((width, g.device), []).append(i)
    order: list[int] = []
    rows_out: list[torch.Tensor] = []
    counts: list[int] = []
    g_parts: list[torch.Tensor] = []
    w_parts: list[torch.Tensor] = []
    for (width, device), indices in by_width.items():
        rows = [grads[i].reshape(shapes[i]) for i in indices]
        half = sum(shapes[i][0] for i in indices)
        if width == 0:  # no entries: nothing to clip
            norms = torch.zeros(2 * half, dtype=grads[indices[0]].dtype, device=device)
        else:
            weights = [params[i].detach().reshape(shapes[i]) for i in indices]
            norms = torch.linalg.vector_norm(torch.cat(rows + weights), norm_type, dim=1)
        if device != first:
            norms = norms.to(first)
        g_parts.append(norms[:half])
        w_parts.append(norms[half:])
        order += indices
        rows_out += rows
        counts += [shapes[i][0] for i in indices]
    g_norm = g_parts[0] if len(g_parts) == 1 else torch.cat(g_parts)
    w_norm = w_parts[0] if len(w_parts) == 1 else torch.cat(w_parts)
    bound = w_norm.clamp(min=eps).mul_(clip_factor)
    coef = (bound / g_norm.clamp(min=1e-6)).clamp_(max=1.0)
    mults = coef.unsqueeze(1).split(counts)
    if len(by_width) > 1 and any(r.device != first for r in rows_out):
        mults = tuple(m.to(r.device) for m, r in zip(mults, rows_out, strict=True))
    before = torch.linalg.vector_norm(g_norm, norm_type)
    after = torch.linalg.vector_norm(g_norm * coef, norm_type)
    return _Rows(order, rows_out, mults, before, after)


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
    the total ``norm_type`` norm of the gradients before and after scaling. Gradients and
    weights with the same unit size share one norm kernel (a vector is one unit); the
    bounds of all units are then computed in one pass.

    Example:
        >>> g, w = torch.full((2, 2), 10.0), torch.ones(2, 2)
        >>> m, before, after = agc_coefficients([g], [w], clip_factor=0.1, eps=1e-3,
        ...                                     norm_type=2.0)
        >>> m[0].flatten().tolist(), round(float(after), 4)
        [0.01, 0.01], 0.2828)
    """
    plan = _agc_rows(grads, params, clip_factor, eps, norm_type)
    multipliers: list[torch.Tensor | None] = [None] * len(grads)
    for i, m in zip(plan.order, plan.mults, strict=True):
        g = grads[i]
        multipliers[i] = m.view((-1,) + (1,) * (g.ndim - 1)) if g.ndim > 1 else m.view(())
    return multipliers, plan.before, plan.after  # type: ignore[return-value]


def _check_agc_args(clip_factor: float, eps: float, norm_type: float) -> tuple[float, float, float]:
    clip_factor = check_float(
        "clip_factor", clip_factor, min_value=0.0, min_inclusive=False,
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
    if all(g.is_contiguous() for g in grads):
        plan = _agc_rows(grads, params, clip_factor, eps, norm_type)
        torch._foreach_mul_(plan.rows, plan.mults)  # the rows are views of the gradients
        return plan.before
    multipliers, before, _ = agc_coefficients(
        grads, params, clip_factor=clip_factor, eps=eps, norm_type=norm_type
    )
    torch._foreach_mul_(grads, multipliers)
    return before
