"""LRP's rules (epsilon, zero, gamma, alpha-beta, z-plus) and the per-layer rule chooser.

LRP rules relate the relevance at a layer's output ``R = z * g`` to its input, written in
the "modified gradient" form (the attribution at the input is ``x * grad``): epsilon
``x * J^T (R / (z + eps sign z))``, gamma with weights ``W + gamma W+``, and alpha-beta with
separate positive and negative contributions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from pellucid._validation import check_choice
from pellucid.attribution.rules._engine import (
    AVG_POOL_OPS,
    MAX_POOL_OPS,
    RELU_OPS,
    WEIGHTED_OPS,
    Handler,
    Rule,
    RuleEngine,
    eval_batch_norm,
    unchanged,
    vjp,
)

__all__ = ["LRP_RULES", "AlphaBeta", "Epsilon", "LrpRules", "lrp_handlers", "stabilize"]

Op = Callable[[torch.Tensor], torch.Tensor]

LRP_RULES = ("epsilon", "zero", "gamma", "alpha_beta", "zplus")
_FAMILIES = ("linear", "conv", "batch_norm", "avg_pool", "max_pool")


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` (sign(0) = 1), with exact zeros mapped to 1 (so z / . = 0)."""
    den = z + torch.where(z >= 0, z.new_tensor(epsilon), z.new_tensor(-epsilon))
    if float(torch.tensor(epsilon, dtype=z.dtype)) >= torch.finfo(z.dtype).tiny:  # never 0
        return den
    return torch.where(den == 0, torch.ones_like(den), den)


