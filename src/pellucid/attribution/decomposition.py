"""DeepLIFT (rescale) and LRP: decompositions of the output over the input features.

Rules are attached to the operations the model actually executes (see ``_rules.py``), so
a ReLU module called twice, ``F.relu`` and in-place residual adds (``out += x``) are
decomposed exactly like the same model written without reuse. An operation without a rule
raises an error naming it. ``extras["rules"]`` lists the rule every layer's operation got;
``extras["completeness_gap"]`` (DeepLIFT) and ``extras["conservation_error"]`` (LRP) say
how far the attributions' sum is from the output difference they decompose.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pellucid._registry import register
from pellucid._state import model_guard
from pellucid._targets import Forward, Target
from pellucid._validation import check_choice, check_finite_tensor, check_float, check_tensor
from pellucid.attribution._baselines import resolve_baseline
from pellucid.attribution._common import Prepared, _all_finite, prepare
from pellucid.attribution._decomposition_rules import AlphaBeta, DeepLiftMaxPool, Epsilon, Rescale
from pellucid.attribution._paired import (
    PairedEngine,
    PairedForward,
    deeplift_chunks,
    reference_output,
)
from pellucid.attribution._rules import (
    ACTIVATIONS,
    AVG_POOL_OPS,
    MAX_POOL_OPS,
    RELU_OPS,
    WEIGHTED_OPS,
    Handler,
    Rule,
    RuleEngine,
    eval_batch_norm,
    freeze_parameters,
    linear_handlers,
    unchanged,
)
from pellucid.attribution.backprop import rule_gradients
from pellucid.attribution.gradients import grad_batch_size
from pellucid.explanation import Explanation

__all__ = ["LRP_RULES", "deeplift", "lrp"]

LRP_RULES = ("epsilon", "zero", "gamma", "alpha_beta", "zplus")
_FAMILIES = ("linear", "conv", "batch_norm", "avg_pool", "max_pool")


def _sum(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)


# ---------------------------------------------------------------------------- DeepLIFT
@functools.cache
def _deeplift_handlers() -> Mapping[str, Handler]:
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


_REFERENCE_OPS = ACTIVATIONS | MAX_POOL_OPS


@register(kind="decomposition")
def deeplift(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    baseline: Any = None,
    background: torch.Tensor | None = None,
    batch_size: int | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """DeepLIFT with the rescale rule (Shrikumar et al. 2017): ``(x - b) * multipliers``.

    Every chunk of inputs runs twice: first its baselines, without a graph, where every
    non-linearity keeps its reference input and output, then the inputs, where every
    element-wise non-linearity (ReLU, sigmoid, tanh, GELU, ...) multiplies the backward by
    its secant slope between the two (one backward over the inputs only), max pooling routes the output difference through the argmax, and linear
    operations (linear, conv, eval-mode batch norm, average pooling, adds, reshapes) keep
    their gradient. Attributions sum to ``f(x) - f(b)`` up to rounding;
    ``extras["completeness_gap"]`` reports the difference per example.

    Args:
        model: a callable ``Tensor -> Tensor``, usually an ``nn.Module``.
        inputs: a batch-first float tensor.
        target: which output to explain (int, per-example, ``"predicted"``, callable, None).
        baseline: the reference: None/``"zeros"``, a number, a tensor, ``"mean"`` (of
            ``background``), ``"blur"``.
        background: reference examples for ``baseline="mean"``.
        batch_size: input rows per backward pass (their baselines run just before them).
        forward_args: extra positional model arguments; forward_kwargs: keyword ones.
        output: which part of a tuple/dict return value to explain.
        eval_mode: True explains in eval mode for this call; None warns in training mode.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> e = deeplift(net, torch.ones(2, 3))
        >>> bool(e.extras["completeness_gap"].abs().max() < 1e-5)
        True
    """
    if isinstance(baseline, str) and baseline == "uniform":
        raise ValueError("`baseline='uniform'` is random; pass the drawn tensor to deeplift.")
    with model_guard(model, eval_mode=eval_mode, method="deeplift"):
        x = check_tensor("inputs", inputs, min_ndim=1, floating=True).detach()
        if not _all_finite(x):
            check_finite_tensor("inputs", x)
        base = resolve_baseline(
            baseline,
            Prepared(None, None, None, x),  # type: ignore[arg-type]
            background=background,
        )
        freeze_parameters(model)
        engine = PairedEngine("deeplift", _deeplift_handlers(), model, reference_ops=_REFERENCE_OPS)
        n = x.shape[0]
        size = grad_batch_size(batch_size, x[0].numel(), total=n)
        paired: list[PairedForward] = []

        def wrap(forward: Forward) -> PairedForward:
            paired.append(PairedForward(engine, forward, base))
            return paired[-1]

        prep = prepare(
            model,
            x,
            target=target,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
            output=output,
            wrap=wrap,
            track_grad=size >= n,
        )
        if prep.graph_output is not None and prep.leaf is not None:  # one chunk: reuse graph
            with torch.enable_grad():
                scores = prep.target.scores(prep.graph_output, None)
                (grad,) = torch.autograd.grad(scores.sum(), prep.leaf)
            diff = (scores - prep.target.scores(reference_output(paired[0]), None)).detach()
        else:
            grad, diff = deeplift_chunks(wrap(prep.forward), prep.target, x, size)
        attributions = (x - base) * grad
        gap = _sum(attributions) - diff
    return Explanation(
        attributions=attributions,
        inputs=x,
        method="deeplift",
        target=prep.target.describe(),
        baseline=base,
        params={
            "rule": "rescale",
            "batch_size": batch_size,
            "baseline": baseline if isinstance(baseline, str | int | float) else None,
        },
        extras={
            "completeness_gap": gap,
            "rules": dict(engine.records),
            "rule_calls": dict(engine.calls),
        },
    )


# ---------------------------------------------------------------------------- LRP
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


class _LrpRules:
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


@register(kind="decomposition")
def lrp(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    rule: str = "epsilon",
    composite: Mapping[Any, str] | None = None,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    alpha: float = 1.0,
    beta: float = 0.0,
    batch_size: int | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019).

    The target score is redistributed layer by layer down to the inputs. Linear and conv
    layers use ``rule``; batch norm and pooling use epsilon; ReLUs pass relevance through;
    residual adds split it in proportion to each branch's contribution. ``composite`` maps
    layer families (``"linear"``, ``"conv"``, ``"batch_norm"``, ``"avg_pool"``,
    ``"max_pool"``) or ``nn.Module`` classes to rules, e.g. ``{"conv": "gamma",
    "linear": "epsilon"}``. ``extras["conservation_error"]`` is ``sum(relevance) - f(x)``
    per example (biases and epsilon absorb some relevance).

    Args:
        rule: ``"epsilon"``, ``"zero"`` (LRP-0), ``"gamma"``, ``"alpha_beta"`` or ``"zplus"``.
        composite: per-layer-type rules overriding ``rule``.
        epsilon: the stabilizer of the epsilon rule (and of gamma).
        gamma: the gamma rule's boost of positive weights.
        alpha, beta: the alpha-beta rule's weights (conservative when alpha - beta = 1).
        Other arguments as in :func:`deeplift` (no baseline).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1, bias=False)
        >>> e = lrp(net, torch.ones(1, 3), rule="zero")
        >>> torch.allclose(e.attributions, net.weight.detach())
        True
    """
    rule = check_choice("rule", rule, LRP_RULES)
    epsilon = check_float("epsilon", epsilon, min_value=0.0)
    gamma = check_float("gamma", gamma, min_value=0.0)
    alpha = check_float("alpha", alpha)
    beta = check_float("beta", beta)
    chooser = _LrpRules(rule, composite, epsilon, gamma, alpha, beta)
    handlers: dict[str, Handler] = {
        name: chooser for name in WEIGHTED_OPS | AVG_POOL_OPS | MAX_POOL_OPS | {"batch_norm"}
    }
    handlers.update({name: unchanged for name in RELU_OPS})
    with model_guard(model, eval_mode=eval_mode, method="lrp"):
        prep, grad, engine = rule_gradients(
            "lrp",
            handlers,
            model,
            inputs,
            target=target,
            batch_size=batch_size,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
            output=output,
        )
    relevance = prep.inputs * grad
    f_x = prep.target.scores(prep.output, None)
    return Explanation(
        attributions=relevance,
        inputs=prep.inputs,
        method="lrp",
        target=prep.target.describe(),
        params={
            "rule": rule,
            "composite": {getattr(k, "__name__", k): v for k, v in chooser.composite.items()},
            "epsilon": epsilon,
            "gamma": gamma,
            "alpha": alpha,
            "beta": beta,
            "batch_size": batch_size,
        },
        extras={
            "conservation_error": _sum(relevance) - f_x,
            "rules": dict(engine.records),
            "rule_calls": dict(engine.calls),
        },
    )
