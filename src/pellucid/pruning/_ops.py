"""How tensor functions and methods move channels: the operation half of the dependency graph.

:func:`function_handler` and :data:`METHOD_HANDLERS` map a traced ``call_function`` target
(by object, then by name for functions wrapped with ``torch.fx.wrap``) or a
``call_method`` name to a handler ``(walker, node) -> value``. Operations that are not in
the tables are opaque: the channels that reach them are frozen, or the plan is refused
with the ``ignore=`` that makes it valid.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx

from pellucid.pruning._spaces import (
    BINARY,
    BINARY_METHODS,
    PASS_FUNCTIONS,
    PASS_METHODS,
    POOL_FUNCTIONS,
    REDUCE_FUNCTIONS,
    REDUCE_METHODS,
    Segment,
    Value,
)

if TYPE_CHECKING:  # pragma: no cover
    from pellucid.pruning._graph import _Walker

__all__ = ["METHOD_HANDLERS", "function_handler"]

Handler = Callable[["_Walker", fx.Node], Any]


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _input(w: _Walker, node: fx.Node) -> Value | None:
    x = w.value(node.args[0]) if node.args else w.value(node.kwargs.get("input"))
    return x if isinstance(x, Value) and x.shape else None


def _guard(fn: Callable[[_Walker, fx.Node, Value, tuple[int, ...]], Any]) -> Handler:
    """Handlers of one-tensor operations: no tracked input or shape -> opaque."""

    def handler(w: _Walker, node: fx.Node) -> Any:
        x, shape = _input(w, node), w.shape(node)
        if x is None or shape is None:
            return w.opaque(node, getattr(node.target, "__name__", str(node.target)))
        return fn(w, node, x, shape)

    return handler


@_guard
def _passthrough(w: _Walker, node: fx.Node, x: Value, shape: tuple[int, ...]) -> Any:
    if len(shape) != len(x.shape):
        return w.opaque(node, str(node.target))
    return replace(x, shape=shape)


@_guard
def _pool(w: _Walker, node: fx.Node, x: Value, shape: tuple[int, ...]) -> Any:
    x = w.adapt(x, 1)
    return replace(x, shape=shape, param=None) if x.cdim == 1 else w.opaque(node, "pooling")


@_guard
def _flatten(w: _Walker, node: fx.Node, x: Value, shape: tuple[int, ...]) -> Any:
    return w.flatten(node, x, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))


@_guard
def _reshape(w: _Walker, node: fx.Node, x: Value, shape: tuple[int, ...]) -> Any:
    """view/reshape: the channel dimension survives whole, or is merged with later ones."""
    if x.free:
        return replace(x, shape=shape, param=None)
    before, channels = math.prod(x.shape[: x.cdim]), x.shape[x.cdim]
    acc = 1
    for k, size in enumerate(shape):
        if acc == before:
            if size == channels:
                _literal_width(w, node, k, x)
                return Value(x.layout, k, shape)
            if k + 1 < len(shape) and size * shape[k + 1] == channels and x.cdim == k:
                return _shuffle(w, node, x, size)
            for j in range(x.cdim + 1, len(x.shape) + 1):
                inner = math.prod(x.shape[x.cdim + 1 : j])
                if size == channels * inner and j > x.cdim + 1:
                    layout = tuple(Segment(s.space, s.length, s.repeat * inner) for s in x.layout)
                    return Value(layout, k, shape)
        acc *= size
        if acc > before:
            break
    return w.opaque(node, f"{node.target} to shape {shape}")


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _shuffle(w: _Walker, node: fx.Node, x: Value, groups: int) -> Any:
    """A channel shuffle: the channels viewed as ``(groups, C / groups)``, those two
    dimensions swapped and merged back. Each group's piece is joined channel by channel
    with the others (every piece keeps the same channels, so the pruned tensor is still
    shuffled the same way) and the output interleaves them: each channel of a piece
    becomes ``groups`` consecutive channels."""
    k = x.cdim
    swap = _only_user(node)
    order = _order(swap, len(w.shape(node) or ())) if swap is not None else None
    expected = list(range(len(w.shape(node) or ())))
    if order is None or swap is None:
        return w.opaque(node, f"{node.target} that splits the channel dimension")
    expected[k], expected[k + 1] = k + 1, k
    merge, copies = _only_user(swap), []
    while merge is not None and merge.target in ("contiguous", "clone"):
        copies.append(merge)
        merge = _only_user(merge)
    mergers = ("view", "reshape", "flatten", torch.reshape, torch.flatten)
    if order != expected or merge is None or merge.target not in mergers:
        return w.opaque(node, f"{node.target} that splits the channel dimension")
    if w.shape(merge) != x.shape:
        return w.opaque(node, f"{node.target} that splits the channel dimension")
    pieces = w.cut(x.layout, [x.shape[k] // groups] * groups)
    if pieces is None or not all(w.align(pieces[0], p, node) for p in pieces[1:]):
        # e.g. pieces inside channels kept per group (GroupNorm): shuffled, but kept whole
        w.graph.freeze(x.layout, f"{node.name!r} shuffles channels that are kept together")
        return w.opaque(node, "channel shuffle")
    first = w.graph.expand(pieces[0])
    w.overrides.update(dict.fromkeys([swap, *copies]))
    w.overrides[merge] = Value(
        tuple(Segment(s.space, s.length, s.repeat * groups) for s in first), k, x.shape
    )
    return None


def _literal_width(w: _Walker, node: fx.Node, k: int, x: Value) -> None:
    """A reshape that spells the channel count as a constant (``x.reshape(n, self.dim, -1)``)
    ties that attribute of the calling module to the channels; without one, they stay."""
    sizes = node.args[1] if len(node.args) == 2 else node.args[1:]
    sizes = sizes if isinstance(sizes, list | tuple) else (sizes,)
    channels = x.shape[x.cdim]
    if k >= len(sizes) or not isinstance(sizes[k], int) or channels == 1:
        return
    if node.meta.get("recorded"):  # recorded sizes are read off the shapes: they follow
        return
    _tie_literal(w, node, x.layout, channels, "reshapes to")


def _tie_literal(
    w: _Walker, node: fx.Node, layout: tuple[Segment, ...], size: int, what: str
) -> None:
    """A size spelled as a constant follows the channels only through the one integer
    attribute of the calling module that holds it; without one, the channels stay."""
    stack = node.meta.get("nn_module_stack") or {}
    owner = list(stack.values())[-1][0] if stack else ""
    module = w.modules.get(owner)
    names = [
        a
        for a, v in vars(module).items()
        if isinstance(v, int) and not isinstance(v, bool) and v == size
    ]
    if len(names) == 1:
        w.member(owner, f"attr:{names[0]}", layout, node)
    else:
        w.graph.freeze(layout, f"{node.name!r} {what} the fixed width {size}")


def _tie_pieces(
    w: _Walker, node: fx.Node, pieces: list[tuple[Segment, ...]], sizes: list[int]
) -> None:
    """``chunk`` splits the pruned tensor evenly again: its pieces are joined channel by
    channel. ``split`` with constant sizes: pieces of one size are joined and tied to the
    attribute that holds it (``[1, self.dim, self.dim]``), or kept whole."""
    if node.target in (torch.chunk, "chunk"):
        for piece in pieces[1:]:
            w.join(pieces[0], piece, node)
        return
    for size in dict.fromkeys(sizes):
        same = [p for p, n in zip(pieces, sizes, strict=True) if n == size]
        for piece in same[1:]:
            w.join(same[0], piece, node)
        if size > 1:
            _tie_literal(w, node, same[0], size, "splits to")


def _order(node: fx.Node, rank: int) -> list[int] | None:
    if node.target in ("transpose", torch.transpose, "swapaxes", torch.swapaxes):
        a, b = _arg(node, 1, "dim0") % rank, _arg(node, 2, "dim1") % rank
        order = list(range(rank))
        order[a], order[b] = order[b], order[a]
        return order
    dims = _arg(node, 1, "dims")
    if node.op == "call_method" and not isinstance(dims, list | tuple):
        dims = node.args[1:]
    return [int(d) % rank for d in dims] if all(isinstance(d, int) for d in dims) else None


@_guard
def _permute(w: _Walker, node: fx.Node, x: Value, shape: tuple[int, ...]) -> Any:
    order = _order(node, len(x.shape))
    if order is None:
        return w.opaque(node, str(node.target))
    if x.free:
        return replace(x, shape=shape, param=None)
    return Value(x.layout, order.index(x.cdim), shape)


@_guard
def _reduce(w: _Walker, node: fx.Node, x: Value, shape: tuple[int, ...]) -> Any:
    dims = _arg(node, 1, "dim")
    keepdim = bool(_arg(node, 2, "keepdim", False))
    if x.free:
        return w.fresh(node, w.graph.frozen[x.layout[0].space])
    if dims is None:
        return w.opaque(node, f"{node.target} over all dimensions")
    rank = len(x.shape)
    dims = [d % rank for d in ([dims] if isinstance(dims, int) else dims)]
    if x.cdim in dims:
        return w.opaque(node, f"{node.target} over the channel dimension")
    cdim = x.cdim if keepdim else x.cdim - sum(d < x.cdim for d in dims)
    return Value(x.layout, cdim, shape)


@_guard
def _softmax(w: _Walker, node: fx.Node, x: Value, shape: tuple[int, ...]) -> Any:
    dim = _arg(node, 1, "dim")
    if dim is None or dim % len(x.shape) == x.cdim:
        return w.opaque(node, f"{node.target} over the channel dimension")
    return replace(x, shape=shape, param=None)


@_guard
def _layer_norm(w: _Walker, node: fx.Node, x: Value, shape: tuple[int, ...]) -> Any:
    """``F.layer_norm`` over the last dimension: weight and bias are sliced with it."""
    x = w.adapt(x, -1)
    normalized = _arg(node, 1, "normalized_shape")
    if x.cdim != len(x.shape) - 1 or len(normalized) != 1:
        return w.opaque(node, "layer_norm over several dimensions")
    for i, key in ((2, "weight"), (3, "bias")):
        param = w.value(_arg(node, i, key))
        if isinstance(param, Value) and not (
            param.param is not None and w.bind(param, 0, x.layout, node)
        ):
            return w.opaque(node, "layer_norm with a computed weight")
    return Value(x.layout, x.cdim, shape, free=x.free)


def _getitem(w: _Walker, node: fx.Node) -> Any:
    source = w.value(node.args[0])
    if isinstance(source, tuple | list):
        index = node.args[1]
        return source[index] if isinstance(index, int) and index < len(source) else None
    x, shape = _input(w, node), w.shape(node)
    if x is None or shape is None:
        return w.opaque(node, "getitem") if shape is not None else None
    items = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    simple = (int, slice, type(None), type(Ellipsis))
    if not all(isinstance(i, simple) for i in items):
        return w.opaque(node, "indexing with tensors")
    if x.free:  # a parameter sliced along other dimensions can still be bound later
        keeps_rank = all(isinstance(i, slice) or i is Ellipsis for i in items)
        if x.param is not None and keeps_rank:
            return replace(x, shape=shape)
        return w.fresh(node, w.graph.frozen[x.layout[0].space])
    used = sum(1 for i in items if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for i in items:
        expanded += [slice(None)] * (len(x.shape) - used) if i is Ellipsis else [i]
    in_dim = out_dim = 0
    for i in expanded:
        if i is None:
            out_dim += 1
            continue
        if in_dim == x.cdim:
            if i != slice(None):
                return w.opaque(node, "indexing that selects channels")
            return Value(x.layout, out_dim, shape)
        in_dim += 1
        out_dim += 0 if isinstance(i, int) else 1
    return Value(x.layout, out_dim + x.cdim - in_dim, shape)


def _cat(w: _Walker, node: fx.Node) -> Any:
    tensors, shape = _arg(node, 0, "tensors"), w.shape(node)
    values: list[Any] = [w.value(t) for t in tensors]
    if shape is None or not all(isinstance(v, Value) and v.shape for v in values):
        return w.opaque(node, "cat")
    dim = _arg(node, 1, "dim", 0) % len(shape)
    fixed = [v for v in values if not v.free]
    if not fixed:
        return w.fresh(node, w.graph.frozen[values[0].layout[0].space])
    cdim = fixed[0].cdim
    if cdim == dim:
        values = [w.adapt(v, dim) for v in values]
        return Value(tuple(s for v in values for s in v.layout), dim, shape)
    base = fixed[0]
    for v in values:
        if v is base:
            continue
        if v.param is not None and w.bind(v, cdim, base.layout, node):
            continue
        v = w.adapt(v, cdim)
        if v.cdim != cdim:
            return w.opaque(node, "cat of tensors with channels on different dimensions")
        w.join(base.layout, v.layout, node)
    return Value(base.layout, cdim, shape)


@_guard
def _expand(w: _Walker, node: fx.Node, x: Value, shape: tuple[int, ...]) -> Any:
    if len(shape) != len(x.shape) or (not x.free and shape[x.cdim] != x.shape[x.cdim]):
        return w.opaque(node, "expand")
    return replace(x, shape=shape)


@_guard
def _patch_merging(w: _Walker, node: fx.Node, x: Value, shape: tuple[int, ...]) -> Any:
    """torchvision Swin's ``_patch_merging_pad``: four strided copies concatenated last."""
    x = w.adapt(x, -1)
    if x.cdim != len(x.shape) - 1:
        return w.opaque(node, "patch merging")
    return Value(x.layout * 4, x.cdim, shape, free=x.free)


