"""How each kind of layer ties channels: the module half of the channel dependency graph.

:data:`MODULE_HANDLERS` is a table ``(predicate, handler)``: the first predicate that
accepts a called module decides how its inputs' and outputs' channels are coupled. A
handler gets the walker, the graph node, the module, its name, the input :class:`Value` and
the output shape, and returns the output's value (or a tuple of them).

Attention comes in two kinds. *Tied* attention (``nn.MultiheadAttention``, torchvision's
Swin window attention) computes its heads inside the residual stream's width, so its
query/key/value/output projections are pruned with the stream's channels, an equal number
in every head. *Head* attention (timm's ``Attention``) has its own inner width: whole heads
(their query, key and value rows and the output projection's columns) are removed together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import fx, nn

from pellucid.pruning._spaces import PASS_MODULES, POOL_MODULES, Segment, Value

if TYPE_CHECKING:  # pragma: no cover
    from pellucid.pruning._graph import _Walker

__all__ = ["MODULE_HANDLERS", "PASS_MODULE_NAMES", "is_leaf"]

#: per-sample scalings (identity in eval mode): channels pass unchanged
PASS_MODULE_NAMES = frozenset({"StochasticDepth", "DropPath", "DropBlock2d"})
_LEAF_NAMES = frozenset({"StochasticDepth", "DropPath", "LayerNorm2d", "ShiftedWindowAttention"})


def _is_head_attention(module: nn.Module) -> bool:
    """timm-style attention: fused ``qkv`` and ``proj`` Linears around its own head width."""
    return (
        type(module).__name__ == "Attention"
        and isinstance(getattr(module, "qkv", None), nn.Linear)
        and isinstance(getattr(module, "proj", None), nn.Linear)
        and isinstance(getattr(module, "num_heads", None), int)
        and isinstance(getattr(module, "head_dim", None), int)
    )


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _channels_first_norm(module: nn.Module) -> bool:
    """A LayerNorm subclass over the channels of an ``(N, C, ...)`` tensor (LayerNorm2d)."""
    return isinstance(module, nn.LayerNorm) and "2d" in type(module).__name__.lower()


def is_leaf(module: nn.Module) -> bool:
    """Modules traced as one node (their channels are handled by a table entry): norms and
    their subclasses (timm's ``BatchNormAct2d``, ``LayerNorm2d``), attention blocks and
    per-sample scalings."""
    return (
        isinstance(module, _NORMS)
        or type(module).__name__ in _LEAF_NAMES
        or _is_head_attention(module)
    )


def _conv(w: _Walker, node: fx.Node, module: Any, name: str, x: Value, shape: Any) -> Any:
    x = w.adapt(x, 1)
    if module.transposed or x.cdim != 1:
        return None
    groups = module.groups
    if groups == 1:
        return w.layer(node, name, x, module.out_channels, 1, shape)
    if groups == module.in_channels == module.out_channels:  # depthwise: one filter per channel
        return w.elementwise(node, name, x, shape)
    if module.in_channels == module.out_channels and all(s.repeat == 1 for s in x.layout):
        # grouped, square: output channel i is tied to input channel i; every group keeps
        # the same number, so the groups stay
        value = w.elementwise(node, name, x, shape)
        w.graph.divide(x.layout, groups)
        return value
    # grouped, in != out: inputs and outputs are pruned evenly per group (every group keeps
    # the same number of each, so the groups stay); each kept output keeps its own group's
    # kept inputs. Inputs whose groups do not line up with one channel space stay whole.
    whole = len(x.layout) == 1 and x.layout[0].repeat == 1
    if not whole:
        w.graph.freeze(x.layout, f"input of grouped convolution {name!r} (several sources)")
    value = w.layer(node, name, x, module.out_channels, 1, shape, member_in=whole)
    if whole:
        w.graph.divide(x.layout, groups)
    w.graph.divide(value.layout, groups)
    return value


def _linear(w: _Walker, node: fx.Node, module: Any, name: str, x: Value, shape: Any) -> Any:
    x = w.adapt(x, len(x.shape) - 1)
    if x.cdim != len(x.shape) - 1:
        return None
    return w.layer(node, name, x, module.out_features, len(shape) - 1, shape)


def _norm_at(dim: int | None) -> Callable[..., Any]:
    """BatchNorm (channels at 1), LayerNorm (last), LayerNorm2d (1): one weight per channel."""

    def handler(w: _Walker, node: fx.Node, module: Any, name: str, x: Value, shape: Any) -> Any:
        where = len(x.shape) - 1 if dim is None else dim
        x = w.adapt(x, where)
        if x.cdim != where % len(x.shape):
            return None
        if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
            return None
        if isinstance(module, nn.GroupNorm):
            single = len(x.layout) == 1 and x.layout[0].length % module.num_groups == 0
            if all(s.repeat == 1 for s in x.layout) or single:
                w.graph.divide(x.layout, module.num_groups)
            else:  # groups that do not line up with the channel spaces
                w.graph.freeze(x.layout, f"the groups of {name!r} mix repeated channels")
        return w.elementwise(node, name, x, shape)

    return handler


def _tied_attention(w: _Walker, node: fx.Node, module: Any, name: str, x: Value, shape: Any) -> Any:
    """``nn.MultiheadAttention`` / Swin window attention: inner width = stream width."""
    x = w.adapt(x, len(x.shape) - 1)
    layout = x.layout
    if isinstance(module, nn.MultiheadAttention):
        same = [a for a in node.args[:3]] + [node.kwargs.get(k) for k in ("query", "key", "value")]
        nodes = {a for a in same if isinstance(a, fx.Node)}
        ok = len(nodes) == 1 and module._qkv_same_embed_dim and module.bias_k is None
        heads = module.num_heads
    else:
        ok, heads = True, module.num_heads
    if not ok or x.cdim != len(x.shape) - 1 or len(layout) != 1 or layout[0].repeat != 1:
        return None
    if isinstance(module, nn.MultiheadAttention):
        value = w.elementwise(node, name, x, x.shape)
        w.graph.divide(layout, heads)
        return (value, None)
    w.member(f"{name}.qkv", "in", layout, node)
    w.member(f"{name}.qkv", "out", layout * 3, node)
    w.member(f"{name}.proj", "in", layout, node)
    w.graph.divide(layout, heads)
    return w.produce(node, f"{name}.proj", module.proj.out_features, x.cdim, shape)


def _head_attention(w: _Walker, node: fx.Node, module: Any, name: str, x: Value, shape: Any) -> Any:
    """timm ``Attention``: whole heads go, with their q/k/v rows and output columns."""
    x = w.adapt(x, len(x.shape) - 1)
    plain = isinstance(module.norm, nn.Identity) and getattr(module, "gate", None) is None
    if x.cdim != len(x.shape) - 1 or not plain:
        return None
    w.member(f"{name}.qkv", "in", x.layout, node)
    heads = w.graph.new_space(module.num_heads)
    w.graph.producers[heads] = f"{name}.qkv"
    per_head = (Segment(heads, module.num_heads, module.head_dim),)
    w.member(f"{name}.qkv", "out", per_head * 3, node)
    w.member(f"{name}.proj", "in", per_head, node)
    w.member(name, "heads", (Segment(heads, module.num_heads),), node)
    return w.produce(node, f"{name}.proj", module.proj.out_features, x.cdim, shape)


def _passthrough(w: _Walker, node: fx.Node, module: Any, name: str, x: Value, shape: Any) -> Any:
    return Value(x.layout, x.cdim, shape, free=x.free)


def _pool(w: _Walker, node: fx.Node, module: Any, name: str, x: Value, shape: Any) -> Any:
    x = w.adapt(x, 1)
    return Value(x.layout, 1, shape, free=x.free) if x.cdim == 1 else None


def _flatten(w: _Walker, node: fx.Node, module: Any, name: str, x: Value, shape: Any) -> Any:
    return w.flatten(node, x, module.start_dim, module.end_dim)


def _softmax(w: _Walker, node: fx.Node, module: Any, name: str, x: Value, shape: Any) -> Any:
    if module.dim is None or module.dim % len(x.shape) == x.cdim:
        return None
    return Value(x.layout, x.cdim, shape, free=x.free)


def _is_pass(module: nn.Module) -> bool:
    if isinstance(module, nn.PReLU) and module.num_parameters != 1:
        return False
    return isinstance(module, PASS_MODULES) or type(module).__name__ in PASS_MODULE_NAMES


MODULE_HANDLERS: list[tuple[Callable[[nn.Module], bool], Callable[..., Any]]] = [
    (lambda m: isinstance(m, nn.modules.conv._ConvNd), _conv),
    (lambda m: isinstance(m, nn.Linear), _linear),
    (lambda m: isinstance(m, nn.modules.batchnorm._BatchNorm), _norm_at(1)),
    (_channels_first_norm, _norm_at(1)),
    (lambda m: isinstance(m, nn.LayerNorm), _norm_at(None)),
    (lambda m: isinstance(m, nn.GroupNorm), _norm_at(1)),
    (lambda m: isinstance(m, nn.MultiheadAttention), _tied_attention),
    (lambda m: type(m).__name__ == "ShiftedWindowAttention", _tied_attention),
    (_is_head_attention, _head_attention),
    (_is_pass, _passthrough),
    (lambda m: isinstance(m, POOL_MODULES), _pool),
    (lambda m: isinstance(m, nn.Flatten), _flatten),
    (lambda m: isinstance(m, nn.Softmax | nn.LogSoftmax), _softmax),
]
