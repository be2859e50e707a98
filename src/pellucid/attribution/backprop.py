"""Guided backpropagation and deconvolution: modified ReLU backward passes.

Both are gradients in which every ReLU's backward is replaced: guided backprop (Springenberg
et al. 2015) passes only positive gradients where the input was positive; deconvolution
(Zeiler and Fergus 2014) passes positive gradients whatever the input. The rule is attached
to each ReLU *call* (module, ``F.relu``, ``torch.relu``, in-place), so a ReLU module used
twice or a functional ReLU is handled correctly; linear layers, pooling and eval-mode batch
norm keep their ordinary gradient, and any other non-linearity raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pellucid._evaluate import input_gradients, prepare, prepared_gradients, track_first_forward
from pellucid._registry import register
from pellucid._state import model_guard
from pellucid._targets import Target
from pellucid.attribution.rules import (
    DECONVOLUTION_RULES,
    GUIDED_RULES,
    Handler,
    RuleEngine,
    UnsupportedOperationError,
    freeze_parameters,
)
from pellucid.explanation import Explanation

__all__ = ["deconvolution", "guided_backprop", "rule_gradients"]


def rule_gradients(
    method: str,
    handlers: Mapping[str, Handler],
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target,
    batch_size: int | None,
    forward_args: Any,
    forward_kwargs: Mapping[str, Any] | None,
    output: Any,
) -> tuple[Any, torch.Tensor, RuleEngine]:
    """Prepare, then the gradient of the target w.r.t. the inputs with ``handlers`` attached.

    Must run inside ``model_guard`` (parameters' ``requires_grad`` is switched off).
    """
    freeze_parameters(model)
    engine = RuleEngine(method, handlers, model)
    prep = prepare(
        model,
        inputs,
        target=target,
        forward_args=forward_args,
        forward_kwargs=forward_kwargs,
        output=output,
        wrap=engine.wrap,
        passthrough=(UnsupportedOperationError,),
        track_grad=track_first_forward(inputs, batch_size),
    )
    if prep.graph_output is not None:
        grad = prepared_gradients(prep, batch_size)
    else:
        grad = input_gradients(
            engine.wrap(prep.model_forward), prep.target, prep.inputs, batch_size=batch_size
        )
    return prep, grad, engine


def _run(
    method: str, table: Mapping[str, Handler], model: Any, inputs: torch.Tensor, **kw: Any
) -> Explanation:
    eval_mode = kw.pop("eval_mode")
    with model_guard(model, eval_mode=eval_mode, method=method):
        prep, grad, engine = rule_gradients(method, table, model, inputs, **kw)
    return Explanation(
        attributions=grad,
        inputs=prep.inputs,
        method=method,
        target=prep.target.describe(),
        params={"batch_size": kw["batch_size"]},
        extras={"rules": dict(engine.records), "rule_calls": dict(engine.calls)},
    )


@register(kind="decomposition")
def guided_backprop(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    batch_size: int | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Guided backpropagation: the gradient with every ReLU's backward set to
    ``relu(grad) * (x > 0)`` (ReLU6 and hardtanh: ``relu(grad)`` where the unit is active).

    ``extras["rules"]`` lists the rule each executed operation got (per layer).

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            `batch_size` < 1.
        UnsupportedOperationError: the model runs an operation without a rule (a ValueError naming
            the operation).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> guided_backprop(net, torch.ones(2, 3)).attributions.shape
        torch.Size([2, 3])
    """
    return _run(
        "guided_backprop",
        GUIDED_RULES,
        model,
        inputs,
        target=target,
        batch_size=batch_size,
        forward_args=forward_args,
        forward_kwargs=forward_kwargs,
        output=output,
        eval_mode=eval_mode,
    )


@register(kind="decomposition")
def deconvolution(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    batch_size: int | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Deconvolution (Zeiler and Fergus 2014): every ReLU's backward set to ``relu(grad)``.

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            `batch_size` < 1.
        UnsupportedOperationError: the model runs an operation without a rule (a ValueError naming
            the operation).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> deconvolution(net, torch.ones(2, 3)).attributions.shape
        torch.Size([2, 3])
    """
    return _run(
        "deconvolution",
        DECONVOLUTION_RULES,
        model,
        inputs,
        target=target,
        batch_size=batch_size,
        forward_args=forward_args,
        forward_kwargs=forward_kwargs,
        output=output,
        eval_mode=eval_mode,
    )
