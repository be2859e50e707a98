"""Structured pruning that physically removes channels and units.

:func:`plan_channel_pruning` traces the model with ``torch.fx``, groups coupled channels
(Conv -> BatchNorm -> activation -> Conv, Linear -> Linear, flatten into Linear, both sides
of residual additions, concatenations, depthwise and grouped convolutions, LayerNorm),
scores each group and decides which channels stay. Planning is pure; the printable
:class:`ChannelPruningPlan` then shrinks the modules with :meth:`ChannelPruningPlan.apply_`.
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from pellucid._state import model_guard
from pellucid._validation import check_choice, check_float, check_int, did_you_mean
from pellucid.pruning import importance as imp
from pellucid.pruning._graph import ChannelGraph, Member, Segment, build_graph, output_shape
from pellucid.pruning._shrink import SHRINKABLE, module_spec, shrink_module

__all__ = ["IMPORTANCES", "ChannelGroup", "ChannelPruningPlan", "plan_channel_pruning"]

IMPORTANCES = ("l1", "l2", "bn_scale", "random", "taylor", "activation")


@dataclass
class ChannelGroup:
    """Channels that are kept or removed together.

    Attributes:
        channels: how many channels the group has.
        members: ``(module name, role)`` with role ``"out"`` (its outputs are the channels),
            ``"elementwise"`` (BatchNorm, LayerNorm, depthwise conv) or ``"in"`` (its inputs).
        keep: sorted indices of the kept channels.
        frozen: why the group is not pruned (None when it is prunable).
        scores: the group importance of each channel (None when frozen).
    """

    channels: int
    members: list[tuple[str, str]]
    keep: torch.Tensor
    frozen: str | None = None
    scores: torch.Tensor | None = None

    @property
    def leader(self) -> str:
        """The first layer producing the group's channels."""
        outs = [m for m, role in self.members if role == "out"]
        return outs[0] if outs else (self.members[0][0] if self.members else "<input>")


@dataclass
class ChannelPruningPlan:
    """Which coupled layers lose which channels; :meth:`apply_` makes it so.

    Attributes:
        groups: the channel groups (frozen ones included, with their reason).
        amount, importance: as planned.
        params_before, params_after: parameter counts of the model before and after.
    """

    groups: list[ChannelGroup]
    amount: Any
    importance: str
    params_before: int
    params_after: int
    _shapes: dict[str, dict[str, Any]] = field(repr=False, default_factory=dict)
    _out_keep: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    _in_keep: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    _example: tuple[Any, ...] | None = field(repr=False, default=None)
    _output_shape: Any = field(repr=False, default=None)

    def __str__(self) -> str:
        pruned = [g for g in self.groups if g.frozen is None and g.keep.numel() < g.channels]
        lines = [
            f"ChannelPruningPlan: {len(pruned)} of {len(self.groups)} channel groups pruned "
            f"(amount={self.amount}, importance={self.importance!r}); parameters "
            f"{self.params_before} -> {self.params_after}"
        ]
        for g in self.groups:
            members = ", ".join(f"{m}[{role}]" for m, role in g.members)
            if g.frozen is not None:
                lines.append(f"  {g.leader}: {g.channels} channels kept ({g.frozen}): {members}")
            else:
                lines.append(f"  {g.leader}: {g.channels} -> {g.keep.numel()} channels: {members}")
        return "\n".join(lines)

    def removed_outputs(self) -> dict[str, torch.Tensor]:
        """``{module name: indices of its output units that are removed}``."""
        result = {}
        for name, keep in self._out_keep.items():
            total = self._shapes[name]["out"]
            mask = torch.ones(total, dtype=torch.bool)
            mask[keep] = False
            result[name] = torch.nonzero(mask).flatten()
        return result

    def kept(self, module: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(kept output indices, kept input indices)`` of a module (None: unchanged)."""
        return self._out_keep.get(module), self._in_keep.get(module)

    def apply_(self, model: nn.Module) -> nn.Module:
        """Physically shrink the planned modules of ``model`` in place; return ``model``.

        The model must be the one planned (same module names and shapes) without
        ``torch.nn.utils.prune`` masks. Everything is checked and every new module built
        before the first one is swapped in, so an error leaves the model as it was.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}.")
        modules = dict(model.named_modules())
        for name, spec in self._shapes.items():
            module = modules.get(name)
            if module is None or not isinstance(module, SHRINKABLE):
                raise ValueError(
                    f"The plan does not fit `model`: it has no shrinkable module {name!r}."
                    + did_you_mean(name, [n for n in modules if n])
                )
            if prune.is_pruned(module):
                raise ValueError(
                    f"`model` carries torch.nn.utils.prune masks (module {name!r}); call "
                    "pellucid.pruning.make_permanent_(model) before structured pruning."
                )
            if module_spec(module) != spec:
                raise ValueError(
                    f"The plan does not fit `model`: module {name!r} is {module_spec(module)}, "
                    f"the plan was made for {spec}. Plan again on this model."
                )
        names = set(self._out_keep) | set(self._in_keep)
        new = {
            name: shrink_module(modules[name], self._out_keep.get(name), self._in_keep.get(name))
            for name in sorted(names)
        }
        _swap(model, new)
        problem = self._verify(model)
        if problem is not None:
            _swap(model, {name: modules[name] for name in new})
            raise ValueError(
                f"The pruned model does not run: {problem}. The plan was not applied and "
                "`model` is unchanged; plan again on this model (or add the layers around "
                "the failing operation to `ignore=`)."
            )
        return model

    def _verify(self, model: nn.Module) -> str | None:
        """Run the pruned model on the example input; a reason when it fails, else None."""
        if self._example is None:
            return None
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        inputs = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in self._example)
        try:
            with model_guard(model, eval_mode=True), torch.no_grad():
                out = model(*inputs)
        except Exception as err:  # any failure of the user's forward means "does not run"
            return f"its forward on the example input raised {type(err).__name__}: {err}"
        shape = output_shape(out)
        if shape != self._output_shape:
            return f"its output shape is {shape}, the dense model's was {self._output_shape}"
        return None


