"""Which rule each layer's operation got: the rule engine's bookkeeping.

The module running an operation is read off the Python stack (nothing is added to the
model): from the frame that called the operation up to the model's own ``forward``, the
first method whose ``self`` is one of the model's modules. Every call is counted under
``(module, operation)``; the ``"layer: op"`` strings of ``extras["rules"]`` and
``extras["rule_calls"]`` are written once, when asked for, not on every operation.
"""

from __future__ import annotations

from collections import Counter
from types import FrameType
from typing import Any

from torch import nn

__all__ = ["Bookkeeping", "module_names"]


def module_names(model: Any) -> dict[int, str]:
    """``{id(module): dotted name}`` in ``model.named_modules()``'s order (shared modules
    once, the root under its class name), by a plain walk: cheaper than the generators."""
    if not isinstance(model, nn.Module):
        return {}
    names: dict[int, str] = {}
    stack: list[tuple[str, nn.Module | None]] = [("", model)]
    while stack:  # depth first, children in order (as ``named_modules``), in one loop
        prefix, module = stack.pop()
        if module is None or id(module) in names:
            continue
        names[id(module)] = prefix
        for key, child in reversed(module._modules.items()):
            stack.append((f"{prefix}.{key}" if prefix else key, child))
    names[id(model)] = type(model).__name__
    return names


class Bookkeeping:
    """The engine's record of ``(module, operation) -> [rule label, calls]``.

    Args:
        model: the explained model (its modules' names label the records).
    """

    def __init__(self, model: Any) -> None:
        self._model = model
        self._names: dict[int, str] | None = None  # walked on first use (a planned pass never)
        self._frame: FrameType | None = None  # the caller of the operation being dispatched
        self._log: dict[tuple[Any, str], list[Any]] = {}
        self._replayed: dict[str, list[Any]] = {}  # "layer: op" -> [label, calls] (``replay``)

    @property
    def names(self) -> dict[int, str]:
        """``{id(module): dotted name}`` of the model's modules."""
        if self._names is None:
            self._names = module_names(self._model)
        return self._names

    def current_module(self) -> nn.Module | None:
        """The innermost module of the model whose code runs the current operation.

        (Global module hooks would say the same at every module call, but they put every
        module call on torch's slower hooked path.)"""
        frame, names = self._frame, self.names
        if not names:
            return None
        while frame is not None:
            code = frame.f_code
            if code.co_argcount and code.co_varnames[0] == "self":
                owner = frame.f_locals.get("self")
                if id(owner) in names:
                    return owner  # type: ignore[no-any-return]
            frame = frame.f_back
        return None

    def _name(self, module: Any) -> str:
        return "the model's forward" if module is None else self.names[id(module)]

    def where(self) -> str:
        """The name of the layer running the current operation."""
        return self._name(self.current_module())

    def record(self, name: str, label: str) -> nn.Module | None:
        """Count one call of operation ``name`` under rule ``label`` in the current layer,
        and return that layer."""
        module = self.current_module()
        key = (module, name)
        entry = self._log.get(key)
        if entry is None:
            self._log[key] = [label, 1]
        else:
            entry[0] = label
            entry[1] += 1
        return module

    def clear_records(self) -> None:
        """Forget what was recorded (a pass whose records are superseded)."""
        self._log.clear()
        self._replayed = {}

    def snapshot_records(self) -> list[tuple[str, list[Any]]]:
        """The records so far, as ``("layer: op", [label, calls])`` (no module held)."""
        return [(key, list(entry)) for key, entry in self._keyed()]

    def replay(self, records: list[tuple[str, list[Any]]]) -> None:
        """Count ``records`` (a :meth:`snapshot_records`) as those of one more pass that met
        the same rules without this engine (``_plan``)."""
        for key, (label, calls) in records:
            entry = self._replayed.get(key)
            if entry is None:
                self._replayed[key] = [label, calls]
            else:
                entry[0] = label
                entry[1] += calls

    def _keyed(self) -> list[tuple[str, list[Any]]]:
        replayed = list(self._replayed.items())
        if not self._log:
            return replayed
        names, unnamed = self.names, "the model's forward"
        return replayed + [
            (f"{unnamed if m is None else names[id(m)]}: {op}", entry)
            for (m, op), entry in self._log.items()
        ]

    @property
    def records(self) -> dict[str, str]:
        """``"layer: op" -> rule label`` for every operation that met a rule or kept its
        gradient."""
        return {key: entry[0] for key, entry in self._keyed()}

    @property
    def calls(self) -> Counter[str]:
        """``"layer: op" -> number of calls`` (the keys of :attr:`records`)."""
        counts: dict[str, int] = {}
        for key, entry in self._keyed():
            counts[key] = counts.get(key, 0) + entry[1]
        return Counter(counts)
