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

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from pellucid._validation import check_choice, check_float, did_you_mean
from pellucid._warnings import PellucidWarning
from pellucid.pruning._selection import (
    check_amount,
    check_min_keep,
    drop_smallest,
    n_to_prune,
    protect,
)
from pellucid.pruning.importance import effective_weight, prunable_parameters

__all__ = [
    "LayerCollapseWarning",
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


class LayerCollapseWarning(PellucidWarning):
    """Pruning removed every weight of a layer (the model may now predict a constant)."""


Slot = tuple[nn.Module, str]


def _targets(model: nn.Module, layers: Any) -> dict[str, Slot]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}.")
    slots = prunable_parameters(model)
    if layers is None:
        if not slots:
            raise ValueError(
                "`model` has no Linear, convolution, recurrent or attention weights to prune."
            )
        return slots
    chosen: dict[str, Slot] = {}
    for name in layers:
        if name in slots:
            chosen[name] = slots[name]
            continue
        inside = {k: v for k, v in slots.items() if k.startswith(f"{name}.")}
        if not inside:
            raise ValueError(
                f"`layers` must name Linear, convolution, recurrent or attention modules (or "
                f"their weights) of the model; got {name!r}." + did_you_mean(str(name), slots)
            )
        chosen.update(inside)  # a recurrent/attention module: all its weight matrices
    return chosen


def _scores(
    name: str, slot: Slot, importance: Importance, generator: torch.Generator | None
) -> torch.Tensor:
    weight = effective_weight(*slot).detach()
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


def _current_mask(slot: Slot) -> torch.Tensor:
    module, param = slot
    mask = getattr(module, param + "_mask", None)
    return mask.detach() if mask is not None else torch.ones_like(getattr(module, param))


def magnitude_masks(
    model: nn.Module,
    *,
    amount: float | int,
    scope: str = "global",
    importance: Importance = "l1",
    layers: list[str] | None = None,
    generator: torch.Generator | None = None,
    min_keep: float | int = 0,
) -> dict[str, torch.Tensor]:
    """Compute (without attaching) the masks that prune the least important weights.

    The same masks as ``torch.nn.utils.prune.l1_unstructured`` (``scope="layer"``) and
    ``global_unstructured`` (``scope="global"``) for the same ``amount``: exactly
    ``round(amount * n)`` of the ``n`` still-unpruned weights are removed, at the smallest
    scores. Already-pruned weights stay pruned. Recurrent layers (LSTM, GRU, RNN) and
    ``nn.MultiheadAttention`` input projections are pruned too, keyed by parameter path
    (``"rnn.weight_ih_l0"``; see :func:`pellucid.pruning.importance.prunable_parameters`).

    Args:
        model: the network.
        amount: fraction in [0, 1) of the unpruned weights to remove, or an integer count.
        scope: ``"global"`` ranks all weights together; ``"layer"`` prunes each layer alone.
        importance: ``"l1"``, ``"l2"``, ``"random"``, or ``{layer name: per-weight scores}``
            (for example from :func:`pellucid.pruning.importance.taylor`).
        layers: names of the modules (or weight keys) to prune (default: all).
        generator: for ``importance="random"``.
        min_keep: a per-layer floor: every layer keeps at least this many of its unpruned
            weights (an integer count, or a fraction in (0, 1] of the layer's size), its
            highest-scoring ones. The floor wins over ``amount``: fewer weights are removed
            when ``amount`` would cut a layer below it. Default 0 (no floor): global pruning
            may then remove whole layers, which :func:`apply_masks_` warns about.

    Returns:
        ``{layer name: full 0/1 mask}`` (old mask times new).

    Raises:
        TypeError: `model` is not an nn.Module, or a number argument has the wrong type.
        ValueError: `amount` is out of range, `scope` or `importance` is unknown, `layers` names no
            prunable weight, an `importance` mapping lacks a layer or has the wrong shape, or the
            model has no prunable weights.

    Example:
        >>> net = nn.Linear(4, 1)
        >>> magnitude_masks(net, amount=0.5, scope="layer")[""].sum().item()
        2.0
        >>> magnitude_masks(net, amount=1, scope="layer", min_keep=4)[""].sum().item()
        4.0
    """
    amount = check_amount(amount)
    scope = check_choice("scope", scope, ("global", "layer"))
    min_keep = check_min_keep(min_keep)
    slots = _targets(model, layers)
    masks = {n: _current_mask(slot) for n, slot in slots.items()}
    scores = {n: _scores(n, slot, importance, generator) for n, slot in slots.items()}
    scores = protect(scores, masks, min_keep)
    if scope == "layer":
        return {
            name: drop_smallest(
                masks[name],
                score,
                n_to_prune(amount, int((masks[name] == 1).sum()), f"layer {name!r}"),
            )
            for name, score in scores.items()
        }
    flat_mask = torch.cat([masks[n].reshape(-1) for n in scores])
    k = n_to_prune(amount, int((flat_mask == 1).sum()), "the model")
    flat_score = torch.cat([s.reshape(-1) for s in scores.values()])
    new_flat = drop_smallest(flat_mask, flat_score, k)
    result: dict[str, torch.Tensor] = {}
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

    Raises:
        TypeError: `model` is not an nn.Module, or a number argument has the wrong type.
        ValueError: `threshold` is negative, `layers` names no prunable weight, or the model has no
            prunable weights.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = net.weight.copy_(torch.tensor([[0.05, -0.5]]))
        >>> threshold_masks(net, threshold=0.1)[""]
        tensor([[0., 1.]])
    """
    threshold = check_float("threshold", threshold, min_value=0.0)
    slots = _targets(model, layers)
    return {
        name: _current_mask(slot)
        * (_scores(name, slot, importance, None) >= threshold).to(_current_mask(slot).dtype)
        for name, slot in slots.items()
    }


def _slot(model: nn.Module, modules: dict[str, nn.Module], key: str) -> Slot | None:
    module = modules.get(key)
    if module is not None:
        return (module, "weight") if hasattr(module, "weight") else None
    path, _, param = key.rpartition(".")
    owner = modules.get(path)
    if owner is not None and param and (hasattr(owner, param + "_orig") or hasattr(owner, param)):
        return owner, param
    return None


def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Attach full masks (from :func:`magnitude_masks`) in the ``torch.nn.utils.prune`` format.

    Every mask is checked before any module changes, so a bad mask leaves the model as it
    was. An existing mask is combined with the new one, as torch does. A mask that removes
    every remaining weight of a layer warns (:class:`LayerCollapseWarning`): the layer then
    outputs its bias only, and the model usually collapses to a constant; pass
    ``min_keep=`` to :func:`prune_magnitude_` to keep a floor per layer.

    Raises:
        ValueError: a key of `masks` names no weighted module or weight, or a mask's shape differs
            from its weight's.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> _ = apply_masks_(net, {"": torch.tensor([[1.0, 0.0]])})
        >>> prune.is_pruned(net), net.weight[0, 1].item() == 0
        (True, True)
    """
    return _attach(model, masks, stacklevel=3)


