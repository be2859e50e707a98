"""Complexity: how concentrated an explanation is (a few features, or all of them a little).

``sparseness`` is the Gini index of ``|attributions|`` (Chalasani et al. 2020): 0 for a
uniform attribution, ``1 - 1/d`` when one feature carries everything. ``complexity`` is the
entropy of the fractional contributions ``|a_i| / sum |a|`` (Bhatt et al. 2020): ``log d`` for
a uniform attribution, 0 for a single feature. Both are NaN for an all-zero attribution.
"""

from __future__ import annotations

from typing import Any

import torch

from pellucid.metrics._common import as_attributions, flat_features

__all__ = ["complexity", "sparseness"]


def sparseness(attributions: Any) -> torch.Tensor:
    """Gini index of ``|attributions|`` per example, in ``[0, 1)``; higher is sparser.

    Args:
        attributions: a batch-first tensor ``(N, ...)`` or an ``Explanation``.

    Example:
        >>> import torch
        >>> sparseness(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 5.0]]))
        tensor([0.0000, 0.7500])
    """
    attr, _ = as_attributions(attributions)
    a = flat_features(attr).abs().sort(dim=1).values
    d = a.shape[1]
    k = torch.arange(1, d + 1, device=a.device, dtype=a.dtype)
    total = a.sum(dim=1)
    gini = ((2 * k - d - 1) * a).sum(dim=1) / (d * total)
    return torch.where(total > 0, gini, torch.full_like(gini, float("nan")))


def complexity(attributions: Any) -> torch.Tensor:
    """Entropy (natural log) of the fractional contributions per example; lower is simpler.

    Args:
        attributions: a batch-first tensor ``(N, ...)`` or an ``Explanation``.

    Example:
        >>> import math, torch
        >>> c = complexity(torch.tensor([[2.0, -2.0, 2.0, 2.0], [0.0, 0.0, 3.0, 0.0]]))
        >>> torch.allclose(c, torch.tensor([math.log(4), 0.0]))
        True
    """
    attr, _ = as_attributions(attributions)
    a = flat_features(attr).abs()
    total = a.sum(dim=1, keepdim=True)
    p = a / total.clamp_min(torch.finfo(a.dtype).tiny)
    entropy = -torch.special.xlogy(p, p).sum(dim=1)
    return torch.where(total.squeeze(1) > 0, entropy, torch.full_like(entropy, float("nan")))
