"""Channel dependency groups from a ``torch.fx`` trace.

Every tensor in the trace carries a *layout* along its channel dimension: a list of
segments, each a slice of one channel *space*. A Linear or convolution creates a new space
(its output units); BatchNorm, LayerNorm, depthwise convolutions, activations and pooling
keep the layout; an addition or multiplication of two tensors joins their spaces (both
sides of a residual are pruned together); a concatenation along channels chains segments;
a flatten repeats every channel over the positions it absorbs. Spaces joined together form
a group whose channels are kept or removed as one. Spaces that reach the model's input or
output, an ignored layer, or a tensor that is not pruned are frozen.
"""

from __future__ import annotations

import math
import operator
import traceback
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from pellucid._state import model_guard
from pellucid.pruning._spaces import (
    BINARY,
    BINARY_METHODS,
    PASS_FUNCTIONS,
    PASS_METHODS,
    PASS_MODULES,
    POOL_FUNCTIONS,
    POOL_MODULES,
    REDUCE_FUNCTIONS,
    REDUCE_METHODS,
    ChannelGraph,
    Member,
    Segment,
    Value,
)

__all__ = ["ChannelGraph", "Member", "Segment", "build_graph", "output_shape"]


def output_shape(out: Any) -> Any:
    """The shape(s) of a model output: a tensor, or a tuple/list/dict of them."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, tuple | list):
        return tuple(output_shape(o) for o in out)
    if isinstance(out, dict):
        return {k: output_shape(v) for k, v in out.items()}
    return None


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types; report where and what to do
        frames = [
            f
            for f in traceback.extract_tb(err.__traceback__)
            if "torch/fx" not in f.filename and "pellucid" not in f.filename
        ]
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        raise ValueError(
            f"`model` cannot be traced by torch.fx{where}: {type(err).__name__}: {err}. "
            "Structured pruning needs a traceable forward: move data-dependent Python control "
            "flow (if/for on tensor values) out of `forward`, or into a leaf module listed "
            "in `ignore=` whose channels are then left alone."
        ) from err


class _Walker:
    def __init__(self, gm: fx.GraphModule, ignore: set[str]) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.ignore = ignore
        self.graph = ChannelGraph()
        self.env: dict[fx.Node, Any] = {}
        self.used: dict[str, str] = {}

    # -- helpers ---------------------------------------------------------------------------
    def shape(self, node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def fresh(self, node: fx.Node, reason: str, cdim: int | None = None) -> Value | None:
        shape = self.shape(node)
        if shape is None:
            return None
        if not shape:
            return Value((), 0, shape)
        cdim = (1 if len(shape) > 1 else 0) if cdim is None else cdim
        space = self.graph.new_space(shape[cdim], frozen=reason)
        return Value((Segment(space, shape[cdim]),), cdim, shape, free=True)

    def adapt(self, x: Value, cdim: int) -> Value:
        """A free (frozen) value seen with its channels at ``cdim``."""
        if not x.free or x.cdim == cdim or not x.shape:
            return x
        cdim = cdim % len(x.shape)
        space = self.graph.new_space(x.shape[cdim], frozen=self.graph.frozen[x.layout[0].space])
        return Value((Segment(space, x.shape[cdim]),), cdim, x.shape, free=True)

    def value(self, arg: Any) -> Any:
        return self.env.get(arg) if isinstance(arg, fx.Node) else None

    def opaque(self, node: fx.Node, what: str) -> Value | None:
        for arg in node.all_input_nodes:
            v = self.value(arg)
            if v is not None and v.layout:
                self.graph.require_frozen(
                    v.layout,
                    f"Cannot prune through node {node.name!r} ({what}): pellucid does not know "
                    "how its channels depend on its inputs.",
                )
        return self.fresh(node, f"output of {node.name!r} ({what})")

    def use(self, name: str, node: fx.Node) -> None:
        if name in self.used:
            raise ValueError(
                f"Cannot prune module {name!r}: it is called more than once (nodes "
                f"{self.used[name]!r} and {node.name!r}); add it to `ignore=` or give each "
                "call its own module."
            )
        self.used[name] = node.name

    def produce(self, node: fx.Node, name: str, length: int, cdim: int, shape: tuple[int, ...]):
        reason = f"layer {name!r} is ignored" if name in self.ignore else None
        space = self.graph.new_space(length, frozen=reason)
        self.graph.producers[space] = name
        layout = (Segment(space, length),)
        self.graph.members.append(Member(name, "out", layout, node.name))
        return Value(layout, cdim, shape)

    # -- walk --------------------------------------------------------------------------------
    def run(self) -> ChannelGraph:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = self.fresh(node, "the model's input")
            elif node.op == "get_attr":
                self.env[node] = self.fresh(node, f"tensor attribute {node.target!r} is not pruned")
            elif node.op == "output":
                for arg in node.all_input_nodes:
                    v = self.value(arg)
                    if v is not None:
                        self.graph.freeze(v.layout, "reaches the model's output")
            elif node.op == "call_module":
                self.env[node] = self.call_module(node)
            elif node.op == "call_function":
                self.env[node] = self.call_function(node, node.target)
            else:
                self.env[node] = self.call_method(node)
        return self.graph

    def call_module(self, node: fx.Node) -> Value | None:
        name = str(node.target)
        module = self.modules[name]
        x = self.value(node.args[0]) if node.args else None
        shape = self.shape(node)
        if x is None or shape is None:
            return self.opaque(node, type(module).__name__)
        if isinstance(module, nn.Linear | nn.LayerNorm):
            x = self.adapt(x, len(x.shape) - 1)
        elif len(x.shape) > 1:
            x = self.adapt(x, 1)
        if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed and x.cdim == 1:
            self.use(name, node)
            groups = module.groups
            if groups == 1:
                self.graph.members.append(Member(name, "in", x.layout, node.name))
                return self.produce(node, name, module.out_channels, 1, shape)
            if groups == module.in_channels == module.out_channels and all(
                s.repeat == 1 for s in x.layout
            ):
                self.graph.members.append(Member(name, "elementwise", x.layout, node.name))
                return Value(x.layout, 1, shape)
            self.graph.freeze(x.layout, f"input of grouped convolution {name!r}")
            value = self.produce(node, name, module.out_channels, 1, shape)
            self.graph.group_divisors[value.layout[0].space] = [groups]
            return value
        if isinstance(module, nn.Linear) and x.cdim == len(x.shape) - 1:
            self.use(name, node)
            self.graph.members.append(Member(name, "in", x.layout, node.name))
            return self.produce(node, name, module.out_features, len(shape) - 1, shape)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and x.cdim == 1:
            self.use(name, node)
            self.graph.members.append(Member(name, "elementwise", x.layout, node.name))
            return Value(x.layout, 1, shape)
        if (
            isinstance(module, nn.LayerNorm)
            and len(module.normalized_shape) == 1
            and x.cdim == len(x.shape) - 1
        ):
            self.use(name, node)
            self.graph.members.append(Member(name, "elementwise", x.layout, node.name))
            return Value(x.layout, x.cdim, shape)
        if isinstance(module, PASS_MODULES):
            return Value(x.layout, x.cdim, shape)
        if isinstance(module, POOL_MODULES) and x.cdim == 1:
            return Value(x.layout, 1, shape)
        if isinstance(module, nn.Flatten):
            return self.flatten(node, x, module.start_dim, module.end_dim)
        if isinstance(module, nn.Softmax | nn.LogSoftmax) and module.dim is not None:
            dim = module.dim % len(x.shape)
            if dim != x.cdim:
                return Value(x.layout, x.cdim, shape)
        return self.opaque(node, type(module).__name__)

    def flatten(self, node: fx.Node, x: Value, start: int, end: int) -> Value | None:
        rank = len(x.shape)
        shape = self.shape(node)
        if shape is None or rank == 0:
            return self.opaque(node, "flatten")
        start, end = start % rank, end % rank
        if x.cdim < start:
            return Value(x.layout, x.cdim, shape)
        if x.cdim > end:
            return Value(x.layout, x.cdim - (end - start), shape)
        if x.cdim != start:
            return self.opaque(node, "flatten that splits the channel dimension")
        inner = math.prod(x.shape[start + 1 : end + 1])
        layout = tuple(Segment(s.space, s.length, s.repeat * inner) for s in x.layout)
        return Value(layout, start, shape)

    def binary(self, node: fx.Node, args: list[Any]) -> Value | None:
        shape = self.shape(node)
        if shape is None:
            return None
        full = sorted(
            (
                a
                for a in args
                if isinstance(a, fx.Node) and self.shape(a) == shape and self.value(a) is not None
            ),
            key=lambda a: self.value(a).free,
        )
        if not full:
            return self.opaque(node, str(node.target))
        base: Any = self.value(full[0])
        rank = len(shape)
        for arg in args:
            if not isinstance(arg, fx.Node):
                continue
            v, ashape = self.value(arg), self.shape(arg)
            if ashape is None:
                continue
            offset = rank - len(ashape)
            pos = base.cdim - offset
            if pos < 0 or ashape[pos] == 1:
                continue  # broadcast along the channels: not coupled
            if v is not None and v.free:
                v = self.adapt(v, pos)
            if v is None or v.cdim != pos or len(v.layout) != len(base.layout):
                # neither side may lose channels: freeze both (never only one of them)
                message = (
                    f"Cannot prune through node {node.name!r}: it combines channels with a "
                    f"tensor ({arg.name!r}) whose channels cannot be matched."
                )
                self.graph.require_frozen(base.layout, message)
                if v is not None:
                    self.graph.require_frozen(v.layout, message)
                continue
            if any(
                a.length != b.length or a.repeat != b.repeat
                for a, b in zip(v.layout, base.layout, strict=True)
            ):
                message = (
                    f"Cannot prune through node {node.name!r}: its inputs' channels are "
                    "laid out differently."
                )
                self.graph.require_frozen(base.layout, message)
                self.graph.require_frozen(v.layout, message)
                continue
            for a, b in zip(v.layout, base.layout, strict=True):
                self.graph.union(b.space, a.space, node.name)
        free = all(self.value(a).free for a in full)
        return Value(base.layout, base.cdim, shape, free=free)

    def reduce(self, node: fx.Node, x: Value, dims: Any, keepdim: bool) -> Value | None:
        shape = self.shape(node)
        if shape is None:
            return None
        rank = len(x.shape)
        if dims is None:
            return self.opaque(node, f"{node.target} over all dimensions")
        dims = [d % rank for d in ([dims] if isinstance(dims, int) else dims)]
        if x.cdim in dims:
            return self.opaque(node, f"{node.target} over the channel dimension")
        cdim = x.cdim if keepdim else x.cdim - sum(d < x.cdim for d in dims)
        return Value(x.layout, cdim, shape)

    def cat(self, node: fx.Node, tensors: Any, dim: int) -> Value | None:
        shape = self.shape(node)
        values: list[Any] = [self.value(t) for t in tensors]
        if shape is None or any(v is None for v in values):
            return self.opaque(node, "cat")
        dim = dim % len(shape)
        if all(v.cdim == dim for v in values):
            return Value(tuple(s for v in values for s in v.layout), dim, shape)
        base = values[0]
        for v in values[1:]:
            if v.cdim != base.cdim or len(v.layout) != len(base.layout):
                return self.opaque(node, "cat")
            for a, b in zip(v.layout, base.layout, strict=True):
                self.graph.union(b.space, a.space, node.name)
        return Value(base.layout, base.cdim, shape)

    def view(self, node: fx.Node, x: Value) -> Value | None:
        shape = self.shape(node)
        if shape is None:
            return None
        if shape == x.shape:
            return Value(x.layout, x.cdim, shape)
        if shape == x.shape[: x.cdim] + (math.prod(x.shape[x.cdim :]),):
            return self.flatten(node, x, x.cdim, -1)
        return self.opaque(node, f"{node.target} to shape {shape}")

    def call_function(self, node: fx.Node, fn: Any) -> Value | None:
        if "tensor_meta" not in node.meta:
            return None  # a shape, a dtype, a number: no channels
        args: list[Any] = list(node.args)
        kwargs: dict[str, Any] = dict(node.kwargs)
        x = self.value(args[0]) if args else None
        if fn in BINARY:
            return self.binary(node, args)
        if fn in (torch.cat, torch.concat):
            return self.cat(node, args[0], args[1] if len(args) > 1 else kwargs.get("dim", 0))
        if fn is operator.getitem and x is None:
            return self.fresh(node, f"output of {node.name!r}")
        tensors = [self.value(a) for a in node.all_input_nodes if self.value(a) is not None]
        if tensors and all(v.free for v in tensors):
            return self.fresh(node, self.graph.frozen[tensors[0].layout[0].space])
        if x is None:
            return (
                self.fresh(node, f"output of {node.name!r}")
                if not node.all_input_nodes
                or all(self.value(a) is None for a in node.all_input_nodes)
                else self.opaque(node, getattr(fn, "__name__", str(fn)))
            )
        if fn in PASS_FUNCTIONS:
            return Value(x.layout, x.cdim, self.shape(node) or x.shape)
        if fn in POOL_FUNCTIONS and x.cdim == 1:
            return Value(x.layout, 1, self.shape(node) or x.shape)
        if fn is torch.flatten:
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            return self.flatten(node, x, start, end)
        if fn in REDUCE_FUNCTIONS:
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            return self.reduce(node, x, dims, bool(kwargs.get("keepdim", False)))
        if fn in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax):
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if dim is not None and dim % len(x.shape) != x.cdim:
                return Value(x.layout, x.cdim, self.shape(node) or x.shape)
        return self.opaque(node, getattr(fn, "__name__", str(fn)))

    def call_method(self, node: fx.Node) -> Value | None:
        method = str(node.target)
        args: list[Any] = list(node.args)
        kwargs: dict[str, Any] = dict(node.kwargs)
        x = self.value(args[0]) if args else None
        if method in ("size", "dim", "numel") or "tensor_meta" not in node.meta:
            return None
        if x is None:
            return self.opaque(node, method)
        shape = self.shape(node)
        if method in PASS_METHODS:
            return Value(x.layout, x.cdim, shape or x.shape)
        if method in BINARY_METHODS:
            return self.binary(node, args)
        if method == "flatten":
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            return self.flatten(node, x, start, end)
        if method in ("view", "reshape"):
            return self.view(node, x)
        if method in REDUCE_METHODS:
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            return self.reduce(node, x, dims, bool(kwargs.get("keepdim", False)))
        if method in ("permute", "transpose") and shape is not None:
            rank = len(x.shape)
            if method == "permute":
                order = (
                    args[1] if len(args) == 2 and isinstance(args[1], list | tuple) else args[1:]
                )
                order = [d % rank for d in order]
            else:
                a, b = args[1] % rank, args[2] % rank
                order = list(range(rank))
                order[a], order[b] = order[b], order[a]
            return Value(x.layout, order.index(x.cdim), shape)
        return self.opaque(node, f"Tensor.{method}")


def build_graph(
    model: nn.Module, example_inputs: Any, ignore: set[str]
) -> tuple[fx.GraphModule, ChannelGraph]:
    """Trace ``model``, propagate shapes on ``example_inputs`` and build its channel graph."""
    gm = _trace(model)
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with model_guard(model, eval_mode=True), torch.no_grad():
        try:
            out = ShapeProp(gm).propagate(*inputs)
        except Exception as err:
            raise ValueError(
                f"`example_inputs` must run through the model; the traced forward failed with "
                f"{type(err).__name__}: {err}"
            ) from err
    gm.meta["output_shape"] = output_shape(out)
    walker = _Walker(gm, ignore)
    graph = walker.run()
    for space, message in graph.needs_frozen:
        if graph.frozen_reason(graph.find(space)) is None:
            producers = sorted(
                name for s, name in graph.producers.items() if graph.find(s) == graph.find(space)
            )
            hint = (
                f" Add the layer(s) producing these channels to `ignore=`: {producers}."
                if producers
                else ""
            )
            raise ValueError(message + hint)
    return gm, graph
