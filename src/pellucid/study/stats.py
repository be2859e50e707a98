"""Small statistics for the report: means with t-based confidence intervals, paired tests."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["compare", "mean_ci", "mean_std"]


def _t_quantile(df: int, level: float = 0.95) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaNs are kept (they propagate)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its ``level`` t-interval (NaN half-width for one value)."""
    mean, std = mean_std(values)
    n = len(values)
    if n < 2:
        return mean, math.nan
    return mean, _t_quantile(n - 1, level) * std / math.sqrt(n)


def compare(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float | bool]:
    """Paired comparison of ``b - a`` (same seeds): mean difference, CI, significance.

    With fewer than two pairs no test is possible and ``significant`` is False.
    """
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    mean, half = mean_ci(diffs, level)
    significant = bool(len(diffs) >= 2 and not math.isnan(half) and abs(mean) > half)
    if len(diffs) >= 2 and all(d == 0 for d in diffs):
        significant = False
    return {"diff": mean, "ci": half, "significant": significant, "n": float(len(diffs))}
