"""Channel dependency groups from a ``torch.fx`` trace.

Every tensor in the trace carries a *layout* along its channel dimension: a list of
segments, each a slice of one channel *space*. A Linear or convolution creates a new space
(its output units); norms, depthwise convolutions, activations and pooling keep the layout
(the layer table is in :mod:`pellucid.pruning._layers`); an addition or multiplication of
two tensors joins their spaces (both sides of a residual are pruned together); a
concatenation along channels chains segments, a split or chunk cuts them (refining a space
into parts); a flatten repeats every channel over the positions it absorbs, and so does a
channel shuffle (its pieces are joined, coarsened where one piece repeats channels); permutes, transposes and reshapes move the channel dimension.
Parameters that meet channels (positional embeddings, class tokens, layer scales, norm
weights) are sliced with them. Spaces joined together form a group whose channels are kept
or removed as one. Spaces that reach the model's input or output, an ignored layer, or a
tensor that is not pruned are frozen. Every operation that cannot be followed is collected
and reported at once, with the ``ignore=`` that makes the plan valid.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from pellucid._state import model_guard
from pellucid._warnings import PellucidWarning
from pellucid.pruning._layers import MODULE_HANDLERS
from pellucid.pruning._ops import METHOD_HANDLERS, function_handler
from pellucid.pruning._recording import record
from pellucid.pruning._spaces import ChannelGraph, Member, Segment, Value
from pellucid.pruning._tracing import trace, traced_leaf

__all__ = [
    "ChannelGraph",
    "Member",
    "RecordedTraceWarning",
    "Segment",
    "build_graph",
    "output_shape",
]

_MAX_RECORDINGS = 16


def output_shape(out: Any) -> Any:
    """The shape(s) of a model output: a tensor, or a tuple/list/dict of them."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, tuple | list):
        return tuple(output_shape(o) for o in out)
    if isinstance(out, dict):
        return {k: output_shape(v) for k, v in out.items()}
    return None


