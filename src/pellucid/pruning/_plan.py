"""The frozen results of channel planning: :class:`ChannelGroup` and :class:`ChannelPruningPlan`.

A plan records, per module, the kept output and input indices, per parameter the kept
indices along one dimension, and per attention module its new head count. ``apply_``
checks that the plan fits, builds every new module first, swaps them in, and runs the
pruned model on the example input: a plan that does not give a running model with the
dense output shape is undone and refused, so the model is never left broken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from pellucid._state import model_guard
from pellucid._validation import did_you_mean
from pellucid.pruning._graph import output_shape
from pellucid.pruning._shrink import SHRINKABLE, module_spec, shrink_module

__all__ = ["ChannelGroup", "ChannelPruningPlan"]


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are kept or removed together.

    Attributes:
        channels: how many channels the group has.
        members: ``(module name, role)`` with role ``"out"`` (its outputs are the channels),
            ``"elementwise"`` (norms, depthwise conv, tied attention), ``"in"`` (its inputs),
            ``"param"`` (a parameter sliced with the channels) or ``"heads"`` (an attention
            module whose heads the channels are).
        keep: sorted indices of the kept channels.
        frozen: why the group is not pruned (None when it is prunable).
        scores: the group importance of each channel (None when frozen).
    """

    channels: int
    members: tuple[tuple[str, str], ...]
    keep: torch.Tensor
    frozen: str | None = None
    scores: torch.Tensor | None = None

    @property
    def leader(self) -> str:
        """The first layer producing the group's channels."""
        outs = [m for m, role in self.members if role == "out"]
        return outs[0] if outs else (self.members[0][0] if self.members else "<input>")


@dataclass(frozen=True)
class ChannelPruningPlan:
    """Which coupled layers lose which channels; :meth:`apply_` makes it so.

    Attributes:
        groups: the channel groups (frozen ones included, with their reason).
        amount, importance: as planned.
        params_before, params_after: parameter counts of the model before and after.
    """

    groups: tuple[ChannelGroup, ...]
    amount: Any
    importance: str
    params_before: int
    params_after: int
    _shapes: Mapping[str, dict[str, Any]] = field(repr=False, default_factory=dict)
    _out_keep: Mapping[str, torch.Tensor] = field(repr=False, default_factory=dict)
    _in_keep: Mapping[str, torch.Tensor] = field(repr=False, default_factory=dict)
    _params: Mapping[str, tuple[int, torch.Tensor]] = field(repr=False, default_factory=dict)
    _attrs: Mapping[str, dict[str, int]] = field(repr=False, default_factory=dict)
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
        before the first one is swapped in; the pruned model then runs on the example
        input, and if it fails (or its output shape changed) the model is restored and
        the plan refused, so an error always leaves the model as it was.

        Raises:
            TypeError: `model` is not an nn.Module.
            ValueError: the plan does not fit `model` (other modules, shapes or parameters),
                `model` carries ``torch.nn.utils.prune`` masks, or the pruned model does not run
                (then it is restored as it was).
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}.")
        modules = dict(model.named_modules())
        self._check_fits(model, modules)
        names = set(self._out_keep) | set(self._in_keep)
        new = {
            name: shrink_module(modules[name], self._out_keep.get(name), self._in_keep.get(name))
            for name in sorted(names)
        }
        params = dict(model.named_parameters())
        old_params = {name: params[name] for name in self._params}
        old_attrs = {m: {a: getattr(modules[m], a) for a in kv} for m, kv in self._attrs.items()}
        _swap(model, new)
        _set_params(model, {n: _sliced(old_params[n], d, i) for n, (d, i) in self._params.items()})
        for module, values in self._attrs.items():
            for attr, value in values.items():
                setattr(modules[module], attr, value)
        problem = self._verify(model)
        if problem is not None:
            _swap(model, {name: modules[name] for name in new})
            _set_params(model, old_params)
            for module, values in old_attrs.items():
                for attr, value in values.items():
                    setattr(modules[module], attr, value)
            raise ValueError(
                f"The pruned model does not run: {problem}. The plan was not applied and "
                "`model` is unchanged; plan again on this model (or add the layers around "
                "the failing operation to `ignore=`)."
            )
        return model

    def _check_fits(self, model: nn.Module, modules: dict[str, nn.Module]) -> None:
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
        params = dict(model.named_parameters())
        for name, (dim, index) in self._params.items():
            param = params.get(name)
            if param is None or param.ndim <= dim or param.shape[dim] <= int(index.max()):
                raise ValueError(
                    f"The plan does not fit `model`: its parameter {name!r} is missing or "
                    "smaller than planned. Plan again on this model."
                )
        for owner in self._attrs:
            if owner not in modules:
                raise ValueError(f"The plan does not fit `model`: it has no module {owner!r}.")

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


def _sliced(param: nn.Parameter, dim: int, index: torch.Tensor) -> nn.Parameter:
    value = param.detach().index_select(dim, index.to(param.device)).clone()
    return nn.Parameter(value, requires_grad=param.requires_grad)


def _swap(model: nn.Module, new: Mapping[str, nn.Module]) -> None:
    modules = dict(model.named_modules())
    for name, module in new.items():
        parent_name, _, attr = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, module)


def _set_params(model: nn.Module, params: Mapping[str, nn.Parameter]) -> None:
    modules = dict(model.named_modules())
    for name, param in params.items():
        parent_name, _, attr = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, param)
