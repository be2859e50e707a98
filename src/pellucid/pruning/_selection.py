"""Choosing which weights to drop: amounts, the per-layer floor, smallest-score selection."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from pellucid._validation import check_float

__all__ = ["check_amount", "check_min_keep", "drop_smallest", "n_to_prune", "protect"]


def _count_or_fraction(name: str, value: Any, fraction: str, **bounds: Any) -> float | int:
    """``value`` as a non-negative integer count, or as a fraction checked against ``bounds``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be {fraction}; got {value!r} ({type(value).__name__}).")
    if isinstance(value, numbers.Integral):
        if value < 0:
            raise ValueError(f"`{name}` must be a non-negative integer count; got {value}.")
        return int(value)
    return check_float(name, value, min_value=0.0, max_value=1.0, **bounds)


def check_amount(amount: Any) -> float | int:
    return _count_or_fraction(
        "amount",
        amount,
        "a fraction in [0, 1) or a non-negative integer count",
        max_inclusive=False,
        hint=" Pass a fraction such as 0.9, or an integer count of weights.",
    )


def n_to_prune(amount: float | int, size: int, where: str) -> int:
    n = amount if isinstance(amount, int) else round(amount * size)
    if n > size:
        raise ValueError(
            f"`amount` must be at most the number of unpruned weights; got {amount} for "
            f"{where}, which has {size}."
        )
    return n


def check_min_keep(min_keep: Any) -> float | int:
    return _count_or_fraction(
        "min_keep",
        min_keep,
        "a non-negative integer count or a fraction in (0, 1]",
        min_inclusive=False,
    )


def protect(
    scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], min_keep: float | int
) -> dict[str, torch.Tensor]:
    """Scores with each layer's ``min_keep`` best unpruned weights raised to +inf."""
    if not min_keep:
        return scores
    protected = {}
    for name, score in scores.items():
        floor = min_keep if isinstance(min_keep, int) else math.ceil(min_keep * score.numel())
        alive = (masks[name] == 1).reshape(-1)
        keep = min(floor, int(alive.sum()))
        flat = score.reshape(-1).clone()
        if keep:
            ranked = torch.where(alive, flat, torch.full_like(flat, -math.inf))
            flat[torch.topk(ranked, k=keep).indices] = math.inf
        protected[name] = flat.view_as(score)
    return protected


def drop_smallest(mask: torch.Tensor, score: torch.Tensor, k: int) -> torch.Tensor:
    """``mask`` with its ``k`` unpruned entries of smallest finite score set to 0."""
    new = mask.clone(memory_format=torch.contiguous_format)
    alive = new == 1
    remaining = score[alive]
    k = min(k, int(torch.isfinite(remaining).sum()))  # +inf: protected by `min_keep`
    if k:
        drop = torch.topk(remaining.reshape(-1), k=k, largest=False).indices
        partial = torch.ones_like(remaining)
        partial.view(-1)[drop] = 0
        new[alive] = partial.to(new.dtype)
    return new
