"""Clipping per tensor and per layer: each group of gradients gets its own norm bound.

Per-tensor clipping follows TensorFlow's ``clip_by_norm`` (``t * max_norm / max(norm,
max_norm)``: an exact bound, no epsilon); per-layer clipping bounds the joint norm of each
module's parameters (:func:`layer_groups`).

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(2)); w.grad = torch.tensor([3.0, 4.0])
    >>> clip_grad_norm_per_tensor_([w], 1.0).tolist(), w.grad.tolist()
    ([5.0], [0.6000000238418579, 0.800000011920929])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from pellucid.clipping.functional import (
    GradNorms,
    Parameters,
    _check_max_norm,
    _grads,
    _scale_,
    as_tensor_list,
    check_norm_type,
)

__all__ = ["clip_grad_norm_per_layer_", "clip_grad_norm_per_tensor_", "layer_groups"]


def layer_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters grouped by the module that owns them (``"body.0"`` -> weight, bias).

    Raises:
        TypeError: `model` is not an nn.Module.

    Example:
        >>> list(layer_groups(torch.nn.Sequential(torch.nn.Linear(2, 2))))
        ['0']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}.")
    groups: dict[str, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                groups.setdefault(name or "(root)", []).append(p)
    return groups


def _group_coef(norms: torch.Tensor, max_norm: float) -> torch.Tensor:
    # TensorFlow's clip_by_norm: t * max_norm / max(norm, max_norm); exact bound, no eps.
    return max_norm / torch.clamp(norms, min=max_norm)


@torch.no_grad()
def clip_grad_norm_per_tensor_(
    parameters: Parameters, max_norm: float, *, norm_type: float = 2.0
) -> torch.Tensor:
    """Clip each gradient to its own norm bound (TensorFlow's ``clip_by_norm``), in place.

    Returns the per-tensor norms before clipping (one entry per parameter with a gradient).

    Raises:
        TypeError: `parameters` is not a tensor, an iterable of tensors or an nn.Module, or a number
            argument is not a real number.
        ValueError: `parameters` is an exhausted generator, or a number is out of range (`max_norm`
            <= 0, `norm_type` <= 0, NaN).

    Example:
        >>> import torch
        >>> a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        >>> a.grad, b.grad = torch.tensor([3.0]), torch.tensor([0.5])
        >>> clip_grad_norm_per_tensor_([a, b], 1.0).tolist(), a.grad.item(), b.grad.item()
        ([3.0, 0.5], 1.0, 0.5)
    """
    params = as_tensor_list(parameters)
    max_norm = _check_max_norm(max_norm)
    norm_type = check_norm_type(norm_type)
    grads = _grads(params)
    if not grads:
        return torch.zeros(0)
    norms = GradNorms(grads).norms(norm_type)
    first = grads[0].device
    stacked = torch.stack([n.to(first, torch.float64) for n in norms])
    coefs = _group_coef(stacked, max_norm)
    torch._foreach_mul_(grads, [c.to(g.device, g.dtype) for c, g in zip(coefs, grads, strict=True)])
    return stacked


@torch.no_grad()
def clip_grad_norm_per_layer_(
    groups: Mapping[str, Iterable[torch.Tensor]] | nn.Module,
    max_norm: float,
    *,
    norm_type: float = 2.0,
) -> dict[str, torch.Tensor]:
    """Clip each group's (layer's) joint gradient norm to ``max_norm``, in place.

    Args:
        groups: ``{name: parameters}``, or a module (grouped by :func:`layer_groups`).
        max_norm: bound on each group's norm.
        norm_type: the p of the p-norm, or ``inf``.

    Returns:
        ``{name: norm before clipping}`` for groups that have gradients.

    Raises:
        TypeError: `model` is not an nn.Module, or a number argument is not a real number.
        ValueError: `max_norm` or `norm_type` is not > 0.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 1))
        >>> net(torch.ones(1, 2)).sum().mul(100).backward()
        >>> norms = clip_grad_norm_per_layer_(net, 1.0)
        >>> round(float(torch.cat([p.grad.flatten() for p in net.parameters()]).norm()), 4)
        1.0
    """
    if isinstance(groups, nn.Module):
        groups = layer_groups(groups)
    if not isinstance(groups, Mapping):
        raise TypeError(
            f"`groups` must be a mapping name -> parameters or an nn.Module; "
            f"got {type(groups).__name__}."
        )
    max_norm = _check_max_norm(max_norm)
    norm_type = check_norm_type(norm_type)
    lists = {name: _grads(as_tensor_list(ps, f"groups[{name!r}]")) for name, ps in groups.items()}
    lists = {name: gs for name, gs in lists.items() if gs}
    result: dict[str, torch.Tensor] = {}
    for name, grads in lists.items():
        total = GradNorms(grads).total(norm_type)
        coef = _group_coef(total.to(torch.float64), max_norm)
        _scale_(grads, coef.to(grads[0].dtype), None)
        result[name] = total
    return result