def _attach(model: nn.Module, masks: Mapping[str, torch.Tensor], *, stacklevel: int) -> nn.Module:
    modules = dict(model.named_modules())
    checked: list[tuple[str, Slot, torch.Tensor]] = []
    for name, mask in masks.items():
        slot = _slot(model, modules, name)
        if slot is None:
            raise ValueError(
                f"`masks` must be keyed by names of weighted modules or weight paths; got "
                f"{name!r}." + did_you_mean(name, prunable_parameters(model))
            )
        shape = tuple(getattr(slot[0], slot[1]).shape)
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != shape:
            raise ValueError(
                f"`masks[{name!r}]` must have the weight's shape {shape}; "
                f"got {getattr(mask, 'shape', type(mask).__name__)}."
            )
        checked.append((name, slot, mask))
    emptied = [
        name
        for name, slot, mask in checked
        if mask.numel() and not bool(mask.any()) and bool(_current_mask(slot).any())
    ]
    for _, (module, param), mask in checked:
        prune.custom_from_mask(module, param, mask.to(getattr(module, param).device))
    if emptied:
        warnings.warn(
            f"pruning removed every weight of {', '.join(repr(n) for n in emptied)}: the "
            "layer now outputs its bias only and the model may predict a constant. Pass "
            "`min_keep=` (e.g. min_keep=0.01) to keep a floor of weights in every layer.",
            LayerCollapseWarning,
            stacklevel=stacklevel,
        )
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
    min_keep: float | int = 0,
) -> nn.Module:
    """Prune the least important weights in place (masks in torch's format); return ``model``.

    See :func:`magnitude_masks` for the arguments.

    Raises:
        TypeError: `model` is not an nn.Module, or a number argument has the wrong type.
        ValueError: as :func:`magnitude_masks` (nothing is changed then).

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
        min_keep=min_keep,
    )
    return _attach(model, masks, stacklevel=3)


def prune_threshold_(
    model: nn.Module,
    *,
    threshold: float,
    importance: Importance = "l1",
    layers: list[str] | None = None,
) -> nn.Module:
    """Remove, in place, every weight whose score is below ``threshold``; return ``model``.

    Raises:
        TypeError: `model` is not an nn.Module, or a number argument has the wrong type.
        ValueError: as :func:`threshold_masks` (nothing is changed then).

    Example:
        >>> net = nn.Linear(4, 4)
        >>> _ = prune_threshold_(net, threshold=10.0)
        >>> sparsity(net).overall
        1.0
    """
    masks = threshold_masks(model, threshold=threshold, importance=importance, layers=layers)
    return _attach(model, masks, stacklevel=3)


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
        overall: zeros / weights over every weight pruning acts on: Linear, convolution,
            recurrent (``weight_ih``/``weight_hh``) and attention input projections.
        layers: ``{layer name or weight path: fraction of zeros}`` (keys as in
            :func:`pellucid.pruning.importance.prunable_parameters`).
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

    Raises:
        TypeError: `model` is not an nn.Module.

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
        for name, slot in prunable_parameters(model).items():
            weight = effective_weight(*slot)
            z = int((weight == 0).sum())
            layers[name] = z / max(weight.numel(), 1)
            zeros += z
            total += weight.numel()
    return SparsityReport(zeros / max(total, 1), layers, zeros, total)
