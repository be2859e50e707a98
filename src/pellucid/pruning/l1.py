"""A plain L1 weight penalty as a training callback: drive weights to zero, then prune.

``fit(model, data, callbacks=[L1Penalty(1e-4)])`` adds ``strength * sum |w|`` over the
Linear and convolution weights to the loss (their ``weight_orig`` when pruned), beside
:class:`~pellucid.pruning.GroupLasso` (whole units) and :class:`~pellucid.pruning.BNScaleL1`
(BatchNorm scales). The penalty's subgradient pulls every weight towards zero by
``lr * strength`` per step, so weights whose loss gradient is smaller than ``strength``
settle near zero and magnitude pruning then removes them at little cost.
"""

from __future__ import annotations

import torch

from pellucid._validation import check_float
from pellucid.pruning.importance import prunable_weights
from pellucid.training import Callback, TrainState

__all__ = ["L1Penalty"]


class L1Penalty(Callback):
    """L1 weight penalty: ``strength * sum |w|`` over Linear/conv weights (or ``layers``).

    Args:
        strength: the multiplier (try 1e-5 to 1e-3 with Adam; 0 turns it off).
        layers: module names (default: every Linear and convolution).

    Raises:
        TypeError: `strength` is not a real number.
        ValueError: `strength` is negative.

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = net.weight.copy_(torch.tensor([[1.0, -2.0]]))
        >>> L1Penalty(0.5).extra_loss(TrainState(net, None)).item()
        1.5
    """

    def __init__(self, strength: float = 1e-4, *, layers: list[str] | None = None) -> None:
        self.strength = check_float("strength", strength, min_value=0.0)
        self.layers = None if layers is None else list(layers)

    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        """The penalty on the current weights (None when ``strength`` is 0).

        Raises:
            ValueError: a name in `layers` is not a Linear or convolution module of the model.
        """
        modules = prunable_weights(state.model)
        names = list(modules) if self.layers is None else self.layers
        terms = []
        for name in names:
            if name not in modules:
                raise ValueError(f"`layers` must name Linear or convolution modules; got {name!r}.")
            module = modules[name]
            terms.append(getattr(module, "weight_orig", module.weight).abs().sum())
        return self.strength * torch.stack(terms).sum() if terms and self.strength else None