def _swap(model: nn.Module, new: Mapping[str, nn.Module]) -> None:
    modules = dict(model.named_modules())
    for name, module in new.items():
        parent_name, _, attr = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, module)


def _removed_params(module: Any, out_keep: Any, in_keep: Any) -> int:
    """How many parameters shrinking ``module`` removes (arithmetic, nothing is copied)."""
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
            shape[1] = in_keep.numel()
        after = math.prod(shape) + (shape[0] if module.bias is not None else 0)
    else:
        keep = out_keep if out_keep is not None else in_keep
        n = sum(1 for p in module.parameters(recurse=False))
        after = n * keep.numel() if keep is not None else before
    return before - after


def _member_scores(module: Any, role: str, p: int) -> torch.Tensor | None:
    """Per-feature magnitude of a member (outputs, or inputs for ``role="in"``)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm):
        w = getattr(module, "weight", None)
        return None if w is None else w.detach().abs().pow(p)
    w = module.weight.detach()
    if role == "in":
        return w.abs().pow(p).transpose(0, 1).flatten(1).sum(1)
    return w.abs().pow(p).flatten(1).sum(1)


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
        module = modules[member.module]
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
            dim = 1 if member.role == "in" else 0
            feature = w.transpose(0, dim).flatten(1).sum(1) if w.ndim > 1 else w
        else:
            feature = _member_scores(module, member.role, 1 if kind == "l1" else 2)
        if feature is None:
            continue
        for offset, seg in _features(member.layout, graph, root):
            chunk = feature[offset : offset + seg.length * seg.repeat].double()
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
) -> ChannelPruningPlan:
    """Plan which channels of every coupled group to remove (the model is not changed).

    Args:
        model: an ``nn.Module`` that ``torch.fx`` can trace.
        example_inputs: a tensor (or tuple) the model runs on, for shapes.
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

    Returns:
        The :class:`ChannelPruningPlan`; print it, then ``plan.apply_(model)``.
    """
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
    gm, graph = build_graph(model, example_inputs, ignored)

    by_root: dict[int, list[Member]] = {}
    for member in graph.members:
        for seg in member.layout:
            root = graph.find(seg.space)
            if member not in by_root.setdefault(root, []):
                by_root[root].append(member)
    roots = sorted({graph.find(s) for s in graph.producers})
    if per_layer is not None:
        known = {m.module for r in roots for m in by_root.get(r, [])}
        for key in per_layer:
            if key not in known:
                raise ValueError(
                    f"`amount` keys must name prunable layers; got {key!r}."
                    + did_you_mean(key, sorted(known))
                )
    groups: list[ChannelGroup] = []
    keep_of: dict[int, torch.Tensor] = {}
    for root in roots:
        members = by_root.get(root, [])
        channels = graph.lengths[root]
        group = ChannelGroup(
            channels, [(m.module, m.role) for m in members], torch.arange(channels)
        )
        group.frozen = graph.frozen_reason(root)
        amount_here: float | int | None = default
        if per_layer is not None:
            hits = [per_layer[m.module] for m in members if m.module in per_layer]
            amount_here = hits[0] if hits else None
            if amount_here is None and group.frozen is None:
                group.frozen = "not selected in `amount`"
        if group.frozen is None and amount_here is not None:
            divisor = math.lcm(
                *[d for s, ds in graph.group_divisors.items() if graph.find(s) == root for d in ds],
                1,
            )
            n = _n_keep(channels, amount_here, round_to, divisor, group.leader)
            scores = _group_scores(
                root, members, graph, modules, kind, unit_scores, weight_scores, generator
            )
            group.scores = scores
            group.keep = _select(scores, n, divisor)
        keep_of[root] = group.keep
        groups.append(group)

    out_keep: dict[str, torch.Tensor] = {}
    in_keep: dict[str, torch.Tensor] = {}
    shapes: dict[str, dict[str, Any]] = {}
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
        shapes[member.module] = module_spec(modules[member.module])
        target = in_keep if member.role == "in" else out_keep
        target[member.module] = index
        if member.role == "elementwise":
            in_keep[member.module] = index
    before = sum(p.numel() for p in model.parameters())
    removed = 0
    for name in shapes:
        removed += _removed_params(modules[name], out_keep.get(name), in_keep.get(name))
    return ChannelPruningPlan(
        groups=groups,
        amount=amount if not isinstance(amount, Mapping) else dict(amount),
        importance=kind,
        params_before=before,
        params_after=before - removed,
        _shapes=shapes,
        _out_keep=out_keep,
        _in_keep=in_keep,
        _example=_detached(example_inputs),
        _output_shape=gm.meta["output_shape"],
    )


def _detached(example_inputs: Any) -> tuple[Any, ...]:
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    return tuple(t.detach().clone() if isinstance(t, torch.Tensor) else t for t in inputs)
