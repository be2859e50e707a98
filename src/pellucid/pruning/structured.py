"""Structured pruning that physically removes channels, units and attention heads.

:func:`plan_channel_pruning` traces the model with ``torch.fx``, groups coupled channels
(Conv -> BatchNorm -> activation -> Conv, Linear -> Linear, flatten into Linear, both sides
of residual additions, concatenations, splits and chunks, channel shuffles, depthwise and
grouped convolutions, Layer/Group norms, squeeze-excitation, permutes and reshapes,
positional embeddings and class tokens, the heads of attention blocks; a recorded run where
``torch.fx`` cannot trace), scores each group and decides which channels stay. Planning
is pure and runs in four steps: validate the arguments, build the groups, score and select
each group's channels, and turn the kept channels into per-module indices. The printable,
frozen :class:`ChannelPruningPlan` then shrinks the modules with
:meth:`ChannelPruningPlan.apply_`, which verifies the pruned model on the example input.
The model's output shape never changes; a plan that does not fit leaves the model untouched.

Example:
    >>> import torch
    >>> from pellucid.models import SmallCNN
    >>> net = SmallCNN().eval()
    >>> plan = plan_channel_pruning(net, torch.zeros(1, 1, 8, 8), amount=0.5)
    >>> _ = plan.apply_(net)
    >>> net.features[0].out_channels, net(torch.zeros(2, 1, 8, 8)).shape
    (8, torch.Size([2, 10]))
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from pellucid._validation import check_choice, check_float, check_int, did_you_mean
from pellucid._warnings import PellucidWarning
from pellucid.pruning import importance as imp
from pellucid.pruning._graph import ChannelGraph, Member, Segment, build_graph
from pellucid.pruning._plan import ChannelGroup, ChannelPruningPlan
from pellucid.pruning._shrink import module_spec

__all__ = ["IMPORTANCES", "ChannelGroup", "ChannelPruningPlan", "plan_channel_pruning"]

IMPORTANCES = ("l1", "l2", "bn_scale", "random", "taylor", "activation")


def _removed_params(module: Any, out_keep: Any, in_keep: Any) -> int:
    """How many parameters shrinking ``module`` removes (arithmetic, nothing is copied)."""
    if isinstance(module, nn.MultiheadAttention):
        keep = out_keep if out_keep is not None else in_keep
        width, n = module.embed_dim, keep.numel()
        biases = 3 * (module.in_proj_bias is not None) + (module.out_proj.bias is not None)
        return 4 * (width * width - n * n) + biases * (width - n)
    before = sum(p.numel() for p in module.parameters(recurse=False))
    if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
        shape = list(module.weight.shape)
        depthwise = isinstance(module, nn.modules.conv._ConvNd) and (
            module.groups == module.in_channels == module.out_channels
        )
        keep = out_keep if out_keep is not None else (in_keep if depthwise else None)
        if keep is not None:
            shape[0] = keep.numel()
        if in_keep is not None and not depthwise:
            shape[1] = in_keep.numel() // getattr(module, "groups", 1)
        after = math.prod(shape) + (shape[0] if module.bias is not None else 0)
    else:
        keep = out_keep if out_keep is not None else in_keep
        n = sum(1 for p in module.parameters(recurse=False))
        after = n * keep.numel() if keep is not None else before
    return before - after


def _member_scores(module: Any, role: str, p: int) -> torch.Tensor | None:
    """Per-feature magnitude of a member (outputs, or inputs for ``role="in"``)."""
    if role not in ("in", "out", "elementwise") or isinstance(module, nn.MultiheadAttention):
        return None
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm):
        w = getattr(module, "weight", None)
        return None if w is None else w.detach().abs().pow(p)
    w = module.weight.detach()
    if role == "in":
        return _input_sums(module, w.abs().pow(p))
    return w.abs().pow(p).flatten(1).sum(1)


def _input_sums(module: Any, w: torch.Tensor) -> torch.Tensor:
    """Per input feature, the sum of ``w`` (a module's weight or a score of its shape) over
    the outputs that read it: a grouped convolution's output reads only its own group."""
    groups = getattr(module, "groups", 1)
    sums = w.flatten(2).sum(2) if w.ndim > 2 else w  # (outputs, inputs per group)
    if groups == 1:
        return sums.sum(0)
    return sums.reshape(groups, -1, sums.shape[1]).sum(1).flatten()


def _features(
    layout: tuple[Segment, ...], graph: ChannelGraph, root: int
) -> list[tuple[int, Segment]]:
    """``(feature offset, segment)`` of the segments of ``layout`` that belong to ``root``."""
    out, offset = [], 0
    for seg in layout:
        if graph.find(seg.space) == root:
            out.append((offset, seg))
        offset += seg.length * seg.repeat
    return out


def _group_scores(
    root: int,
    members: list[Member],
    graph: ChannelGraph,
    modules: dict[str, nn.Module],
    kind: str,
    unit_scores: Mapping[str, torch.Tensor] | None,
    weight_scores: Mapping[str, torch.Tensor] | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    length = graph.lengths[root]
    if kind == "random":
        return torch.rand(length, generator=generator, dtype=torch.float64)
    total = torch.zeros(length, dtype=torch.float64)
    found = False
    for member in members:
        module = modules.get(member.module)
        feature: torch.Tensor | None
        if unit_scores is not None:
            if member.role == "in" or member.module not in unit_scores:
                continue
            feature = unit_scores[member.module].detach().double().flatten()
        elif kind == "bn_scale":
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            feature = _member_scores(module, member.role, 1)
        elif weight_scores is not None:
            if member.module not in weight_scores:
                continue
            w = weight_scores[member.module].double()
            if member.role == "in":
                feature = _input_sums(module, w)
            else:
                feature = w.flatten(1).sum(1) if w.ndim > 1 else w
        elif module is not None:
            feature = _member_scores(module, member.role, 1 if kind == "l1" else 2)
        else:
            feature = None
        if feature is None:
            continue
        for offset, seg in _features(member.layout, graph, root):
            chunk = feature[offset : offset + seg.length * seg.repeat].double().cpu()
            total += chunk.reshape(seg.length, seg.repeat).sum(1)
            found = True
    if not found and kind != "l2":
        return _group_scores(root, members, graph, modules, "l2", None, None, generator)
    return total


def _n_keep(
    channels: int, amount: float | int, round_to: int | None, divisor: int, leader: str
) -> int:
    if isinstance(amount, int):
        if amount >= channels:
            raise ValueError(
                f"`amount` would remove every unit of layer {leader!r}: {amount} of its "
                f"{channels} channels. Ask for fewer."
            )
        keep = channels - amount
    else:
        keep = max(1, math.floor(channels * (1.0 - amount) + 1e-9))
    step = math.lcm(divisor, round_to or 1)
    if channels >= step:
        keep = max(step, keep - keep % step)
    else:
        keep = channels
    return keep


def _select(scores: torch.Tensor, keep: int, divisor: int) -> torch.Tensor:
    chunk = scores.numel() // divisor
    per = keep // divisor
    kept = []
    for g in range(divisor):
        part = scores[g * chunk : (g + 1) * chunk]
        order = torch.argsort(part, stable=True)
        kept.append(order[chunk - per :] + g * chunk)
    return torch.sort(torch.cat(kept)).values


def _check_amount(amount: Any) -> float | int:
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(
            f"`amount` must be a fraction in [0, 1) of each group's channels or an integer "
            f"count; got {amount!r} ({type(amount).__name__})."
        )
    if isinstance(amount, numbers.Integral):
        return check_int("amount", amount, min_value=0)
    return check_float("amount", amount, min_value=0.0, max_value=1.0, max_inclusive=False)


@dataclass(frozen=True)
class _Request:
    """The validated arguments of one planning call."""

    ignored: frozenset[str]
    default: float | int | None
    per_layer: Mapping[str, float | int] | None
    kind: str
    unit_scores: Mapping[str, torch.Tensor] | None
    weight_scores: Mapping[str, torch.Tensor] | None
    round_to: int | None
    global_ranking: bool


def _validate(
    model: Any,
    amount: Any,
    importance: Any,
    round_to: Any,
    ignore: Iterable[Any],
    data: Any,
    global_ranking: Any,
) -> _Request:
    """Check every argument before anything is traced; score data-driven criteria."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}.")
    modules = dict(model.named_modules())
    names_of = {id(m): n for n, m in modules.items()}
    ignored: set[str] = set()
    for item in ignore:
        name = names_of.get(id(item)) if isinstance(item, nn.Module) else item
        if not isinstance(name, str) or name not in modules:
            raise ValueError(
                f"`ignore` must hold names (or modules) of layers of the model; got {item!r}."
                + did_you_mean(str(item), [n for n in modules if n])
            )
        ignored.add(name)
    per_layer = dict(amount) if isinstance(amount, Mapping) else None
    default = None if per_layer is not None else _check_amount(amount)
    if per_layer is not None:
        for key, value in per_layer.items():
            per_layer[key] = _check_amount(value)
    if round_to is not None:
        check_int("round_to", round_to, min_value=1)
    if not isinstance(global_ranking, bool):
        raise TypeError(f"`global_ranking` must be a bool; got {global_ranking!r}.")
    if global_ranking and not isinstance(default, float):
        raise ValueError(
            f"`global_ranking=True` needs `amount` as one fraction in [0, 1); got {amount!r}."
        )
    if prune.is_pruned(model):
        raise ValueError(
            "`model` carries torch.nn.utils.prune masks; call "
            "pellucid.pruning.make_permanent_(model) before structured pruning."
        )
    unit_scores = weight_scores = None
    kind = "custom"
    if isinstance(importance, Mapping):
        unit_scores = importance
    else:
        kind = check_choice("importance", importance, IMPORTANCES)
        if kind in ("taylor", "activation"):
            if data is None:
                raise ValueError(f"`importance={kind!r}` needs `data=(X, y)` to score units.")
            if kind == "taylor":
                weight_scores = imp.taylor(model, data)
            else:
                unit_scores = imp.activation_gradient(model, data)
    return _Request(
        frozenset(ignored),
        default,
        per_layer,
        kind,
        unit_scores,
        weight_scores,
        round_to,
        global_ranking,
    )


def _group(graph: ChannelGraph) -> tuple[list[int], dict[int, list[Member]]]:
    """The roots of the groups that have a producer, and each root's members."""
    by_root: dict[int, list[Member]] = {}
    for member in graph.members:
        for seg in member.layout:
            root = graph.find(seg.space)
            if member not in by_root.setdefault(root, []):
                by_root[root].append(member)
    roots = sorted({graph.find(s) for s in graph.producers})
    return roots, by_root


def _divisor(graph: ChannelGraph, root: int) -> int:
    divisors = [d for s, ds in graph.group_divisors.items() if graph.find(s) == root for d in ds]
    return math.lcm(*divisors, 1)


def _frozen_reason(
    graph: ChannelGraph, root: int, members: list[Member], request: _Request
) -> tuple[str | None, float | int | None]:
    """Why a group stays whole (None when prunable) and the amount that applies to it."""
    reason = graph.frozen_reason(root)
    amount = request.default
    if request.per_layer is not None:
        hits = [request.per_layer[m.module] for m in members if m.module in request.per_layer]
        amount = hits[0] if hits else None
        if amount is None and reason is None:
            reason = "not selected in `amount`"
    return reason, amount


def _score(
    graph: ChannelGraph,
    roots: list[int],
    by_root: dict[int, list[Member]],
    modules: dict[str, nn.Module],
    request: _Request,
    generator: torch.Generator | None,
) -> dict[int, tuple[str | None, float | int | None, torch.Tensor | None]]:
    """Per group root: why it is frozen, the amount that applies, and its channel scores."""
    result: dict[int, tuple[str | None, float | int | None, torch.Tensor | None]] = {}
    for root in roots:
        members = by_root.get(root, [])
        reason, amount = _frozen_reason(graph, root, members, request)
        scores = None
        if reason is None and amount is not None:
            scores = _group_scores(
                root,
                members,
                graph,
                modules,
                request.kind,
                request.unit_scores,
                request.weight_scores,
                generator,
            )
        result[root] = (reason, amount, scores)
    return result


def _global_counts(
    graph: ChannelGraph,
    scored: Mapping[int, tuple[str | None, Any, torch.Tensor | None]],
    amount: float,
) -> dict[int, float]:
    """Per group, the fraction to remove so that the lowest-ranked channels over all groups
    (scores divided by their group's mean) go: ``amount`` of all prunable channels."""
    pooled = {
        root: scores / scores.mean().clamp_min(1e-12)
        for root, (_, _, scores) in scored.items()
        if scores is not None
    }
    if not pooled:
        return {}
    everything = torch.cat(list(pooled.values()))
    n_remove = math.floor(everything.numel() * amount + 1e-9)
    if n_remove == 0:
        return dict.fromkeys(pooled, 0.0)
    threshold = torch.sort(everything).values[n_remove - 1]
    return {
        root: min(int((s <= threshold).sum()), graph.lengths[root] - 1) / graph.lengths[root]
        for root, s in pooled.items()
    }


def _select_groups(
    graph: ChannelGraph,
    roots: list[int],
    by_root: dict[int, list[Member]],
    scored: Mapping[int, tuple[str | None, Any, torch.Tensor | None]],
    request: _Request,
) -> tuple[list[ChannelGroup], dict[int, torch.Tensor]]:
    """Which channels each group keeps (the highest-scored, evenly per divisor chunk)."""
    fractions = (
        _global_counts(graph, scored, float(request.default or 0.0))
        if request.global_ranking
        else {}
    )
    groups, keep_of = [], {}
    for root in roots:
        members = by_root.get(root, [])
        channels = graph.lengths[root]
        reason, amount, scores = scored[root]
        keep = torch.arange(channels)
        if scores is not None and amount is not None:
            leader = ChannelGroup(channels, tuple((m.module, m.role) for m in members), keep)
            divisor = _divisor(graph, root)
            amount = fractions.get(root, amount)
            n = _n_keep(channels, amount, request.round_to, divisor, leader.leader)
            keep = _select(scores, n, divisor)
        keep_of[root] = keep
        groups.append(
            ChannelGroup(channels, tuple((m.module, m.role) for m in members), keep, reason, scores)
        )
    return groups, keep_of


@dataclass(frozen=True)
class _Indices:
    shapes: dict[str, dict[str, Any]]
    out_keep: dict[str, torch.Tensor]
    in_keep: dict[str, torch.Tensor]
    params: dict[str, tuple[int, torch.Tensor]]
    attrs: dict[str, dict[str, int]]


def _index(
    graph: ChannelGraph, keep_of: Mapping[int, torch.Tensor], modules: dict[str, nn.Module]
) -> _Indices:
    """Turn every group's kept channels into each member's kept feature indices."""
    result = _Indices({}, {}, {}, {}, {})
    for member in graph.members:
        indices, offset, changed = [], 0, False
        for seg in member.layout:
            root = graph.find(seg.space)
            keep = keep_of.get(root, torch.arange(seg.length))
            changed |= keep.numel() < seg.length
            feats = (keep[:, None] * seg.repeat + torch.arange(seg.repeat)[None, :]).flatten()
            indices.append(feats + offset)
            offset += seg.length * seg.repeat
        if not changed:
            continue
        index = torch.cat(indices)
        if member.role == "param":
            result.params[member.module] = (member.dim, index)
            continue
        module: Any = modules[member.module]
        n = int(index.numel())
        if member.role == "heads":
            result.attrs.setdefault(member.module, {}).update(
                num_heads=n, attn_dim=n * module.head_dim
            )
            continue
        if member.role.startswith("attr:"):
            result.attrs.setdefault(member.module, {})[member.role[5:]] = n
            continue
        result.shapes[member.module] = module_spec(module)
        target = result.in_keep if member.role == "in" else result.out_keep
        target[member.module] = index
        if member.role == "elementwise":
            result.in_keep[member.module] = index
    return result


def _params_after(model: nn.Module, indices: _Indices) -> int:
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    before = sum(p.numel() for p in model.parameters())
    removed = 0
    for name in indices.shapes:
        removed += _removed_params(
            modules[name], indices.out_keep.get(name), indices.in_keep.get(name)
        )
    for name, (dim, index) in indices.params.items():
        param = params[name]
        removed += param.numel() - param.numel() // param.shape[dim] * index.numel()
    return before - removed


class RecurrentLayerWarning(PellucidWarning):
    """Channel pruning keeps recurrent layers (and what their channels reach) whole."""


def _warn_recurrent(modules: Mapping[str, nn.Module]) -> None:
    recurrent = [
        f"{n} ({type(m).__name__})" for n, m in modules.items() if isinstance(m, nn.RNNBase)
    ]
    if recurrent:
        warnings.warn(
            "plan_channel_pruning does not prune recurrent layers; kept whole: "
            + ", ".join(recurrent)
            + ". Their hidden units can be pruned unstructured (prune_magnitude_).",
            RecurrentLayerWarning,
            stacklevel=3,
        )


def plan_channel_pruning(
    model: nn.Module,
    example_inputs: Any,
    *,
    amount: float | int | Mapping[str, float | int],
    importance: str | Mapping[str, torch.Tensor] = "l2",
    round_to: int | None = None,
    ignore: Iterable[str | nn.Module] = (),
    data: Any = None,
    generator: torch.Generator | None = None,
    global_ranking: bool = False,
) -> ChannelPruningPlan:
    """Plan which channels of every coupled group to remove (the model is not changed).

    Args:
        model: an ``nn.Module``; ``torch.fx`` traces it (submodules it cannot trace are
            kept whole, and the plan says so).
        example_inputs: a tensor (or tuple) the model runs on, for shapes and to verify
            the pruned model.
        amount: fraction in [0, 1) of every group's channels to remove, an integer count, or
            ``{layer name: fraction or count}`` to prune only the groups of those layers.
        importance: ``"l2"`` (group magnitude, Torch-Pruning's default), ``"l1"``,
            ``"bn_scale"`` (network slimming), ``"random"``, ``"taylor"`` (|w * grad|,
            needs ``data``), ``"activation"`` (mean |activation x gradient| of each unit,
            needs ``data``), or ``{layer name: per-output-unit scores}``.
        round_to: keep a multiple of this many channels in every pruned group.
        ignore: layer names (or modules) whose output channels must stay.
        data: ``(X, y)`` for the data-driven criteria.
        generator: for ``importance="random"``.
        global_ranking: rank channels across groups (each group's scores divided by their
            mean) and remove ``amount`` of all prunable channels, so groups lose more or
            fewer than ``amount`` of their own; needs a fractional ``amount``.

    Returns:
        The :class:`ChannelPruningPlan`; print it, then ``plan.apply_(model)``.

    Raises:
        ValueError: an argument is invalid, or some operations cannot be followed (the
            message lists every one of them and the ``ignore=`` that makes the plan valid).
        TypeError: ``model`` is not an ``nn.Module`` or an argument has the wrong type.
    """
    request = _validate(model, amount, importance, round_to, ignore, data, global_ranking)
    modules = dict(model.named_modules())
    _warn_recurrent(modules)
    output, graph = build_graph(model, example_inputs, set(request.ignored))
    roots, by_root = _group(graph)
    if request.per_layer is not None:
        known = {m.module for r in roots for m in by_root.get(r, [])}
        for key in request.per_layer:
            if key not in known:
                raise ValueError(
                    f"`amount` keys must name prunable layers; got {key!r}."
                    + did_you_mean(key, sorted(known))
                )
    scored = _score(graph, roots, by_root, modules, request, generator)
    groups, keep_of = _select_groups(graph, roots, by_root, scored, request)
    indices = _index(graph, keep_of, modules)
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    return ChannelPruningPlan(
        groups=tuple(groups),
        amount=amount if not isinstance(amount, Mapping) else dict(amount),
        importance=request.kind,
        params_before=sum(p.numel() for p in model.parameters()),
        params_after=_params_after(model, indices),
        _shapes=indices.shapes,
        _out_keep=indices.out_keep,
        _in_keep=indices.in_keep,
        _params=indices.params,
        _attrs=indices.attrs,
        _example=tuple(t.detach().clone() if isinstance(t, torch.Tensor) else t for t in inputs),
        _output_shape=output,
    )
