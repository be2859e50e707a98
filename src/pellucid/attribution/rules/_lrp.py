"""LRP's rules (epsilon, zero, gamma, alpha-beta, z-plus), the per-layer chooser, the table.

LRP rules relate the relevance at a layer's output ``R = z * g`` to its input, written in
the "modified gradient" form (the attribution at the input is ``x * grad``): epsilon
``x * J^T (R / (z + eps sign z))``, gamma with weights ``W + gamma W+``, and alpha-beta with
separate positive and negative contributions. Transformers' operations follow AttnLRP and
CP-LRP (Ali et al. 2022; Achtibat et al. 2024), chosen so that relevance is conserved:

* layer norm: epsilon on its linearization with the standard deviation held constant;
* element-wise activations with ``f(0) = 0`` (GELU, SiLU, ReLU6, hardswish, ...): relevance
  passes through unchanged, ``R_x = R_y``;
* softmax attention: the attention weights are constants, so ``weights @ v`` is linear in
  ``v`` and all relevance flows through the values;
* other products of two input-dependent tensors: each operand gets half (the uniform rule).

Constants take their share (zennit's and AttnLRP's convention): a bias, batch norm's shift,
layer norm's bias, the epsilon stabilizer, a positional embedding added to the tokens, a
class token. The table's :class:`~pellucid.attribution.rules._ledger.Ledger` measures that
absorbed relevance at each site, so conservation is checked as ``sum(attributions) +
sum(absorbed) == f(x)`` (:func:`conservation`). ``ignore_bias`` leaves the constant part of
weighted and norm layers out of the epsilon rules' denominators (zennit's
``zero_params="bias"``): those layers then pass all their relevance to their inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pellucid._validation import check_choice
from pellucid.attribution.rules._attention import ATTENTION
from pellucid.attribution.rules._elementwise import Elementwise, ratio
from pellucid.attribution.rules._engine import (
    Constant,
    Handler,
    Rule,
    RuleEngine,
    vjp,
)
from pellucid.attribution.rules._ledger import Ledger, row_sums
from pellucid.attribution.rules._ops import (
    AVG_POOL_OPS,
    BILINEAR_OPS,
    MAX_POOL_OPS,
    RELU_OPS,
    WEIGHTED_OPS,
    ZERO_FIXED_ACTIVATIONS,
)
from pellucid.attribution.rules._tables import always, bilinear, entries, eval_batch_norm, gradient

__all__ = [
    "LRP_RULES",
    "AlphaBeta",
    "Epsilon",
    "LrpRules",
    "LrpTable",
    "Uniform",
    "conservation",
    "lrp_handlers",
    "stabilize",
]

Op = Callable[..., torch.Tensor]

LRP_RULES = ("epsilon", "zero", "gamma", "alpha_beta", "zplus")
_FAMILIES = ("linear", "conv", "batch_norm", "avg_pool", "max_pool")


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` (sign(0) = 1), with exact zeros mapped to 1 (so z / . = 0)."""
    den = z + torch.where(z >= 0, z.new_tensor(epsilon), z.new_tensor(-epsilon))
    if float(torch.tensor(epsilon, dtype=z.dtype)) >= torch.finfo(z.dtype).tiny:  # never 0
        return den
    return torch.where(den == 0, torch.ones_like(den), den)