def _split_sizes(node: fx.Node, length: int) -> list[int] | None:
    """The sizes of the pieces of ``split``/``chunk`` along a dimension of ``length``."""
    if node.target in (torch.chunk, "chunk"):
        chunks = _arg(node, 1, "chunks")
        if not isinstance(chunks, int) or chunks < 1:
            return None
        step = math.ceil(length / chunks)
    else:
        step = _arg(node, 1, "split_size_or_sections", node.kwargs.get("split_size"))
        if isinstance(step, list | tuple):
            return list(step) if all(isinstance(n, int) for n in step) else None
    if not isinstance(step, int) or step < 1:
        return None
    return [min(step, length - start) for start in range(0, length, step)]


def _split(w: _Walker, node: fx.Node) -> Any:
    """``split``/``chunk``: along the channels, the layout is cut into pieces (a channel
    space cut inside is refined into parts pruned on their own); elsewhere, unchanged."""
    x = _input(w, node)
    if x is None:
        return w.opaque(node, str(node.target))
    rank = len(x.shape)
    dim = _arg(node, 2, "dim", 0) % rank
    sizes = _split_sizes(node, x.shape[dim])
    if sizes is None:
        return w.opaque(node, str(node.target))
    shapes = [x.shape[:dim] + (n,) + x.shape[dim + 1 :] for n in sizes]
    if x.free:
        reason = w.graph.frozen[x.layout[0].space]
        return tuple(w.free_value(shp, x.cdim, reason) for shp in shapes)
    if dim != x.cdim:
        return tuple(Value(x.layout, x.cdim, shp) for shp in shapes)
    pieces = w.cut(x.layout, sizes)
    if pieces is None:  # the cut falls inside channels kept per head or group, or repeated
        reason = f"{node.name!r} cuts channels that are kept together"
        w.graph.freeze(x.layout, reason)
        return tuple(w.free_value(shp, x.cdim, reason) for shp in shapes)
    _tie_pieces(w, node, pieces, sizes)
    return tuple(Value(p, x.cdim, shp) for p, shp in zip(pieces, shapes, strict=True))


