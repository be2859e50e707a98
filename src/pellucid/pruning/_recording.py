"""A trace that records real tensor flows: the fallback when ``torch.fx`` cannot trace.

``torch.fx`` traces with symbolic proxies, so Python arithmetic on shapes (``math.ceil(H /
p)``) or any ``if`` on a tensor fails. :func:`record` instead runs the model once on the
example input under a :class:`~torch.overrides.TorchFunctionMode` and writes every torch
function and tensor method it calls into an ``fx.Graph`` of the same form as a symbolic
trace: known layers (convolutions, norms, attention blocks, ``torch.nn`` modules) become
``call_module`` nodes through forward hooks, parameters ``get_attr`` nodes, and every node
carries the shape of the tensor it produced. Sizes computed from shapes are recorded as the
numbers they were on the example input (the pruned model is verified on it).

A forward that reads tensor *values* into Python (``bool(t)``, ``t.item()``: data-dependent
control flow) would be recorded along one branch only, so such a module is recorded as one
node (kept whole) and named with the line that reads the value.
"""

from __future__ import annotations

import operator
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.overrides import TorchFunctionMode

__all__ = ["Recording", "constant", "record", "relative_where"]

#: tensor methods that read values into Python: control flow that depends on the data
_VALUE_READS = frozenset(
    {"__bool__", "item", "__int__", "__float__", "__index__", "__complex__", "tolist", "numpy"}
)
_OPERATORS: dict[str, tuple[Callable[..., Any], bool]] = {  # name -> (function, swapped)
    "__getitem__": (operator.getitem, False),
    "__add__": (operator.add, False),
    "__radd__": (operator.add, True),
    "__iadd__": (operator.iadd, False),
    "__sub__": (operator.sub, False),
    "__rsub__": (operator.sub, True),
    "__mul__": (operator.mul, False),
    "__rmul__": (operator.mul, True),
    "__imul__": (operator.imul, False),
    "__truediv__": (operator.truediv, False),
    "__rtruediv__": (operator.truediv, True),
    "__matmul__": (operator.matmul, False),
    "__neg__": (operator.neg, False),
}