class Epsilon(Rule):
    """LRP-epsilon (LRP-0 with ``epsilon=0``; gamma when ``modified`` uses W + gamma W+).

    Backward: ``J_mod^T (g * z / stabilize(z_mod))`` where ``z_mod = modified(x)``.
    """

    def __init__(self, epsilon: float, modified: Op | None = None, label: str = "") -> None:
        self.epsilon, self.modified = epsilon, modified
        self.label = label or f"epsilon({epsilon:g})"

    def forward(self, op: Op, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        z = op(x)
        z_mod = z if self.modified is None else self.modified(x)
        return z, (x.clone(), z / stabilize(z_mod, self.epsilon))

    def backward(self, op: Op, state: Any, grad: torch.Tensor) -> torch.Tensor:
        x, ratio = state
        return vjp(self.modified or op, x, grad * ratio)


class AlphaBeta(Rule):
    """LRP-alpha-beta for a weighted op ``func(x, W, None, ...)`` (z-plus is alpha=1, beta=0).

    Positive contributions ``W+ x+ + W- x-`` get ``alpha`` of the relevance, negative ones
    ``beta``; biases are ignored, so with ``alpha - beta = 1`` relevance is conserved.
    """

    def __init__(
        self,
        weighted: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        weight: torch.Tensor,
        alpha: float,
        beta: float,
        label: str = "",
        epsilon: float = 1e-9,
    ) -> None:
        self.weighted, self.weight, self.alpha, self.beta = weighted, weight, alpha, beta
        self.epsilon = epsilon
        self.label = label or f"alpha_beta({alpha:g},{beta:g})"

    def forward(self, op: Op, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        z = op(x)
        return z, (x.clone(), z.clone())

    def backward(self, op: Op, state: Any, grad: torch.Tensor) -> torch.Tensor:
        x, z = state
        w_pos, w_neg = self.weight.clamp(min=0), self.weight.clamp(max=0)
        relevance = grad * z
        with torch.enable_grad():
            x_pos = x.clamp(min=0).requires_grad_(True)
            x_neg = x.clamp(max=0).requires_grad_(True)
            z_pos = self.weighted(x_pos, w_pos) + self.weighted(x_neg, w_neg)
            z_neg = self.weighted(x_pos, w_neg) + self.weighted(x_neg, w_pos)
            gp_pos, gp_neg = torch.autograd.grad(
                z_pos, (x_pos, x_neg), relevance / stabilize(z_pos, self.epsilon)
            )
            gn_pos, gn_neg = torch.autograd.grad(
                z_neg, (x_pos, x_neg), relevance / stabilize(z_neg, self.epsilon)
            )
        return torch.where(
            x > 0,
            self.alpha * gp_pos - self.beta * gn_pos,
            self.alpha * gp_neg - self.beta * gn_neg,
        )


def _family(name: str) -> str:
    if name == "linear":
        return "linear"
    if name in WEIGHTED_OPS:
        return "conv"
    if name in AVG_POOL_OPS:
        return "avg_pool"
    if name in MAX_POOL_OPS:
        return "max_pool"
    return "batch_norm"


class LrpRules:
    """Chooses the LRP rule of each executed op: composite entry, else the default."""

    def __init__(
        self,
        rule: str,
        composite: Mapping[Any, str] | None,
        epsilon: float,
        gamma: float,
        alpha: float,
        beta: float,
    ) -> None:
        self.rule, self.epsilon, self.gamma, self.alpha, self.beta = (
            rule,
            epsilon,
            gamma,
            alpha,
            beta,
        )
        self.composite = dict(composite or {})
        for key, value in self.composite.items():
            if isinstance(key, str):
                check_choice("composite key", key, _FAMILIES)
            elif not (isinstance(key, type) and issubclass(key, nn.Module)):
                raise TypeError(
                    f"`composite` keys must be layer families {_FAMILIES} or nn.Module "
                    f"classes; got {key!r}."
                )
            check_choice(f"composite[{key!r}]", value, LRP_RULES)

    def choose(self, engine: RuleEngine, name: str) -> str:
        module = engine.current_module()
        for key, value in self.composite.items():
            if isinstance(key, type) and isinstance(module, key):
                return value
        family = _family(name)
        if family in self.composite:
            return self.composite[family]
        return self.rule if family in ("linear", "conv") else "epsilon"

    def __call__(self, engine: RuleEngine, name: str, func: Any, args: Any, kwargs: Any) -> Rule:
        if name == "batch_norm":
            eval_batch_norm(engine, name, func, args, kwargs)
        choice = self.choose(engine, name)
        if choice in ("epsilon", "zero"):
            eps = self.epsilon if choice == "epsilon" else 0.0
            return Epsilon(eps, label="zero" if choice == "zero" else "")
        if name not in WEIGHTED_OPS:
            raise ValueError(
                f"LRP rule {choice!r} needs a weighted layer (linear/conv); `{name}` (in "
                f"{engine.where()}) can use 'epsilon' or 'zero'."
            )
        rest = list(args[1:])
        weight = rest[0] if rest else kwargs.get("weight")
        bias = rest[1] if len(rest) > 1 else kwargs.get("bias")
        tail, tail_kwargs = (
            rest[2:],
            {k: v for k, v in kwargs.items() if k not in ("weight", "bias")},
        )

        def weighted(t: torch.Tensor, w: torch.Tensor, b: Any = None) -> torch.Tensor:
            return func(t, w, b, *tail, **tail_kwargs)

        if choice == "gamma":
            w_g = weight + self.gamma * weight.clamp(min=0)
            b_g = None if bias is None else bias + self.gamma * bias.clamp(min=0)
            return Epsilon(
                self.epsilon,
                modified=lambda t: weighted(t, w_g, b_g),
                label=f"gamma({self.gamma:g})",
            )
        alpha, beta = (1.0, 0.0) if choice == "zplus" else (self.alpha, self.beta)
        return AlphaBeta(
            weighted,
            weight,
            alpha,
            beta,
            label="zplus" if choice == "zplus" else "",
            epsilon=self.epsilon,
        )


def lrp_handlers(chooser: LrpRules) -> dict[str, Handler]:
    """LRP's handlers: ``chooser`` picks each weighted/pooling/norm op's rule; ReLUs pass
    relevance through."""
    handlers: dict[str, Handler] = {
        name: chooser for name in WEIGHTED_OPS | AVG_POOL_OPS | MAX_POOL_OPS | {"batch_norm"}
    }
    handlers.update({name: unchanged for name in RELU_OPS})
    return handlers
