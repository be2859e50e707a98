"""Figures for choosing a threshold: a clipping bound, a pruning amount.

matplotlib is imported lazily; every function takes ``ax=None`` and returns the Axes.

Example:
    >>> from pellucid.clipping.sweep import sweep_clip_bounds
    >>> ax = clip_bound_sweep(sweep_clip_bounds([1.0, 2.0, 3.0, 50.0]))
    >>> ax.get_ylabel()
    'global gradient norm'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["clip_bound_sweep", "pruning_sweep"]


def _axes(ax: Any, size: tuple[float, float] = (6.4, 3.8)) -> Any:
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=size, layout="constrained")
    return ax


def clip_bound_sweep(sweep: Any, *, ax: Any = None, log: bool = True) -> Any:
    """The global gradient norm per step, with each candidate bound and what it clips.

    Each candidate is a horizontal line labelled with its percentile, its value and the
    fraction of steps it would have clipped; the suggested bound is drawn solid, the others
    dashed; non-finite steps are marked with x at the top.

    Args:
        sweep: a :class:`~pellucid.clipping.ClipSweep` (from ``sweep_clip_bounds``).
        ax: matplotlib Axes (a new figure when None).
        log: logarithmic y axis.

    Raises:
        TypeError: `sweep` is not a ClipSweep.
    """
    if not all(hasattr(sweep, a) for a in ("norms", "bounds", "clipped_fraction", "steps")):
        raise TypeError(
            "`sweep` must be a ClipSweep from pellucid.clipping.sweep_clip_bounds; "
            f"got {type(sweep).__name__}."
        )
    import matplotlib

    ax = _axes(ax)
    norms = sweep.norms.tolist()
    finite = [v for v in norms if math.isfinite(v)]
    ax.plot(sweep.steps, [v if math.isfinite(v) else math.nan for v in norms],
            color="0.35", lw=0.9, label="global norm")  # fmt: skip
    bad = [s for s, v in zip(sweep.steps, norms, strict=True) if not math.isfinite(v)]
    if bad:
        ax.scatter(bad, [max(finite, default=1.0)] * len(bad), marker="x", color="crimson",
                   s=14, label=f"non-finite ({len(bad)})")  # fmt: skip
    cmap = matplotlib.colormaps["plasma"]
    count = max(len(sweep.bounds) - 1, 1)
    levels = sweep.percentiles.tolist()
    for i, (bound, frac) in enumerate(
        zip(sweep.bounds.tolist(), sweep.clipped_fraction.tolist(), strict=True)
    ):
        name = f"p{levels[i]:g} " if math.isfinite(levels[i]) else ""
        chosen = math.isclose(bound, sweep.suggested, rel_tol=1e-12)
        ax.axhline(bound, color=cmap(0.1 + 0.75 * i / count), lw=1.6 if chosen else 1.0,
                   ls="-" if chosen else "--",
                   label=f"{name}{bound:.3g}: clips {100 * frac:.0f}%")  # fmt: skip
    if not any(math.isclose(b, sweep.suggested, rel_tol=1e-12) for b in sweep.bounds.tolist()):
        ax.axhline(sweep.suggested, color="black", lw=1.6, label=f"suggested {sweep.suggested:.3g}")
    if log and finite and min(finite) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("global gradient norm")
    ax.set_title(f"Clipping bound sweep (suggested max_norm = {sweep.suggested:.3g})")
    ax.legend(fontsize=7, loc="best")
    return ax


def pruning_sweep(
    sweeps: Any, *, ax: Any = None, label: str | None = None, x: str = "sparsity"
) -> Any:
    """A metric against sparsity, one line per sweep, with the dense tolerance band.

    The largest amount within the tolerance of the dense score is ringed, the knee marked
    with a triangle, and collapsed copies (a layer with no weight left, or dead predictions)
    with a red x.

    Args:
        sweeps: a :class:`~pellucid.pruning.PruningSweep` or ``{label: sweep}`` (e.g.
            unstructured and structured).
        ax: matplotlib Axes (a new figure when None).
        label: the line's label for a single sweep (default: its kind).
        x: ``"sparsity"`` (measured) or ``"amount"`` (requested) on the x axis.

    Raises:
        TypeError: `sweeps` is not a PruningSweep or a dict of them.
        ValueError: `x` is neither "sparsity" nor "amount".
    """
    items = dict(sweeps) if isinstance(sweeps, Mapping) else {label or "": sweeps}
    if not items or not all(hasattr(s, "scores") and hasattr(s, "best_amount")
                            for s in items.values()):  # fmt: skip
        raise TypeError(
            "`sweeps` must be a PruningSweep from pellucid.pruning.sweep_pruning or a dict "
            f"of them; got {type(sweeps).__name__}."
        )
    if x not in ("sparsity", "amount"):
        raise ValueError(f'`x` must be "sparsity" or "amount"; got {x!r}.')
    ax = _axes(ax)
    first = next(iter(items.values()))
    low, high = first.dense - first.tolerance, first.dense + first.tolerance
    ax.axhspan(low, high, color="0.9", label=f"dense ± {first.tolerance:g}")
    for name, sweep in items.items():
        xs = list(sweep.sparsity if x == "sparsity" else sweep.amounts)
        line = ax.plot(xs, sweep.scores, marker="o", ms=3.5, lw=1.5,
                       label=f"{name or sweep.kind}: ≤{sweep.best_amount:g} within tolerance")  # fmt: skip
        color = line[0].get_color()
        best = sweep.amounts.index(sweep.best_amount)
        ax.scatter([xs[best]], [sweep.scores[best]], s=90, facecolors="none", edgecolors=color)
        knee = sweep.amounts.index(sweep.knee)
        ax.scatter([xs[knee]], [sweep.scores[knee]], marker="v", s=40, color=color)
        reasons = sweep.dead or [None] * len(sweep.collapsed)
        dead = [
            i
            for i, (layers, reason) in enumerate(zip(sweep.collapsed, reasons, strict=True))
            if layers or reason
        ]
        if dead:
            ax.scatter([xs[i] for i in dead], [sweep.scores[i] for i in dead], marker="x",
                       s=50, color="crimson")  # fmt: skip
    ax.set_xlabel("measured sparsity" if x == "sparsity" else "pruning amount")
    ax.set_ylabel("score")
    ax.set_title("Score vs pruning (○ largest within tolerance, ▽ knee, x collapsed)")
    ax.legend(fontsize=7, loc="best")
    return ax