def _binary(w: _Walker, node: fx.Node) -> Any:
    return w.binary(node, list(node.args))


_BY_OBJECT: dict[Any, Handler] = {
    **dict.fromkeys(BINARY, _binary),
    **dict.fromkeys(PASS_FUNCTIONS, _passthrough),
    **dict.fromkeys(POOL_FUNCTIONS, _pool),
    **dict.fromkeys(REDUCE_FUNCTIONS, _reduce),
    **dict.fromkeys((torch.cat, torch.concat), _cat),
    **dict.fromkeys((torch.split, torch.chunk), _split),
    **dict.fromkeys((torch.permute, torch.transpose, torch.swapaxes), _permute),
    **dict.fromkeys((F.softmax, F.log_softmax, torch.softmax, torch.log_softmax), _softmax),
    torch.flatten: _flatten,
    torch.reshape: _reshape,
    F.layer_norm: _layer_norm,
    operator.getitem: _getitem,
}
_BY_NAME: dict[str, Handler] = {
    "_patch_merging_pad": _patch_merging,
    "stochastic_depth": _passthrough,
    "drop_path": _passthrough,
}
METHOD_HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(PASS_METHODS, _passthrough),
    **dict.fromkeys(BINARY_METHODS, _binary),
    **dict.fromkeys(REDUCE_METHODS, _reduce),
    **dict.fromkeys(("view", "reshape"), _reshape),
    **dict.fromkeys(("permute", "transpose", "swapaxes"), _permute),
    **dict.fromkeys(("softmax", "log_softmax"), _softmax),
    **dict.fromkeys(("split", "chunk"), _split),
    "flatten": _flatten,
    **dict.fromkeys(("expand", "expand_as"), _expand),
}


def function_handler(target: Any) -> Handler | None:
    """The handler of a traced function: by object, else by name (``torch.fx.wrap``)."""
    try:
        handler = _BY_OBJECT.get(target)
    except TypeError:  # unhashable target
        handler = None
    return handler or _BY_NAME.get(getattr(target, "__name__", ""))
