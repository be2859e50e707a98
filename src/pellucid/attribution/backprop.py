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

from pellucid._registry import register
from pellucid._shell import explaining
from pellucid._targets import Target
from pellucid.attribution.rules import DECONVOLUTION_RULES, GUIDED_RULES, rules_for
from pellucid.explanation import Explanation

__all__ = ["deconvolution", "guided_backprop"]


@register(kind="decomposition")
def guided_backprop(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
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
            `batch_size` < 1;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.
        UnsupportedOperationError: the model runs an operation without a rule (a ValueError naming
            the operation).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> guided_backprop(net, torch.ones(2, 3)).attributions.shape
        torch.Size([2, 3])
    """
    engine = rules_for("guided_backprop", GUIDED_RULES)
    with explaining("guided_backprop", locals(), track_grad=True, engine=engine, work=1) as run:
        run.result(run.gradients())
    return run.explanation


@register(kind="decomposition")
def deconvolution(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
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
            `batch_size` < 1;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.
        UnsupportedOperationError: the model runs an operation without a rule (a ValueError naming
            the operation).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> deconvolution(net, torch.ones(2, 3)).attributions.shape
        torch.Size([2, 3])
    """
    engine = rules_for("deconvolution", DECONVOLUTION_RULES)
    with explaining("deconvolution", locals(), track_grad=True, engine=engine, work=1) as run:
        run.result(run.gradients())
    return run.explanation
