"""Unstructured pruning: masks in the ``torch.nn.utils.prune`` format.

Computing masks is pure (:func:`magnitude_masks`, :func:`threshold_masks`); attaching them
is a thin in-place step through ``torch.nn.utils.prune.custom_from_mask``, so modules get
``weight_orig`` + ``weight_mask`` and the forward pre-hook, and ``prune.remove`` /
``prune.is_pruned`` keep working. Repeated pruning composes as torch's does: ``amount`` is
a fraction of the weights that are still unpruned.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(10, 10))
    >>> _ = prune_magnitude_(net, amount=0.5)
    >>> sparsity(net).overall
    0.5
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from pellucid._validation import check_choice, check_float, did_you_mean
from pellucid.pruning.importance import effective_weight, prunable_weights

__all__ = [
    "SparsityReport",
    "apply_masks_",
    "detach_pruned_",
    "magnitude_masks",
    "make_permanent_",
    "prune_magnitude_",
    "prune_threshold_",
    "sparsity",
    "threshold_masks",
]

Importance = str | Mapping[str, torch.Tensor]


def _check_amount(amount: Any) -> float | int:
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(
            f"`amount` must be a fraction in [0, 1) or a non-negative integer count; "
            f"got {amount!r} ({type(amount).__name__})."
        )
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(f"`amount` must be a non-negative integer count; got {amount}.")
        return int(amount)
    return check_float(
        "amount",
        amount,
        min_value=0.0,
        max_value=1.0,
        max_inclusive=False,
        hint=" Pass a fraction such as 0.9, or an integer count of weights.",
    )


def _n_to_prune(amount: float | int, size: int, where: str) -> int:
    n = amount if isinstance(amount, int) else round(amount * size)
    if n > size:
        raise ValueError(
            f"`amount` must be at most the number of unpruned weights; got {amount} for "
            f"{where}, which has {size}."
        )
    return n


def _targets(model: nn.Module, layers: Any) -> dict[str, Any]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}.")
    modules = prunable_weights(model)
    if layers is None:
        if not modules:
            raise ValueError("`model` has no Linear or convolution weights to prune.")
        return modules
    chosen: dict[str, Any] = {}
    for name in layers:
        if name not in modules:
            raise ValueError(
                f"`layers` must name Linear or convolution modules of the model; got {name!r}."
                + did_you_mean(str(name), modules)
            )
        chosen[name] = modules[name]
    return chosen


def _scores(
    name: str, module: nn.Module, importance: Importance, generator: torch.Generator | None
) -> torch.Tensor:
    weight = effective_weight(module).detach()
    if isinstance(importance, Mapping):
        if name not in importance:
            raise ValueError(
                f"`importance` must hold a score tensor for every pruned layer; {name!r} is "
                "missing." + did_you_mean(name, [str(k) for k in importance])
            )
        score = importance[name]
        if not isinstance(score, torch.Tensor) or score.shape != weight.shape:
            raise ValueError(
                f"`importance[{name!r}]` must be a tensor of shape {tuple(weight.shape)}; "
                f"got {getattr(score, 'shape', type(score).__name__)}."
            )
        return score.detach().to(weight.device, torch.float64)
    kind = check_choice("importance", importance, ("l1", "l2", "random"))
    if kind == "random":
        return torch.rand(weight.shape, generator=generator, dtype=torch.float64).to(weight.device)
    return weight.abs() if kind == "l1" else weight.pow(2)


def _current_mask(module: Any) -> torch.Tensor:
    mask = getattr(module, "weight_mask", None)
    return mask.detach() if mask is not None else torch.ones_like(module.weight)


def magnitude_masks(
    model: nn.Module,
    *,
    amount: float | int,
    scope: str = "global",
    importance: Importance = "l1",
    layers: list[str] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Compute (without attaching) the masks that prune the least important weights.

    The same masks as ``torch.nn.utils.prune.l1_unstructured`` (``scope="layer"``) and
    ``global_unstructured`` (``scope="global"``) for the same ``amount``: exactly
    ``round(amount * n)`` of the ``n`` still-unpruned weights are removed, at the smallest
    scores. Already-pruned weights stay pruned.

    Args:
        model: the network.
        amount: fraction in [0, 1) of the unpruned weights to remove, or an integer count.
        scope: ``"global"`` ranks all weights together; ``"layer"`` prunes each layer alone.
        importance: ``"l1"``, ``"l2"``, ``"random"``, or ``{layer name: per-weight scores}``
            (for example from :func:`pellucid.pruning.importance.taylor`).
        layers: names of the Linear/convolution modules to prune (default: all).
        generator: for ``importance="random"``.

    Returns:
        ``{layer name: full 0/1 mask}`` (old mask times new).

    Example:
        >>> net = nn.Linear(4, 1)
        >>> magnitude_masks(net, amount=0.5, scope="layer")[""].sum().item()
        2.0
    """
    amount = _check_amount(amount)
    scope = check_choice("scope", scope, ("global", "layer"))
    modules = _targets(model, layers)
    scores = {n: _scores(n, m, importance, generator) for n, m in modules.items()}
    masks = {n: _current_mask(m) for n, m in modules.items()}
    result: dict[str, torch.Tensor] = {}
    if scope == "layer":
        for name, score in scores.items():
            alive = masks[name] == 1
            remaining = score[alive]
            k = _n_to_prune(amount, remaining.numel(), f"layer {name!r}")
            new = masks[name].clone(memory_format=torch.contiguous_format)
            if k:
                drop = torch.topk(remaining.reshape(-1), k=k, largest=False).indices
                partial = torch.ones_like(remaining)
                partial.view(-1)[drop] = 0
                new[alive] = partial.to(new.dtype)
            result[name] = new
        return result
    flat_score = torch.cat([s.reshape(-1) for s in scores.values()])
    flat_mask = torch.cat([masks[n].reshape(-1) for n in scores])
    alive = flat_mask == 1
    remaining = flat_score[alive]
    k = _n_to_prune(amount, remaining.numel(), "the model")
    new_flat = flat_mask.clone()
    if k:
        drop = torch.topk(remaining, k=k, largest=False).indices
        partial = torch.ones_like(remaining)
        partial[drop] = 0
        new_flat[alive] = partial.to(new_flat.dtype)
    offset = 0
    for name in scores:
        size = masks[name].numel()
        result[name] = new_flat[offset : offset + size].view_as(masks[name]).clone()
        offset += size
    return result


