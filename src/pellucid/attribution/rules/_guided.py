"""Guided backpropagation's and deconvolution's rules: modified ReLU backward passes.

Guided backprop (Springenberg et al. 2015) passes only positive gradients where the input
was positive; deconvolution (Zeiler and Fergus 2014) passes positive gradients whatever the
input. Linear layers, pooling and eval-mode batch norm keep their ordinary gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pellucid.attribution.rules._engine import (
    MAX_POOL_OPS,
    RELU_OPS,
    Handler,
    Rule,
    linear_handlers,
    unchanged,
)

__all__ = ["DeconvReLU", "GuidedReLU", "relu_handlers"]


class GuidedReLU(Rule):
    """Backward: ``relu(grad) * (x > 0)``."""

    label = "guided"

    def forward(
        self, op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
    ) -> tuple[torch.Tensor, Any]:
        return op(x), x > 0

    def backward(self, op: Any, state: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0) * state


class DeconvReLU(Rule):
    """Backward: ``relu(grad)`` (the forward mask is ignored)."""

    label = "deconvolution"

    def backward(self, op: Any, state: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


def relu_handlers(rule: Rule) -> dict[str, Handler]:
    """``rule`` on every ReLU; linear ops, pooling and eval-mode batch norm unchanged."""
    handlers = linear_handlers()
    handlers.update({name: unchanged for name in MAX_POOL_OPS})
    handlers.update({name: (lambda *a, _rule=rule: _rule) for name in RELU_OPS})
    return handlers