@dataclass(frozen=True, eq=False)
class Epsilon(Rule):
    """LRP-epsilon (LRP-0 with ``epsilon=0``): backward ``J'^T (g * z / stabilize(z'))``.

    ``modifier(x)`` gives the op ``z'`` whose Jacobian ``J'`` carries the relevance: the
    gamma rule's ``W + gamma W+``, layer norm's linearization; None: the op itself.
    ``bias=False`` leaves the constant part ``z'(0)`` (bias, shift) out of the denominator,
    so the inputs share all the relevance (zennit's ``zero_params="bias"``).
    """

    epsilon: float
    modifier: Callable[[torch.Tensor], Op] | None = None
    label: str = ""
    bias: bool = True

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", f"epsilon({self.epsilon:g})")
        if not self.bias:
            object.__setattr__(self, "label", f"{self.label}, bias ignored")

    def forward(self, op: Op, *xs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        x = xs[0]
        z = op(x)
        modified = op if self.modifier is None else self.modifier(x)
        z_mod = z if self.modifier is None else modified(x)
        if not self.bias:  # the op's value at 0, on one row: its constant part
            z_mod = z_mod - modified(torch.zeros_like(x[:1]))
        return z, (x.clone(), z / stabilize(z_mod, self.epsilon), modified)

    def backward(self, op: Op, state: Any, grad: torch.Tensor) -> torch.Tensor:
        x, ratio_, modified = state
        return vjp(modified, x, grad * ratio_)


class Uniform(Rule):
    """A product of two input-dependent tensors: each operand gets half the relevance (the
    ordinary gradient, halved: ``sum(a * g_a) = sum(b * g_b) = sum(z * g) / 2``)."""

    label = "uniform (bilinear)"
    arity = 2
    conserves = True

    def forward(self, op: Op, *xs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return op(*xs), tuple(x.clone() for x in xs)

    def backward(self, op: Op, state: Any, grad: torch.Tensor) -> Any:
        with torch.enable_grad():
            xs = tuple(x.requires_grad_(True) for x in state)
            return torch.autograd.grad(op(*xs), xs, grad * 0.5)


def _frozen_layer_norm(args: Any, kwargs: Any) -> Callable[[torch.Tensor], Op]:
    """Layer norm's linearization at ``x``: the standard deviation of ``x`` held constant."""
    shape = tuple(kwargs.get("normalized_shape", args[1] if len(args) > 1 else ()))
    weight = kwargs.get("weight", args[2] if len(args) > 2 else None)
    bias = kwargs.get("bias", args[3] if len(args) > 3 else None)
    eps = float(kwargs.get("eps", args[4] if len(args) > 4 else 1e-5))
    dims = tuple(range(-len(shape), 0))

    def modifier(x: torch.Tensor) -> Op:
        scale = (x.var(dims, unbiased=False, keepdim=True) + eps).rsqrt()

        def linear(t: torch.Tensor) -> torch.Tensor:
            out = (t - t.mean(dims, keepdim=True)) * scale
            out = out if weight is None else out * weight
            return out if bias is None else out + bias

        return linear

    return modifier


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

    def forward(self, op: Op, *xs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        z = op(xs[0])
        return z, (xs[0].clone(), z.clone())

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


#: Relevance passes through an activation unchanged: ``R_x = R_y``.
_IDENTITY = Elementwise("identity", slope=ratio, conserves=True)


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
    """Chooses the LRP rule of each executed op: composite entry, else the default.

    Raises:
        TypeError: a `composite` key is neither a layer family nor an nn.Module class.
        ValueError: a `composite` key or rule name is unknown.
    """

    def __init__(
        self,
        rule: str,
        composite: Mapping[Any, str] | None,
        epsilon: float,
        gamma: float,
        alpha: float,
        beta: float,
        ignore_bias: bool = False,
    ) -> None:
        self.rule, self.epsilon, self.gamma, self.alpha, self.beta = (
            rule,
            epsilon,
            gamma,
            alpha,
            beta,
        )
        self.ignore_bias = ignore_bias
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

    def layer_norm(self, engine: RuleEngine, name: str, func: Any, args: Any, kwargs: Any) -> Rule:
        """Handler: epsilon on layer norm's linearization (its deviation held constant)."""
        label = f"epsilon({self.epsilon:g}), constant deviation"
        return Epsilon(
            self.epsilon,
            modifier=_frozen_layer_norm(args, kwargs),
            label=label,
            bias=not self.ignore_bias,
        )

    def __call__(self, engine: RuleEngine, name: str, func: Any, args: Any, kwargs: Any) -> Rule:
        if name == "batch_norm":
            eval_batch_norm(engine, name, func, args, kwargs)
        choice = self.choose(engine, name)
        if choice in ("epsilon", "zero"):
            eps = self.epsilon if choice == "epsilon" else 0.0
            return Epsilon(eps, label="zero" if choice == "zero" else "", bias=not self.ignore_bias)
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
                modifier=lambda x: lambda t: weighted(t, w_g, b_g),
                label=f"gamma({self.gamma:g})",
                bias=not self.ignore_bias,
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


class LrpTable(dict[str, Handler]):
    """LRP's table, with the :class:`Ledger` in which the rule engine records the relevance
    that constants absorb (one table, one ledger, per explained call)."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        super().__init__(handlers)
        self.ledger = Ledger()


def conservation(table: LrpTable, relevance: torch.Tensor, scores: torch.Tensor) -> dict[str, Any]:
    """LRP's conservation report, per example: ``conservation_error`` is ``sum(relevance)
    - f(x)`` (minus what constants absorbed); ``absorbed`` maps each site to the relevance
    it took; ``conservation_gap`` is ``sum(relevance) + sum(absorbed) - f(x)``, zero up to
    rounding when every rule conserves what it does not hand to a named constant."""
    summed = row_sums(relevance)
    report: dict[str, Any] = {"conservation_error": summed - scores}
    absorbed = table.ledger.absorbed(relevance.shape[0])
    if absorbed is not None:
        total = sum(absorbed.values(), torch.zeros_like(summed))
        report["absorbed"] = absorbed
        report["conservation_gap"] = summed + total - scores
    return report


def lrp_handlers(chooser: LrpRules) -> LrpTable:
    """LRP's table: ``chooser`` picks each weighted/pooling/norm op's rule; ReLUs pass
    relevance through with their gradient, other activations with ``R_x = R_y``."""
    handlers: dict[str, Any] = {
        **entries(WEIGHTED_OPS | AVG_POOL_OPS | MAX_POOL_OPS | {"batch_norm"}, chooser),
        **entries(ZERO_FIXED_ACTIVATIONS - RELU_OPS, always(_IDENTITY)),
        **entries(RELU_OPS, gradient),
        "softmax": always(Constant("constant (attention weights)")),
        "layer_norm": chooser.layer_norm,
        **entries(BILINEAR_OPS, bilinear(Uniform())),
        **ATTENTION,
    }
    return LrpTable(handlers)
