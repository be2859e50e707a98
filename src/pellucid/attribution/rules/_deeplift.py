"""DeepLIFT's rules: multipliers that compare every row with its baseline row.

The paired engine (``_paired``) runs the baselines first, without a graph, and keeps each
paired operation's reference operands and output; then the explained rows, where each rule
turns the two runs into multipliers ``m`` with ``op(x) - op(x0) = m (x - x0)`` *exactly*,
so that the chain of multipliers sums to ``f(x) - f(x0)`` (completeness):

* element-wise non-linearities: the secant slope ``(f(x) - f(x0)) / (x - x0)`` (the local
  derivative where ``x == x0``): the rescale rule;
* max pooling: ``f(x) - f(x0)`` routed through the argmax positions (as captum does);
* products of two input-dependent tensors (``a * b``, ``a @ b``, attention): bilinear, so
  ``ab - a0b0 = (a - a0)(b + b0)/2 + (a + a0)/2 (b - b0)``: the ordinary gradient taken at
  the midpoints;
* softmax and layer norm: the same facts composed (a secant for ``exp`` and for the
  reciprocal square root, an exact split of their products, linear sums);
* linear operations keep their gradient, which is their multiplier.

The attribution at the input is ``(x - baseline) * grad``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from pellucid._kernels import channels_last_pool
from pellucid.attribution.rules._attention import ATTENTION
from pellucid.attribution.rules._engine import RuleEngine, vjp
from pellucid.attribution.rules._ops import (
    ACTIVATIONS,
    AVG_POOL_OPS,
    BILINEAR_OPS,
    MAX_POOL_OPS,
    RELU_OPS,
    WEIGHTED_OPS,
)
from pellucid.attribution.rules._paired import PairedRule, scaled_rows
from pellucid.attribution.rules._tables import always, bilinear, entries, eval_batch_norm, gradient

__all__ = [
    "DEEPLIFT_REFERENCE_OPS",
    "DEEPLIFT_RULES",
    "DeepLiftMaxPool",
    "LayerNormSecant",
    "Midpoint",
    "Rescale",
    "SoftmaxSecant",
]

Op = Callable[..., torch.Tensor]
Tensors = tuple[torch.Tensor, ...]


def _close(size: torch.Tensor, eps: float) -> torch.Tensor | None:
    """``1.0`` where ``size < eps`` and ``0.0`` elsewhere, or None when no entry is that close:
    one float reduction in the usual case, and float arithmetic instead of boolean masks
    otherwise (``torch.where``/``masked_fill`` on a 32x32x8x8 mask take ~400 us on the CPU
    here, the three float operations ~40 us). Off the CPU the mask is always built: reading
    the minimum would make the host wait for the GPU at every rule (resnet18 at 224 px on
    an H200: DeepLIFT 14.8 ms with those waits)."""
    if size.device.type == "cpu" and size.numel() and float(size.amin()) >= eps:
        return None
    return (eps - size).sign_().clamp_(min=0)


def _fill_close(a: torch.Tensor, b: torch.Tensor, close: torch.Tensor) -> torch.Tensor:
    """``a`` with ``b`` where ``close`` is 1, for an ``a`` computed with the denominator
    ``dx + close``: there ``a``'s numerator is 0 when ``x == x_ref`` exactly (so the result
    is exactly ``b``) and of the order of ``|dx| < eps`` otherwise. One fused operation."""
    return a.addcmul_(b, close)


def secant(
    y: torch.Tensor,
    y_ref: torch.Tensor,
    x: torch.Tensor,
    x_ref: torch.Tensor,
    local: Callable[[], torch.Tensor],
    eps: float = 1e-10,
) -> torch.Tensor:
    """``(y - y_ref) / (x - x_ref)``, and ``local()`` (the derivative) where ``x ~ x_ref``."""
    dx = x - x_ref
    close = _close(dx.abs(), eps)
    if close is None:
        return (y - y_ref).div_(dx)
    return _fill_close((y - y_ref).div_(dx.add_(close)), local(), close)


class Rescale(PairedRule):
    """DeepLIFT's rescale rule for an element-wise non-linearity: the secant slope."""

    label = "rescale"

    def __init__(self, eps: float = 1e-10, relu: bool = False) -> None:
        self.eps, self.relu = eps, relu

    def pair(self, op: Op, xs: Tensors, y: Any, aux: Any, refs: Tensors, y_ref: Any, _: Any) -> Any:
        (x,), (x_ref,) = xs, refs
        if self.relu and x.device.type == "cpu":
            # A ReLU's secant lies in [0, 1] however small dx is (the difference of two
            # clamped values never exceeds the difference of the values): only dx == 0,
            # 0/0, needs the local slope, and one sum tells whether any entry is NaN (on
            # the CPU; a GPU would make the host wait for that sum).
            slopes = (y - y_ref).div_(x - x_ref)
            if math.isfinite(float(slopes.sum())):
                return slopes
        if self.relu:
            return secant(y, y_ref, x, x_ref, lambda: x.sign().clamp_(min=0), self.eps)
        return secant(y, y_ref, x, x_ref, lambda: vjp(op, x, torch.ones_like(x)), self.eps)

    def joint_forward(self, op: Op, *xs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """:meth:`PairedRule.joint_forward` for one operand, without the generic plumbing.
        A ReLU's slopes are computed on every row at once (the reference row's, 0/0, are
        then set to 0, its gradient), so that the backward is one product."""
        (x,) = xs
        y = op(x)
        if self.relu and x.device.type == "cpu":
            slopes = (y - y[-1:]).div_(x - x[-1:])
            slopes[-1:].zero_()  # (its 0/0; then one sum tests the rows)
            if math.isfinite(float(slopes.sum())):
                return y, slopes
        return y, self.pair(op, (x[:-1],), y[:-1], None, (x[-1:],), y[-1:], None)

    def backward(self, op: Op, state: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * state

    def joint_backward(self, op: Op, state: Any, grad: torch.Tensor) -> torch.Tensor:
        if state.shape[0] == grad.shape[0]:  # slopes of every row, the reference's 0
            return grad * state
        return scaled_rows(grad, state)


class Midpoint(PairedRule):
    """A product bilinear in its two operands: the ordinary gradient at the midpoints
    ``(a + a0) / 2`` and ``(b + b0) / 2`` is an exact multiplier (see the module doc)."""

    label = "midpoint (bilinear)"
    arity = 2

    def pair(self, op: Op, xs: Tensors, y: Any, aux: Any, refs: Tensors, y_ref: Any, _: Any) -> Any:
        return tuple((x + r).mul_(0.5) for x, r in zip(xs, refs, strict=True))

    def backward(self, op: Op, state: Any, grad: torch.Tensor) -> Any:
        with torch.enable_grad():
            mids = tuple(m.requires_grad_(True) for m in state)
            return torch.autograd.grad(op(*mids), mids, grad)


class DeepLiftMaxPool(PairedRule):
    """DeepLIFT for max pooling: ``f(x) - f(x0)`` is routed through the argmax positions."""

    label = "rescale (max pool)"

    def __init__(self, func: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.func, self.rest, self.kwargs = func, rest[:5], dict(kwargs)
        self.kwargs["return_indices"] = True

    @classmethod
    def handler(
        cls, engine: RuleEngine, name: str, func: Any, args: Any, kwargs: Any
    ) -> DeepLiftMaxPool:
        if kwargs.get("return_indices") or (len(args) > 6 and args[6]):
            raise engine.unsupported(name, " with return_indices=True")
        return cls(func, tuple(args[1:]), kwargs)

    def evaluate(self, op: Op, *xs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        # the faster CPU kernel for many channels (same values and indices; see _kernels)
        return channels_last_pool(self.func, xs[0], *self.rest, **self.kwargs)  # type: ignore[no-any-return]

    def joint_forward(self, op: Op, *xs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """:meth:`PairedRule.joint_forward` for one operand, without the generic plumbing."""
        (x,) = xs
        y, i = self.evaluate(op, x)
        return y, self.pair(op, (x[:-1],), y[:-1], i[:-1], (x[-1:],), y[-1:], i[-1:])

    def pair(
        self, op: Op, xs: Tensors, y: Any, i_in: Any, refs: Tensors, y_ref: Any, i_ref: Any
    ) -> Any:
        """Per output: ``f(x) - f(x0)`` split into the part routed through x's argmax (``up``)
        and through the reference's (``down``), each over ``dx`` at its argmax: the
        multipliers those positions get from that output. What the backward needs is
        computed now (later in-place operations of the model on ``x`` or ``y`` cannot
        change it), on the outputs, not the inputs.

        Both ratios lie in [0, 1] and a denominator is 0 only with its numerator: ``up =
        max(y - y0, 0)`` over ``y - x0[argmax x]``, where ``x0[argmax x] <= y0``, so the
        denominator is at least the numerator (rounding is monotone); ``down`` likewise.
        Their 0/0 (``x == x0`` at that argmax) is the gradient for x's argmax (1) and nothing
        for the reference's (0): one ``nan_to_num`` each, no test of the values."""
        top = torch.maximum(y, y_ref)
        up, down = top - y_ref, y - top
        shape = xs[0].shape
        i_in = i_in.flatten(2)
        # a one-row reference is flattened first, then expanded: views, not copies
        i_ref = i_ref.flatten(2).expand(shape[0], -1, -1)
        x_ref = refs[0].flatten(2).expand(shape[0], -1, -1)
        d_in = y - x_ref.gather(2, i_in).view_as(y)
        d_ref = xs[0].flatten(2).gather(2, i_ref).view_as(y) - y_ref
        return up.div_(d_in).nan_to_num_(1.0), down.div_(d_ref).nan_to_num_(0.0), i_in, i_ref, shape

    def backward(self, op: Op, state: Any, grad: torch.Tensor) -> torch.Tensor:
        return self._route(state, grad, grad.new_zeros(state[4]))

    def joint_backward(self, op: Op, state: Any, grad: torch.Tensor) -> torch.Tensor:
        shape = state[4]
        out = grad.new_zeros(shape[0] + 1, *shape[1:])
        self._route(state, grad[:-1], out[:-1])
        return out

    @staticmethod
    def _route(state: Any, grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The multipliers, added into ``out`` (zeros of the input rows' shape)."""
        up, down, i_in, i_ref, shape = state
        flat = out.view(*shape[:2], -1)
        flat.scatter_add_(2, i_in, (grad * up).flatten(2))
        flat.scatter_add_(2, i_ref, (grad * down).flatten(2))
        return out


def _dim(args: Any, kwargs: Any, default: Any = None) -> Any:
    return kwargs.get("dim", args[1] if len(args) > 1 else default)


def _lead(
    r: torch.Tensor, r_ref: torch.Tensor, u: torch.Tensor, u_ref: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``u * r - u0 * r0`` (``r`` a per-row scale) the exact split ``(u - u0) r' + u'' (r -
    r0)`` with ``(r', u'') = (r, u0)`` where ``r <= r0``, else ``(r0, u)``: the smaller scale
    multiplies the difference, so multipliers stay of the size of the larger side's values
    (the symmetric midpoint split multiplies by ``(r + r0) / 2``, which for a reference
    with a tiny deviation, e.g. a zero baseline under a norm, is huge and cancels)."""
    small = r <= r_ref
    return torch.where(small, r, r_ref), torch.where(small, u_ref, u)


class SoftmaxSecant(PairedRule):
    """DeepLIFT for ``softmax(x)`` along ``dim``, written as ``e * r`` with ``e = exp(x - c)``
    (``c`` shared by the row and its reference), ``r = 1 / sum(e)``: the secant of ``exp``,
    the exact multiplier ``-r r0`` of the reciprocal, and :func:`_lead`'s split of the
    product."""

    label = "rescale (softmax)"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    @classmethod
    def handler(cls, engine: RuleEngine, name: str, func: Any, args: Any, kwargs: Any) -> Any:
        dim = _dim(args, kwargs)
        if dim is None:
            raise engine.unsupported(name, " without `dim`")
        return cls(int(dim))

    def pair(self, op: Op, xs: Tensors, y: Any, aux: Any, refs: Tensors, y_ref: Any, _: Any) -> Any:
        (x,), (x_ref,), d = xs, refs, self.dim
        low = torch.finfo(x.dtype).min  # masked (-inf) entries: 0/0 -> the local slope, 0
        x, x_ref = x.clamp(min=low), x_ref.clamp(min=low)
        c = torch.maximum(x.amax(d, keepdim=True), x_ref.amax(d, keepdim=True))
        e, e_ref = (x - c).exp(), (x_ref - c).exp()
        r, r_ref = e.sum(d, keepdim=True).reciprocal(), e_ref.sum(d, keepdim=True).reciprocal()
        r_lead, e_other = _lead(r, r_ref, e, e_ref)
        return secant(e, e_ref, x, x_ref, lambda: e), r_lead, e_other, -r * r_ref

    def backward(self, op: Op, state: Any, grad: torch.Tensor) -> torch.Tensor:
        m_exp, r_lead, e_other, m_r = state
        g_e = grad * r_lead + m_r * (grad * e_other).sum(self.dim, keepdim=True)
        return g_e * m_exp


class LayerNormSecant(PairedRule):
    """DeepLIFT for ``layer_norm``: ``y = w * d * r + b`` with ``d = x - mean(x)`` (linear),
    ``r = (mean(d^2) + eps)^(-1/2)``: :func:`_lead`'s split of ``d * r``, the midpoint rule
    for ``d^2`` and the exact secant ``-1 / (s s0 (s + s0))`` of ``v -> v^(-1/2)``."""

    label = "rescale (layer norm)"

    def __init__(self, ndim: int, weight: torch.Tensor | None, eps: float) -> None:
        self.dims = tuple(range(-ndim, 0))
        self.weight, self.eps = weight, eps

    @classmethod
    def handler(cls, engine: RuleEngine, name: str, func: Any, args: Any, kwargs: Any) -> Any:
        shape = kwargs.get("normalized_shape", args[1] if len(args) > 1 else None)
        weight = kwargs.get("weight", args[2] if len(args) > 2 else None)
        eps = kwargs.get("eps", args[4] if len(args) > 4 else 1e-5)
        return cls(len(tuple(shape)), weight, float(eps))

    def _centred(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = x - x.mean(self.dims, keepdim=True)
        return d, (d * d).mean(self.dims, keepdim=True).add_(self.eps).sqrt_()

    def pair(self, op: Op, xs: Tensors, y: Any, aux: Any, refs: Tensors, y_ref: Any, _: Any) -> Any:
        (d, s), (d_ref, s_ref) = self._centred(xs[0]), self._centred(refs[0])
        r_lead, d_other = _lead(s.reciprocal(), s_ref.reciprocal(), d, d_ref)
        n = math.prod(d.shape[k] for k in self.dims)
        scale = -2 / (n * s * s_ref * (s + s_ref))  # d(mean d^2)/dd times the secant of r
        return r_lead, d_other, (d + d_ref) / 2, scale

    def backward(self, op: Op, state: Any, grad: torch.Tensor) -> torch.Tensor:
        r_lead, d_other, d_mid, scale = state
        g = grad if self.weight is None else grad * self.weight
        g_d = g * r_lead + d_mid * (scale * (g * d_other).sum(self.dims, keepdim=True))
        return g_d - g_d.mean(self.dims, keepdim=True)


#: DeepLIFT's table: operation name -> handler (a rule per call, None: the gradient).
DEEPLIFT_RULES: Mapping[str, Any] = {
    **entries(WEIGHTED_OPS | AVG_POOL_OPS, gradient),
    "batch_norm": eval_batch_norm,
    **entries(ACTIVATIONS - RELU_OPS, always(Rescale())),
    **entries(RELU_OPS, always(Rescale(relu=True))),
    **entries(MAX_POOL_OPS, DeepLiftMaxPool.handler),
    "softmax": SoftmaxSecant.handler,
    "layer_norm": LayerNormSecant.handler,
    **entries(BILINEAR_OPS, bilinear(Midpoint())),
    **ATTENTION,
}

#: The operations that keep a reference run in DeepLIFT's paired pass.
DEEPLIFT_REFERENCE_OPS = ACTIVATIONS | MAX_POOL_OPS | BILINEAR_OPS | {"softmax", "layer_norm"}
