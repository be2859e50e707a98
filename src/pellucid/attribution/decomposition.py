"""DeepLIFT (rescale) and LRP: decompositions of the output over the input features.

Rules are attached to the operations the model actually executes (see ``rules``), so a
ReLU module called twice, ``F.relu`` and in-place residual adds (``out += x``) are
decomposed exactly like the same model written without reuse. An operation without a rule
raises an error naming it. ``extras["rules"]`` lists the rule every layer's operation got;
``extras["completeness_gap"]`` (DeepLIFT) and ``extras["conservation_error"]`` (LRP) say
how far the attributions' sum is from the output difference they decompose.

DeepLIFT on a model whose non-linearities all sit in leaf modules (``nn.ReLU``,
``nn.MaxPool2d``, ...) learns a plan from its first call and later runs without watching
every operation; each such call is checked against the learned autograd graph and falls
back to the full engine on any difference, so results are the engine's (``rules/_plan``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pellucid._registry import register
from pellucid._shell import check_bool, explaining
from pellucid._targets import Target
from pellucid._validation import check_choice, check_float
from pellucid.attribution.rules import (
    LRP_RULES,
    DeepLiftRules,
    LrpRules,
    conservation,
    lrp_handlers,
    rules_for,
)
from pellucid.explanation import Explanation

__all__ = ["LRP_RULES", "deeplift", "lrp"]


def _sum(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)


# ---------------------------------------------------------------------------- DeepLIFT
@register(kind="decomposition")
def deeplift(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    baseline: Any = None,
    background: torch.Tensor | None = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """DeepLIFT with the rescale rule (Shrikumar et al. 2017): ``(x - b) * multipliers``.

    Every chunk of inputs runs with its baselines (first, without a graph; or, when all
    examples share it, as one extra row of the first chunk, whose run at every
    non-linearity the later chunks reuse), and every non-linearity turns the two runs into
    exact multipliers (one backward over the inputs only): element-wise non-linearities (ReLU,
    ReLU6, sigmoid, tanh, GELU, SiLU, hardswish, ...) their secant slope, max pooling the
    output difference routed through the argmax, layer norm and softmax their exact
    secants, products of two input-dependent tensors (attention's ``q k^T`` and
    ``weights @ v``, gates) the gradient at the midpoints; attention
    (``nn.MultiheadAttention``, ``scaled_dot_product_attention``) runs as those parts.
    Linear operations (linear, conv, eval-mode batch norm, average pooling, adds, reshapes)
    keep their gradient. Attributions sum to ``f(x) - f(b)`` up to rounding;
    ``extras["completeness_gap"]`` reports the difference per example.

    Args:
        model: a callable ``Tensor -> Tensor``, usually an ``nn.Module``.
        inputs: a batch-first float tensor.
        target: which output to explain (int, per-example, ``"predicted"``, callable, None).
        baseline: the reference: None/``"zeros"``, a number, a tensor, ``"mean"`` (of
            ``background``), ``"blur"``.
        background: reference examples for ``baseline="mean"``.
        batch_size: input rows per backward pass (a shared baseline runs once, with the
            first chunk; per-example baselines run just before their rows).
        max_memory: a budget for the call's peak memory, in bytes or as a size such as
            ``"2GB"``: picks ``batch_size`` from the model's activations measured on one
            row (give one or the other).
        forward_args: extra positional model arguments; forward_kwargs: keyword ones.
        output: which part of a tuple/dict return value to explain.
        eval_mode: True explains in eval mode for this call; None warns in training mode.

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            `baseline` does not broadcast to `inputs`;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.
        UnsupportedOperationError: the model runs an operation without a rule (a ValueError naming
            the operation).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> e = deeplift(net, torch.ones(2, 3))
        >>> bool(e.extras["completeness_gap"].abs().max() < 1e-5)
        True
    """
    rules = DeepLiftRules(baseline, background)
    with explaining("deeplift", locals(), track_grad=True, engine=rules) as run:
        grad, diff = rules.gradients(run.prep, run.batch_size)
        attributions = torch.sub(run.inputs, rules.reference).mul_(grad)
        run.result(
            attributions,
            baseline=rules.reference,
            params={
                "rule": "rescale",
                "baseline": baseline if isinstance(baseline, str | int | float) else None,
            },
            extras={"completeness_gap": _sum(attributions) - diff},
        )
    return run.explanation


# ---------------------------------------------------------------------------- LRP
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
    ignore_bias: bool = False,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019).

    The target score is redistributed layer by layer down to the inputs. Linear and conv
    layers use ``rule``; batch norm and pooling use epsilon; ReLUs pass relevance through,
    and so do GELU, SiLU, ReLU6, hardswish and tanh (``R_x = R_y``); layer norm uses
    epsilon with its deviation held constant; softmax attention holds its weights constant
    (CP-LRP: relevance flows through the values); residual adds split relevance in
    proportion to each branch's contribution. ``composite`` maps
    layer families (``"linear"``, ``"conv"``, ``"batch_norm"``, ``"avg_pool"``,
    ``"max_pool"``) or ``nn.Module`` classes to rules, e.g. ``{"conv": "gamma",
    "linear": "epsilon"}``.

    Conservation: constants added to a layer's output (biases, batch norm's shift, the
    epsilon stabilizer, a positional embedding, a class token) absorb their share of the
    relevance, as in zennit and AttnLRP. ``extras["absorbed"]`` names every such site
    (``"layer: op"``, or the parameter's name) with the relevance it took per example, and
    ``extras["conservation_gap"]`` is ``sum(attributions) + sum(absorbed) - f(x)``: zero
    up to rounding. ``extras["conservation_error"]`` is ``sum(attributions) - f(x)``.
    ``ignore_bias=True`` keeps the biases and shifts of linear, conv and norm layers out of
    the rules (zennit's ``zero_params="bias"``), so their relevance reaches the inputs; on
    models without other constants (most CNNs) the attributions then sum to ``f(x)``.

    Args:
        rule: ``"epsilon"``, ``"zero"`` (LRP-0), ``"gamma"``, ``"alpha_beta"`` or ``"zplus"``.
        composite: per-layer-type rules overriding ``rule``.
        epsilon: the stabilizer of the epsilon rule (and of gamma).
        gamma: the gamma rule's boost of positive weights.
        alpha, beta: the alpha-beta rule's weights (conservative when alpha - beta = 1).
        ignore_bias: leave biases and shifts out of the epsilon, zero and gamma rules.
        Other arguments as in :func:`deeplift` (no baseline).

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            a rule name is unknown;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.
        UnsupportedOperationError: the model runs an operation without a rule (a ValueError naming
            the operation).

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
    ignore_bias = check_bool("ignore_bias", ignore_bias)
    chooser = LrpRules(rule, composite, epsilon, gamma, alpha, beta, ignore_bias=ignore_bias)
    table = lrp_handlers(chooser)
    engine = rules_for("lrp", table)
    with explaining("lrp", locals(), track_grad=True, engine=engine) as run:
        relevance = run.inputs * run.gradients()
        run.result(
            relevance,
            params={
                "rule": rule,
                "composite": {getattr(k, "__name__", k): v for k, v in chooser.composite.items()},
                "epsilon": epsilon,
                "gamma": gamma,
                "alpha": alpha,
                "beta": beta,
                "ignore_bias": ignore_bias,
            },
            extras=conservation(table, relevance, run.scores()),
        )
    return run.explanation
