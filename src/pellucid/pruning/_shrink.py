"""Build smaller copies of Linear, convolution, norm and multi-head attention modules.

``shrink_module`` keeps the given output and input indices and copies the weights;
``module_spec`` / ``empty_like_spec`` describe and rebuild a module's (pruned) shape, for
saving and loading structurally pruned models.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["SHRINKABLE", "empty_like_spec", "module_spec", "shrink_module"]

SHRINKABLE: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.MultiheadAttention,
)


def _param(old: Any, value: torch.Tensor) -> nn.Parameter:
    requires_grad = old.requires_grad if old is not None else True
    return nn.Parameter(value.detach().clone(), requires_grad=requires_grad)


def shrink_module(
    module: Any, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None
) -> nn.Module:
    """A copy of ``module`` keeping output units ``out_keep`` and inputs ``in_keep`` (None: all).

    Example:
        >>> small = shrink_module(nn.Linear(4, 3), torch.tensor([0, 2]), torch.tensor([1]))
        >>> tuple(small.weight.shape)
        (2, 1)
    """
    new: Any = copy.deepcopy(module)
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            w = module.weight
            w = w[out_keep] if out_keep is not None else w
            w = w[:, in_keep] if in_keep is not None else w
            new.weight = _param(module.weight, w)
            new.out_features, new.in_features = w.shape
            if module.bias is not None and out_keep is not None:
                new.bias = _param(module.bias, module.bias[out_keep])
        elif isinstance(module, nn.modules.conv._ConvNd):
            w = module.weight
            depthwise = module.groups == module.in_channels == module.out_channels
            if depthwise:
                keep = out_keep if out_keep is not None else in_keep
                if keep is not None:
                    w = w[keep]
                new.groups = new.in_channels = new.out_channels = w.shape[0]
            else:
                w = w[out_keep] if out_keep is not None else w
                if in_keep is not None and module.groups != 1:
                    w = _grouped_inputs(module, w, out_keep, in_keep)
                elif in_keep is not None:
                    w = w[:, in_keep]
                new.out_channels = w.shape[0]
                new.in_channels = w.shape[1] * module.groups
                keep = out_keep
            new.weight = _param(module.weight, w)
            if module.bias is not None and keep is not None:
                new.bias = _param(module.bias, module.bias[keep])
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            keep = out_keep if out_keep is not None else in_keep
            if keep is not None:
                new.num_features = int(keep.numel())
                if module.affine:
                    new.weight = _param(module.weight, module.weight[keep])
                    new.bias = _param(module.bias, module.bias[keep])
                if module.track_running_stats and module.running_mean is not None:
                    new.running_mean = module.running_mean[keep].clone()
                    new.running_var = module.running_var[keep].clone()  # type: ignore[index]
        elif isinstance(module, nn.LayerNorm):
            keep = out_keep if out_keep is not None else in_keep
            if keep is not None:
                new.normalized_shape = (int(keep.numel()),)
                if module.weight is not None:
                    new.weight = _param(module.weight, module.weight[keep])
                if module.bias is not None:
                    new.bias = _param(module.bias, module.bias[keep])
        elif isinstance(module, nn.GroupNorm):
            keep = out_keep if out_keep is not None else in_keep
            if keep is not None:
                new.num_channels = int(keep.numel())
                if module.affine:
                    new.weight = _param(module.weight, module.weight[keep])
                    new.bias = _param(module.bias, module.bias[keep])
        elif isinstance(module, nn.MultiheadAttention):
            keep = out_keep if out_keep is not None else in_keep
            if keep is not None:
                _shrink_attention(new, module, keep)
        else:
            raise TypeError(f"Cannot shrink a {type(module).__name__}.")
    return new


def _grouped_inputs(module: Any, w: torch.Tensor, out_keep: Any, in_keep: Any) -> torch.Tensor:
    """Keep, for every kept output, the kept inputs of its own group (equal per group)."""
    groups = module.groups
    per_in, per_out = module.in_channels // groups, module.out_channels // groups
    counts = torch.bincount(in_keep // per_in, minlength=groups)
    if not bool((counts == counts[0]).all()):
        raise ValueError(
            "Cannot remove input channels of a grouped convolution unevenly across its groups."
        )
    local = (in_keep % per_in).reshape(groups, -1)  # (groups, kept per group), sorted
    rows = out_keep if out_keep is not None else torch.arange(module.out_channels)
    index = local[rows // per_out]  # (kept outputs, kept per group)
    return torch.gather(
        w, 1, index.reshape(*index.shape, *[1] * (w.ndim - 2)).expand(-1, -1, *w.shape[2:])
    )


def _shrink_attention(new: Any, module: nn.MultiheadAttention, keep: torch.Tensor) -> None:
    """Keep embedding channels ``keep`` (the same ones in every head, q/k/v and output)."""
    width = module.embed_dim
    rows = torch.cat([keep, keep + width, keep + 2 * width])
    new.in_proj_weight = _param(module.in_proj_weight, module.in_proj_weight[rows][:, keep])
    if module.in_proj_bias is not None:
        new.in_proj_bias = _param(module.in_proj_bias, module.in_proj_bias[rows])
    proj = module.out_proj
    new.out_proj.weight = _param(proj.weight, proj.weight[keep][:, keep])
    if proj.bias is not None:
        new.out_proj.bias = _param(proj.bias, proj.bias[keep])
    n = int(keep.numel())
    new.out_proj.in_features = new.out_proj.out_features = n
    new.embed_dim = new.kdim = new.vdim = n
    new.head_dim = n // module.num_heads


def module_spec(module: nn.Module) -> dict[str, Any]:
    """The shape-defining attributes of a shrinkable module (JSON-able).

    Example:
        >>> module_spec(nn.Linear(3, 2))
        {'type': 'Linear', 'in': 3, 'out': 2}
    """
    kind = type(module).__name__
    if isinstance(module, nn.Linear):
        return {"type": kind, "in": module.in_features, "out": module.out_features}
    if isinstance(module, nn.modules.conv._ConvNd):
        return {
            "type": kind,
            "in": module.in_channels,
            "out": module.out_channels,
            "groups": module.groups,
        }
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"type": kind, "out": module.num_features}
    if isinstance(module, nn.LayerNorm):
        return {"type": kind, "out": int(module.normalized_shape[-1])}
    if isinstance(module, nn.GroupNorm):
        return {"type": kind, "out": module.num_channels, "groups": module.num_groups}
    if isinstance(module, nn.MultiheadAttention):
        return {"type": kind, "out": module.embed_dim, "heads": module.num_heads}
    raise TypeError(f"No shape spec for a {type(module).__name__}.")


def empty_like_spec(module: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """A copy of ``module`` resized to ``spec`` (weights are placeholders to be loaded)."""
    current = module_spec(module)
    out = torch.arange(spec["out"]) if spec["out"] != current["out"] else None
    in_keep = None
    if "in" in spec and spec["in"] != current["in"]:
        groups = spec.get("groups", 1)
        in_keep = torch.arange(spec["in"] // groups)
        if groups > 1 and groups == current.get("groups"):
            per_in = current["in"] // groups
            in_keep = (in_keep[None, :] + per_in * torch.arange(groups)[:, None]).flatten()
    if isinstance(module, nn.GroupNorm | nn.MultiheadAttention):
        return shrink_module(module, out, None)
    if isinstance(module, nn.modules.conv._ConvNd) and spec.get("groups") != module.groups:
        if not (spec["groups"] == spec["in"] == spec["out"]):
            raise ValueError(f"Cannot rebuild a convolution with spec {spec}.")
        return shrink_module(module, out, None)
    return shrink_module(module, out, in_keep)