class _Walker:
    def __init__(
        self,
        model: nn.Module,
        fx_graph: fx.Graph,
        params: dict[str, nn.Parameter],
        ignore: set[str],
        leaves: dict[str, str],
    ) -> None:
        self.fx_graph = fx_graph
        self.modules = dict(model.named_modules())
        self.params = params
        self.ignore = ignore
        self.leaves = leaves
        self.graph = ChannelGraph()
        self.env: dict[fx.Node, Any] = {}
        self.seen: dict[str, tuple[tuple[Segment, ...], Any]] = {}
        self.overrides: dict[fx.Node, Any] = {}  # values decided ahead (a shuffle's nodes)
        self.bound: dict[str, tuple[int, tuple[Segment, ...]]] = {}

    # -- values ------------------------------------------------------------------------------
    def shape(self, node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def value(self, arg: Any) -> Any:
        v = self.env.get(arg) if isinstance(arg, fx.Node) else None
        return self.expanded(v) if self.graph.refined else v

    def expanded(self, v: Any) -> Any:
        """``v`` with the spaces cut since it was made replaced by their parts."""
        if isinstance(v, Value):
            layout = self.graph.expand(v.layout)
            return v if layout == v.layout else replace(v, layout=layout)
        if isinstance(v, tuple | list):
            return type(v)(self.expanded(item) for item in v)
        return v

    def align(self, a: tuple[Segment, ...], b: tuple[Segment, ...], node: fx.Node) -> bool:
        """Join two layouts of the same width channel by channel, first cutting and
        coarsening their spaces until their segments line up; both are frozen if they
        cannot (a shuffle's pieces, e.g. a passed-through half beside a layer's output)."""
        for _ in range(4 * (len(a) + len(b)) + 4):
            a, b = self.graph.expand(a), self.graph.expand(b)
            diff = next(
                (
                    i
                    for i, (x, y) in enumerate(zip(a, b, strict=False))
                    if (x.length, x.repeat) != (y.length, y.repeat)
                ),
                None,
            )
            if diff is None:
                break
            x, y = a[diff], b[diff]
            wide, narrow = (x, y) if x.length * x.repeat >= y.length * y.repeat else (y, x)
            width = narrow.length * narrow.repeat
            if width == wide.length * wide.repeat:  # same width: tie the finer one's channels
                small, big = (x, y) if x.repeat < y.repeat else (y, x)
                factor, rest = divmod(big.repeat, small.repeat)
                if rest or not self.graph.coarsen(small.space, factor):
                    break
            elif width % wide.repeat or not self.graph.refine(wide.space, [width // wide.repeat]):
                break
        return self.join(self.graph.expand(a), self.graph.expand(b), node)

    def cut(
        self, layout: tuple[Segment, ...], sizes: list[int]
    ) -> list[tuple[Segment, ...]] | None:
        """``layout`` cut into consecutive pieces of ``sizes`` features (split, chunk); spaces
        a cut falls inside are refined into parts. None when that is not possible."""
        bounds = [sum(sizes[: i + 1]) for i in range(len(sizes))]
        offset = 0
        for seg in layout:
            width = seg.length * seg.repeat
            inner = [b - offset for b in bounds if offset < b < offset + width]
            if inner and (
                any(c % seg.repeat for c in inner)
                or not self.graph.refine(seg.space, [c // seg.repeat for c in inner])
            ):
                return None
            offset += width
        pieces: list[tuple[Segment, ...]] = []
        current: list[Segment] = []
        position = 0
        for seg in self.graph.expand(layout):
            current.append(seg)
            position += seg.length * seg.repeat
            if position in bounds:
                pieces.append(tuple(current))
                current = []
        return pieces if len(pieces) == len(sizes) else None

    def fresh(self, node: fx.Node, reason: str, param: str | None = None) -> Value | None:
        shape = self.shape(node)
        if shape is None:
            return None
        if not shape:
            return Value((), 0, shape)
        cdim = 1 if len(shape) > 1 else 0
        space = self.graph.new_space(shape[cdim], frozen=reason)
        return Value((Segment(space, shape[cdim]),), cdim, shape, free=True, param=param)

    def free_value(self, shape: tuple[int, ...], cdim: int, reason: str) -> Value:
        """A frozen tensor of ``shape`` with its channels at ``cdim``."""
        space = self.graph.new_space(shape[cdim], frozen=reason)
        return Value((Segment(space, shape[cdim]),), cdim, shape, free=True)

    def adapt(self, x: Value, cdim: int) -> Value:
        """A free (frozen) value seen with its channels at ``cdim``."""
        if not x.free or not x.shape:
            return x
        cdim = cdim % len(x.shape)
        if x.cdim == cdim and x.param is None:
            return x
        reason = self.graph.frozen[x.layout[0].space]
        space = self.graph.new_space(x.shape[cdim], frozen=reason)
        return Value((Segment(space, x.shape[cdim]),), cdim, x.shape, free=True)

    def bind(self, v: Value, pos: int, layout: tuple[Segment, ...], node: fx.Node) -> bool:
        """Slice parameter ``v`` along ``pos`` with ``layout``'s channels; False if it cannot."""
        param = self.params.get(v.param or "")
        if param is None or param.ndim != len(v.shape) or param.shape[pos] != v.shape[pos]:
            return False
        if v.param in self.bound:
            dim, before = self.bound[v.param]
            if dim != pos:
                return False
            return self.join(self.graph.expand(before), layout, node)
        self.bound[str(v.param)] = (pos, layout)
        self.member(str(v.param), "param", layout, node, dim=pos)
        return True

    def join(self, a: tuple[Segment, ...], b: tuple[Segment, ...], node: fx.Node) -> bool:
        """Couple two layouts channel by channel; freeze both when they do not line up."""
        a, b = self.graph.expand(a), self.graph.expand(b)
        if len(a) != len(b) or any(
            x.length != y.length or x.repeat != y.repeat for x, y in zip(a, b, strict=True)
        ):
            # e.g. a concatenation added to one layer's output: kept whole (both sides)
            reason = f"node {node.name!r} combines channels laid out differently"
            self.graph.freeze(a, reason)
            self.graph.freeze(b, reason)
            return False
        for x, y in zip(a, b, strict=True):
            self.graph.union(x.space, y.space, node.name)
        return True

    # -- members -------------------------------------------------------------------------------
    def member(
        self, name: str, role: str, layout: tuple[Segment, ...], node: fx.Node, dim: int = 0
    ) -> None:
        self.graph.members.append(Member(name, role, self.graph.expand(layout), node.name, dim))

    def produce(
        self, node: fx.Node, name: str, length: int, cdim: int, shape: tuple[int, ...]
    ) -> Value:
        reason = f"layer {name!r} is ignored" if name in self.ignore else None
        space = self.graph.new_space(length, frozen=reason)
        self.graph.producers[space] = name
        layout = (Segment(space, length),)
        self.member(name, "out", layout, node)
        return Value(layout, cdim, shape)

    def layer(
        self,
        node: fx.Node,
        name: str,
        x: Value,
        length: int,
        cdim: int,
        shape: tuple[int, ...],
        member_in: bool = True,
    ) -> Value:
        """A layer that consumes ``x``'s channels and produces ``length`` new ones."""
        if member_in:
            self.member(name, "in", x.layout, node)
        return self.produce(node, name, length, cdim, shape)

    def elementwise(self, node: fx.Node, name: str, x: Value, shape: tuple[int, ...]) -> Value:
        """A layer with one weight per channel (norms, depthwise convolutions)."""
        self.member(name, "elementwise", x.layout, node)
        return Value(x.layout, x.cdim, shape)

    def opaque(self, node: fx.Node, what: str) -> Value | None:
        for arg in node.all_input_nodes:
            v = self.value(arg)
            if isinstance(v, Value) and v.layout and not v.free:
                self.graph.require_frozen(
                    v.layout,
                    f"Cannot prune through node {node.name!r} ({what}): pellucid does not know "
                    "how its channels depend on its inputs.",
                )
        return self.fresh(node, f"output of {node.name!r} ({what})")

    def sealed(self, node: fx.Node, reason: str) -> Value | None:
        """A module kept whole: its inputs and outputs are frozen (no refusal)."""
        for arg in node.all_input_nodes:
            v = self.value(arg)
            if isinstance(v, Value):
                self.graph.freeze(v.layout, reason)
        return self.fresh(node, reason)

    # -- walk ----------------------------------------------------------------------------------
    def run(self) -> ChannelGraph:
        for node in self.fx_graph.nodes:
            if node in self.overrides:
                self.env[node] = self.overrides.pop(node)
            elif node.op == "placeholder":
                self.env[node] = self.fresh(node, "the model's input")
            elif node.op == "get_attr":
                target = str(node.target)
                param = target if target in self.params else None
                self.env[node] = self.fresh(node, f"tensor attribute {target!r}", param)
            elif node.op == "output":
                for arg in node.all_input_nodes:
                    v = self.value(arg)
                    if isinstance(v, Value):
                        self.graph.freeze(v.layout, "reaches the model's output")
            elif node.op == "call_module":
                self.env[node] = self.call_module(node)
            elif node.op == "call_function":
                self.env[node] = self.call(node, function_handler(node.target), node.target)
            else:
                self.env[node] = self.call(node, METHOD_HANDLERS.get(node.target), node.target)
        return self.graph

    def call_module(self, node: fx.Node) -> Any:
        name = str(node.target)
        module = self.modules[name]
        if name in self.leaves:
            return self.sealed(node, self.leaves[name])
        x = self.value(node.args[0]) if node.args else None
        shape = self.shape(node)
        if not isinstance(x, Value) or not x.shape:
            return self.opaque(node, type(module).__name__)
        if name in self.seen:  # a shared module: every call's inputs are pruned alike
            layout, out = self.seen[name]
            self.join(self.graph.expand(layout), self.adapt(x, x.cdim).layout, node)
            out = self.expanded(out)
            return replace(out, shape=shape) if isinstance(out, Value) and shape else out
        for accepts, handler in MODULE_HANDLERS:
            if accepts(module):
                result = handler(self, node, module, name, x, shape)
                if result is not None:
                    if next(module.parameters(), None) is not None:
                        self.seen[name] = (x.layout, result)
                    return result
                break
        if name in self.ignore:
            return self.sealed(node, f"layer {name!r} is ignored")
        return self.opaque(node, type(module).__name__)

    def call(self, node: fx.Node, handler: Any, target: Any) -> Any:
        what = getattr(target, "__name__", str(target))
        if node.op == "call_method":
            what = f"Tensor.{target}"
        if handler is not None:
            return handler(self, node)
        meta = node.meta.get("tensor_meta")
        if isinstance(meta, tuple | list) and any(m is not None for m in meta):
            return self.opaque(node, what)  # tensors out of an unknown function
        if meta is None or self.shape(node) is None:
            return None  # a shape, a dtype, a number: no channels
        values = [self.value(a) for a in node.all_input_nodes]
        values = [v for v in values if isinstance(v, Value)]
        if all(v.free for v in values):
            reason = self.graph.frozen[values[0].layout[0].space] if values else "a new tensor"
            return self.fresh(node, reason)
        return self.opaque(node, what)

    def flatten(self, node: fx.Node, x: Value, start: int, end: int) -> Value | None:
        rank = len(x.shape)
        shape = self.shape(node)
        if shape is None or rank == 0:
            return self.opaque(node, "flatten")
        if x.free:
            return replace(x, shape=shape, param=None)
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
                if isinstance(a, fx.Node)
                and self.shape(a) == shape
                and isinstance(self.value(a), Value)
            ),
            key=lambda a: self.value(a).free,
        )
        if not full:
            return self.opaque(node, str(node.target))
        base: Any = self.value(full[0])
        free = base.free
        rank = len(shape)
        for arg in args:
            if not isinstance(arg, fx.Node) or arg is full[0]:
                continue
            v, ashape = self.value(arg), self.shape(arg)
            if ashape is None:
                continue
            offset = rank - len(ashape)
            if base.free and isinstance(v, Value) and not v.free:
                base = replace(self.adapt(base, v.cdim + offset), free=False)
                free = False
            pos = base.cdim - offset
            if pos < 0 or ashape[pos] == 1 or (base.free and isinstance(v, Value) and v.free):
                continue  # broadcast along the channels (or nothing to prune): not coupled
            if (
                isinstance(v, Value)
                and v.param is not None
                and self.bind(v, pos, base.layout, node)
            ):
                continue
            if isinstance(v, Value) and v.free:
                v = self.adapt(v, pos)
            if not isinstance(v, Value) or v.cdim != pos:
                # neither side may lose channels: freeze both (never only one of them)
                message = (
                    f"Cannot prune through node {node.name!r}: it combines channels with a "
                    f"tensor ({arg.name!r}) whose channels cannot be matched."
                )
                self.graph.require_frozen(base.layout, message)
                if isinstance(v, Value):
                    self.graph.require_frozen(v.layout, message)
                continue
            self.join(base.layout, v.layout, node)
        return Value(base.layout, base.cdim, shape, free=free)


def build_graph(
    model: nn.Module, example_inputs: Any, ignore: set[str]
) -> tuple[Any, ChannelGraph]:
    """Trace ``model``, propagate shapes on ``example_inputs`` and build its channel graph;
    returns the output shape(s) and the graph.

    When ``torch.fx`` cannot trace the model or some of its modules, the graph is built from
    a recording of the operations the example input runs through (modules whose forward
    reads tensor values are kept whole; see :mod:`pellucid.pruning._recording`); if that
    recording cannot be followed either, untraceable modules are kept whole. Every
    operation whose channels cannot be followed is reported in one error.
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        gm, leaves = trace(model, ignore)
    except ValueError as err:
        return _recorded(model, inputs, ignore, {"": str(err)})
    if leaves:
        try:
            return _recorded(model, inputs, ignore, leaves)
        except ValueError:
            pass  # the recording cannot be followed: keep the untraceable modules whole
    with model_guard(model, eval_mode=True), torch.no_grad():
        try:
            out = ShapeProp(gm).propagate(*inputs)
        except Exception as err:
            raise ValueError(
                f"`example_inputs` must run through the model; the traced forward failed with "
                f"{type(err).__name__}: {err}"
            ) from err
    graph = _Walker(model, gm.graph, dict(gm.named_parameters()), ignore, leaves).run()
    _refuse_unresolved(graph)
    return output_shape(out), graph


class RecordedTraceWarning(PellucidWarning):
    """``torch.fx`` could not trace the model; the plan follows a recorded run instead."""


def _recorded(
    model: nn.Module, inputs: tuple[Any, ...], ignore: set[str], untraceable: dict[str, str]
) -> tuple[Any, ChannelGraph]:
    """The channel graph of a recorded run of ``model`` on ``inputs``."""
    whole: dict[str, str] = {}
    for _ in range(_MAX_RECORDINGS):
        with model_guard(model, eval_mode=True), torch.no_grad():
            try:
                recording = record(
                    model, inputs, lambda m, name: name in whole or traced_leaf(m, name, ignore)
                )
            except Exception as err:
                raise ValueError(
                    f"`example_inputs` must run through the model; its forward failed with "
                    f"{type(err).__name__}: {err}"
                ) from err
        reads = {k: v for k, v in recording.value_reads.items() if k not in whole}
        if not reads:
            break
        if "" in reads:
            raise ValueError(
                f"{untraceable.get('', '`model` cannot be traced by torch.fx.')} Its own "
                f"forward reads tensor values ({reads['']}), so what it runs depends on the "
                "data: move that branch into a submodule (which is then kept whole)."
            )
        for name, where in reads.items():
            before = untraceable.get(name, f"module {name!r} is traced as recorded")
            whole[name] = (
                f"{before.removesuffix('; it is kept whole')}; it reads tensor values "
                f"({where}), so what it runs depends on the data: kept whole (move that branch "
                "out of its forward to prune inside it)"
            )
    graph = _Walker(model, recording.graph, dict(model.named_parameters()), ignore, whole).run()
    _refuse_unresolved(graph)
    failing = [f"module {name!r}" if name else "the model's own forward" for name in untraceable]
    warnings.warn(
        f"torch.fx cannot trace {', '.join(failing)}; the plan follows the operations "
        "recorded while the example input ran (sizes as they were for that input) and "
        "`apply_` verifies the pruned model on it"
        + (f". Kept whole: {', '.join(sorted(whole))}" if whole else ""),
        RecordedTraceWarning,
        stacklevel=4,
    )
    return output_shape(recording.output), graph


def _refuse_unresolved(graph: ChannelGraph) -> None:
    """One error listing every operation that needs channels frozen that are not."""
    problems: dict[str, None] = {}
    producers: set[str] = set()
    for space, message in graph.needs_frozen:
        root = graph.find(space)
        if graph.frozen_reason(root) is not None:
            continue
        problems[message] = None
        producers |= {name for s, name in graph.producers.items() if graph.find(s) == root}
    if not problems:
        return
    lines = "\n".join(f"  - {m}" for m in problems)
    hint = f" Add to `ignore=` the layers producing these channels: {sorted(producers)}."
    raise ValueError(
        f"Cannot plan structured pruning: {len(problems)} operation(s) cannot be followed:\n"
        f"{lines}\n{hint.strip()}"
    )
