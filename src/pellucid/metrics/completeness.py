"""Completeness: do the attributions add up to the change in the model's output?"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pellucid._evaluate import broadcast_baseline
from pellucid._state import model_guard
from pellucid.metrics._common import flat_features, score_rows, setup_metric

__all__ = ["completeness_gap"]


def completeness_gap(
    model: Any,
    inputs: torch.Tensor,
    attributions: Any,
    *,
    target: Any = None,
    baseline: Any = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> torch.Tensor:
    """``sum(attributions) - (f(inputs) - f(baseline))`` per example (signed).

    Zero for methods that satisfy completeness (integrated gradients with enough steps,
    DeepLIFT, exact Shapley values) against the same ``baseline``.

    Args:
        model: a callable ``Tensor -> Tensor``, usually an ``nn.Module``.
        inputs: a batch-first float tensor.
        attributions: a tensor of the inputs' shape or an ``Explanation`` of these inputs.
        target: which output (default: the explanation's target, or the only output).
        baseline: the reference input: None (zeros), a number, or a tensor of one example's
            or of the batch's shape.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1)
        >>> x = torch.ones(2, 3)
        >>> completeness_gap(net, x, x * net.weight.detach()).abs().max() < 1e-6
        tensor(True)
    """
    with model_guard(model, eval_mode=eval_mode, method="completeness_gap"):
        setup = setup_metric(
            model,
            inputs,
            attributions,
            target=target,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
            output=output,
        )
        base = broadcast_baseline(baseline, setup.inputs)
        n = setup.inputs.shape[0]

        def make_rows(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            return base[start:stop], torch.arange(start, stop, device=base.device)

        base_scores = score_rows(setup, make_rows, n, batch_size=None)
    total = flat_features(setup.attributions).sum(dim=1)
    return total - (setup.scores - base_scores)