def relative_where(frames: list[traceback.FrameSummary]) -> str:
    """The last frame outside torch and pellucid as `` at package/file.py:line`` (never
    through the user's folder names), or ``""``."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../pellucid
    skip = (os.path.dirname(os.path.abspath(torch.__file__)), package)
    outside = [f for f in frames if not os.path.abspath(f.filename).startswith(skip)]
    if not outside:
        return ""
    parts = os.path.abspath(outside[-1].filename).split(os.sep)
    if "site-packages" in parts:
        path = "/".join(parts[parts.index("site-packages") + 1 :])
    else:
        path = parts[-1]
    return f" at {path}:{outside[-1].lineno}"


@dataclass
class _Meta:
    """What the walker reads of a recorded tensor (the shape, as ``ShapeProp`` stores it)."""

    shape: torch.Size


@dataclass
class Recording:
    """A recorded graph, its output, and the modules that read tensor values (kept whole)."""

    graph: fx.Graph
    output: Any
    value_reads: dict[str, str]


class _Recorder(TorchFunctionMode):
    def __init__(self, root: nn.Module, is_leaf: Callable[[nn.Module, str], bool]) -> None:
        super().__init__()
        self.graph = fx.Graph()
        self.nodes: dict[int, fx.Node] = {}
        self.alive: list[torch.Tensor] = []  # recorded tensors stay alive: ids stay unique
        self.names = {id(t): n for n, t in root.named_parameters()}
        self.names.update({id(t): n for n, t in root.named_buffers()})
        self.is_leaf = is_leaf
        self.stack: list[str] = []
        self.depth = 0  # > 0 inside a leaf module: its inside is not recorded
        self.value_reads: dict[str, str] = {}

    # -- tensors <-> nodes -----------------------------------------------------------------
    def bind(self, value: Any, node: fx.Node) -> None:
        if isinstance(value, torch.Tensor):
            node.meta["tensor_meta"] = _Meta(value.shape)
            self.nodes[id(value)] = node
            self.alive.append(value)
        elif isinstance(value, tuple | list):
            node.meta["tensor_meta"] = None
            for i, item in enumerate(value):
                if isinstance(item, torch.Tensor):
                    self.bind(item, self.node("call_function", operator.getitem, (node, i), {}))

    def node(self, op: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> fx.Node:
        node = self.graph.create_node(op, target, args, kwargs)
        node.meta["recorded"] = True
        if self.stack:
            node.meta["nn_module_stack"] = {name: (name, None) for name in self.stack}
        return node

    def arg(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            found = self.nodes.get(id(value))
            if found is not None:
                return found
            name = self.names.get(id(value))
            if name is not None:
                node = self.node("get_attr", name, (), {})
            else:  # a tensor made outside the recording: a constant
                node = self.node("call_function", constant, (), {})
            self.bind(value, node)
            return node
        if isinstance(value, torch.Size):
            return tuple(value)
        if isinstance(value, tuple | list):
            return type(value)(self.arg(v) for v in value)
        if isinstance(value, dict):
            return {k: self.arg(v) for k, v in value.items()}
        return value

    # -- functions and methods -------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth:
            return out
        name = getattr(func, "__name__", "")
        if name in _VALUE_READS:
            where = relative_where(traceback.extract_stack()[:-1])
            self.value_reads.setdefault(
                self.stack[-1] if self.stack else "", f"Tensor.{name}{where}"
            )
        if not _has_tensor(out):
            return out
        owner = getattr(func, "__qualname__", "").split(".")[0]
        mapped_args, mapped_kwargs = self.arg(tuple(args)), self.arg(kwargs)
        if name in _OPERATORS:
            target, swapped = _OPERATORS[name]
            if swapped:
                mapped_args = mapped_args[::-1]
            node = self.node("call_function", target, mapped_args, mapped_kwargs)
        elif owner in ("Tensor", "TensorBase") and name != "__get__":
            node = self.node("call_method", name, mapped_args, mapped_kwargs)
        else:
            node = self.node("call_function", func, mapped_args, mapped_kwargs)
        self.bind(out, node)
        return out

    # -- modules ---------------------------------------------------------------------------
    def hooks(self, root: nn.Module) -> list[Any]:
        handles = []
        for name, module in root.named_modules():
            if not name:
                continue
            leaf = self.is_leaf(module, name)
            handles.append(
                module.register_forward_pre_hook(self._enter(name, leaf), with_kwargs=True)
            )
            handles.append(module.register_forward_hook(self._leave(name, leaf), with_kwargs=True))
        return handles

    def _enter(self, name: str, leaf: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            if leaf and self.depth == 0:
                self.pending = (self.arg(tuple(args)), self.arg(dict(kwargs)))
            if leaf:
                self.depth += 1
            self.stack.append(name)

        return hook

    def _leave(self, name: str, leaf: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
            self.stack.pop()
            if not leaf:
                return
            self.depth -= 1
            if self.depth == 0:
                node = self.node("call_module", name, *self.pending)
                self.bind(out, node)

        return hook


def constant() -> None:
    """The target of a recorded tensor made outside the recording (a plain attribute)."""


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, tuple | list):
        return any(isinstance(v, torch.Tensor) for v in value)
    return False


def record(
    model: nn.Module, inputs: tuple[Any, ...], is_leaf: Callable[[nn.Module, str], bool]
) -> Recording:
    """Run ``model(*inputs)`` once and record its tensor flow (call inside ``no_grad`` and
    the model-state guard: the model's own hooks and mode are the caller's business)."""
    recorder = _Recorder(model, is_leaf)
    args = []
    for i, value in enumerate(inputs):
        if isinstance(value, torch.Tensor):
            node = recorder.graph.placeholder(f"input_{i}")
            node.meta["recorded"] = True
            recorder.bind(value, node)
        args.append(value)
    handles = recorder.hooks(model)
    try:
        with recorder:
            out = model(*args)
    finally:
        for handle in handles:
            handle.remove()
    recorder.graph.output(recorder.arg(out))
    return Recording(recorder.graph, out, recorder.value_reads)