def threshold_masks(
    model: nn.Module,
    *,
    threshold: float,
    importance: Importance = "l1",
    layers: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks that remove every weight whose score is strictly below ``threshold``.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = net.weight.copy_(torch.tensor([[0.05, -0.5]]))
        >>> threshold_masks(net, threshold=0.1)[""]
        tensor([[0., 1.]])
    """
    threshold = check_float("threshold", threshold, min_value=0.0)
    modules = _targets(model, layers)
    return {
        name: _current_mask(m)
        * (_scores(name, m, importance, None) >= threshold).to(m.weight.dtype)
        for name, m in modules.items()
    }


def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Attach full masks (from :func:`magnitude_masks`) in the ``torch.nn.utils.prune`` format.

    Every mask is checked before any module changes, so a bad mask leaves the model as it
    was. An existing mask is combined with the new one, as torch does.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> _ = apply_masks_(net, {"": torch.tensor([[1.0, 0.0]])})
        >>> prune.is_pruned(net), net.weight[0, 1].item() == 0
        (True, True)
    """
    modules = dict(model.named_modules())
    checked: list[tuple[Any, torch.Tensor]] = []
    for name, mask in masks.items():
        module = modules.get(name)
        if module is None or not hasattr(module, "weight"):
            raise ValueError(
                f"`masks` must be keyed by names of weighted modules; got {name!r}."
                + did_you_mean(name, [n for n in modules if n])
            )
        if not isinstance(mask, torch.Tensor) or mask.shape != module.weight.shape:
            raise ValueError(
                f"`masks[{name!r}]` must have the weight's shape {tuple(module.weight.shape)}; "
                f"got {getattr(mask, 'shape', type(mask).__name__)}."
            )
        checked.append((module, mask))
    for module, mask in checked:
        prune.custom_from_mask(module, "weight", mask.to(module.weight.device))
    return detach_pruned_(model)


def detach_pruned_(model: nn.Module) -> nn.Module:
    """Replace the derived ``weight = weight_orig * weight_mask`` by a detached copy.

    The pruning pre-hook recomputes it at the next forward; until then the model can be
    ``copy.deepcopy``-ed (torch refuses to copy the non-leaf tensor).

    Example:
        >>> import copy
        >>> net = prune.l1_unstructured(nn.Linear(2, 2), "weight", amount=0.5)
        >>> _ = copy.deepcopy(detach_pruned_(net))
    """
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                name = hook._tensor_name
                setattr(module, name, getattr(module, name).detach())
    return model


def prune_magnitude_(
    model: nn.Module,
    *,
    amount: float | int,
    scope: str = "global",
    importance: Importance = "l1",
    layers: list[str] | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Prune the least important weights in place (masks in torch's format); return ``model``.

    See :func:`magnitude_masks` for the arguments.

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> _ = prune_magnitude_(net, amount=0.75, scope="layer")
        >>> sparsity(net).layers["0"]
        0.75
    """
    masks = magnitude_masks(
        model,
        amount=amount,
        scope=scope,
        importance=importance,
        layers=layers,
        generator=generator,
    )
    return apply_masks_(model, masks)


def prune_threshold_(
    model: nn.Module,
    *,
    threshold: float,
    importance: Importance = "l1",
    layers: list[str] | None = None,
) -> nn.Module:
    """Remove, in place, every weight whose score is below ``threshold``; return ``model``.

    Example:
        >>> net = nn.Linear(4, 4)
        >>> _ = prune_threshold_(net, threshold=10.0)
        >>> sparsity(net).overall
        1.0
    """
    return apply_masks_(
        model, threshold_masks(model, threshold=threshold, importance=importance, layers=layers)
    )


def make_permanent_(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight (``prune.remove``); outputs do not change.

    Example:
        >>> net = prune_magnitude_(nn.Linear(4, 4), amount=0.5)
        >>> prune.is_pruned(make_permanent_(net))
        False
    """
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return model


@dataclass
class SparsityReport:
    """Fraction of zero weights per prunable layer and over all of them.

    Attributes:
        overall: zeros / weights over every Linear and convolution weight.
        layers: ``{layer name: fraction of zeros}``.
        zeros, total: the counts behind ``overall``.
    """

    overall: float
    layers: dict[str, float] = field(default_factory=dict)
    zeros: int = 0
    total: int = 0

    def __str__(self) -> str:
        lines = [f"sparsity {self.overall:.1%} ({self.zeros}/{self.total} weights are zero)"]
        lines += [f"  {name or '<model>'}: {value:.1%}" for name, value in self.layers.items()]
        return "\n".join(lines)


def sparsity(model: nn.Module) -> SparsityReport:
    """Count zero weights (as the forward pass sees them) per layer and overall.

    Example:
        >>> print(sparsity(nn.Linear(2, 2)))  # doctest: +ELLIPSIS
        sparsity 0.0% (0/4 weights are zero)
        ...
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}.")
    layers: dict[str, float] = {}
    zeros = total = 0
    with torch.no_grad():
        for name, module in prunable_weights(model).items():
            weight = effective_weight(module)
            z = int((weight == 0).sum())
            layers[name] = z / max(weight.numel(), 1)
            zeros += z
            total += weight.numel()
    return SparsityReport(zeros / max(total, 1), layers, zeros, total)
