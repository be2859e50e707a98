"""DeepLIFT's rules (rescale): every row compared with its baseline row.

The paired engine (``_paired``) first runs the baselines without a graph, where every
non-linearity keeps its reference input and output, then runs the inputs, where
non-linearities multiply the gradient by the secant slope ``(f(x) - f(x0)) / (x - x0)``
(the local derivative where ``x == x0``); max pooling routes ``f(x) - f(x0)`` through the
argmax positions (as captum does); linear operations keep their ordinary gradient, which
is their multiplier. The attribution at the input is ``(x - baseline) * grad``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from pellucid._kernels import channels_last_pool
from pellucid.attribution.rules._engine import (
    ACTIVATIONS,
    MAX_POOL_OPS,
    RELU_OPS,
    Handler,
    Rule,
    RuleEngine,
    linear_handlers,
    vjp,
)
from pellucid.attribution.rules._paired import JOINT, PairedRule

__all__ = ["DEEPLIFT_REFERENCE_OPS", "DeepLiftMaxPool", "Rescale", "deeplift_handlers"]

Op = Callable[[torch.Tensor], torch.Tensor]


def _close(size: torch.Tensor, eps: float) -> torch.Tensor | None:
    """``1.0`` where ``size < eps`` and ``0.0`` elsewhere, or None when no entry is that close:
    one float reduction in the usual case, and float arithmetic instead of boolean masks
    otherwise (``torch.where``/``masked_fill`` on a 32x32x8x8 mask take ~400 us on the CPU
    here, the three float operations ~40 us)."""
    if size.numel() and float(size.amin()) >= eps:
        return None
    return (eps - size).sign_().clamp_(min=0)


def _fill_close(a: torch.Tensor, b: torch.Tensor, close: torch.Tensor) -> torch.Tensor:
    """``a`` with ``b`` where ``close`` is 1, for an ``a`` computed with the denominator
    ``dx + close``: there ``a``'s numerator is 0 when ``x == x_ref`` exactly (so the result
    is exactly ``b``) and of the order of ``|dx| < eps`` otherwise. One fused operation."""
    return a.addcmul_(b, close)


class Rescale(PairedRule):
    """DeepLIFT's rescale rule for an element-wise non-linearity."""

    label = "rescale"

    def __init__(self, eps: float = 1e-10, relu: bool = False) -> None:
        self.eps, self.relu = eps, relu

    def reference(self, op: Op, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        y = op(x)
        return y, (x.clone(), y.clone())

    def forward_paired(self, op: Op, x: torch.Tensor, saved: Any) -> tuple[torch.Tensor, Any]:
        if saved is JOINT:  # the reference is the batch's last row
            y = op(x)
            return y, (True, self._slopes(op, x[:-1], y[:-1], x[-1:], y[-1:]))
        x_ref, y_ref = saved
        y = op(x)
        return y, (False, self._slopes(op, x, y, x_ref, y_ref))

    def _slopes(
        self, op: Op, x: torch.Tensor, y: torch.Tensor, x_ref: torch.Tensor, y_ref: torch.Tensor
    ) -> torch.Tensor:
        dx = x - x_ref
        if self.relu:
            # A ReLU's secant lies in [0, 1] however small dx is (the difference of two
            # clamped values never exceeds the difference of the values): only dx == 0,
            # 0/0, needs the local slope, and one sum tells whether any entry is NaN.
            secant = (y - y_ref).div_(dx)
            if math.isfinite(float(secant.sum())):
                return secant
        close = _close(dx.abs(), self.eps)
        if close is None:
            return (y - y_ref).div_(dx)
        # Where x == x_ref the secant is 0/0: the local slope there instead.
        secant = (y - y_ref).div_(dx.add_(close))
        local = x.sign().clamp_(min=0) if self.relu else vjp(op, x, torch.ones_like(x))
        return _fill_close(secant, local, close)

    def backward(self, op: Op, state: Any, grad: torch.Tensor) -> torch.Tensor:
        joint, slopes = state
        if joint:  # the reference row gets no gradient
            return torch.cat([grad[:-1] * slopes, grad.new_zeros(1, *grad.shape[1:])])
        return grad * slopes


def _unpool(values: torch.Tensor, indices: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Scatter-add pooled ``values`` back to the positions ``indices`` of an input ``shape``."""
    out = values.new_zeros(*shape[:2], int(torch.Size(shape[2:]).numel()))
    out.scatter_add_(2, indices.flatten(2), values.flatten(2))
    return out.view(shape)


class DeepLiftMaxPool(PairedRule):
    """DeepLIFT for max pooling: ``f(x) - f(x0)`` is routed through the argmax positions."""

    label = "rescale (max pool)"

    def __init__(
        self, func: Any, rest: tuple[Any, ...], kwargs: dict[str, Any], eps: float = 1e-10
    ) -> None:
        self.func, self.rest, self.kwargs, self.eps = func, rest[:5], dict(kwargs), eps
        self.kwargs["return_indices"] = True

    def _pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the faster CPU kernel for many channels (same values and indices; see _kernels)
        return channels_last_pool(self.func, x, *self.rest, **self.kwargs)

    def reference(self, op: Op, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        y, indices = self._pool(x)
        return y, (x.clone(), y.clone(), indices)

    def forward_paired(self, op: Op, x: torch.Tensor, saved: Any) -> tuple[torch.Tensor, Any]:
        if saved is JOINT:  # the reference is the batch's last row
            y, indices = self._pool(x)
            state = self._routes(x[:-1], y[:-1], indices[:-1], x[-1:], y[-1:], indices[-1:])
            return y, (True, state)
        x_ref, y_ref, i_ref = saved
        y, i_in = self._pool(x)
        return y, (False, self._routes(x, y, i_in, x_ref, y_ref, i_ref))

    def _routes(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        i_in: torch.Tensor,
        x_ref: torch.Tensor,
        y_ref: torch.Tensor,
        i_ref: torch.Tensor,
    ) -> tuple[Any, ...]:
        # What the backward needs is computed now (later in-place operations of the model
        # on ``x`` or ``y`` cannot change it).
        top = torch.maximum(y, y_ref)
        dx = x - x_ref
        close = _close(dx.abs(), self.eps)
        if close is not None:
            dx.add_(close)  # 0/0 there (see backward): divide by ~1 instead
        return top - y_ref, y - top, i_in, i_ref, dx, close

    def backward(self, op: Op, state: Any, grad: torch.Tensor) -> torch.Tensor:
        joint, (up, down, i_in, i_ref, dx, close) = state
        g = grad[:-1] if joint else grad
        shape = dx.shape
        routed = _unpool(g * up, i_in, shape)
        i_ref = i_ref.expand(shape[0], *i_ref.shape[1:])  # one reference row, broadcast
        routed.view(*shape[:2], -1).scatter_add_(2, i_ref.flatten(2), (g * down).flatten(2))
        m = routed.div_(dx)
        if close is not None:  # where x == x_ref: the gradient, routed through x's argmax
            m = _fill_close(m, _unpool(g, i_in, shape), close)
        if joint:  # the reference row gets no gradient
            return torch.cat([m, m.new_zeros(1, *m.shape[1:])])
        return m


@functools.cache
def deeplift_handlers() -> Mapping[str, Handler]:
    """DeepLIFT's handlers (stateless; built once)."""
    handlers = linear_handlers()
    rescale, relu = Rescale(), Rescale(relu=True)

    def maxpool(engine: RuleEngine, name: str, func: Any, args: Any, kwargs: Any) -> Rule:
        if kwargs.get("return_indices") or (len(args) > 6 and args[6]):
            raise engine.unsupported(name, " with return_indices=True")
        return DeepLiftMaxPool(func, tuple(args[1:]), kwargs)

    handlers.update({name: (lambda *a: rescale) for name in ACTIVATIONS - RELU_OPS})
    handlers.update({name: (lambda *a: relu) for name in RELU_OPS})
    handlers.update({name: maxpool for name in MAX_POOL_OPS})
    return handlers


#: The operations that keep a reference state in DeepLIFT's paired pass.
DEEPLIFT_REFERENCE_OPS = ACTIVATIONS | MAX_POOL_OPS
