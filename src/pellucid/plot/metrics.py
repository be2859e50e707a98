"""Figures for explanation quality: deletion/insertion curves, the randomization check,
the surrogate tree, and a metric against sparsity with confidence bands.

matplotlib is imported lazily; every function takes ``ax=None`` and returns the Axes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["metric_vs_sparsity", "perturbation_curves", "randomization_curves", "surrogate_tree"]


def _axes(ax: Any, size: tuple[float, float] = (6.0, 3.6)) -> Any:
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=size)
    return ax


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def perturbation_curves(curves: Any, *, ax: Any = None, examples: bool = True) -> Any:
    """Draw deletion/insertion curves: the mean per method, faint per-example lines.

    Args:
        curves: a :class:`~pellucid.metrics.PerturbationCurve` or ``{label: curve}``.
        ax: matplotlib Axes (a new figure when None).
        examples: also draw every example's curve, faintly (single curve only).

    Raises:
        TypeError: `curves` is not a PerturbationCurve or a dict of them.

    Example:
        >>> import torch
        >>> from pellucid.metrics import deletion_curve
        >>> net = torch.nn.Linear(4, 1)
        >>> c = deletion_curve(net, torch.ones(3, 4), torch.rand(3, 4))
        >>> perturbation_curves({"random": c}).get_xlabel()
        'fraction of features removed'
    """
    items = dict(curves) if isinstance(curves, Mapping) else {"": curves}
    if not items or not all(hasattr(c, "scores") and hasattr(c, "auc") for c in items.values()):
        raise TypeError("`curves` must be a PerturbationCurve or a dict of them.")
    ax = _axes(ax)
    kinds = {c.kind for c in items.values()}
    for label, curve in items.items():
        x = curve.fractions.detach().cpu().numpy()
        scores = curve.scores.detach().cpu().double()
        if examples and len(items) == 1:
            for row in scores.numpy():
                ax.plot(x, row, color="0.7", lw=0.6, alpha=0.5)
        auc = float(curve.auc.double().nanmean())
        name = f"{label} (AUC {auc:.3g})" if label else f"mean (AUC {auc:.3g})"
        ax.plot(x, scores.nanmean(dim=0).numpy(), lw=2, label=name)
    verb = (
        "removed" if kinds == {"deletion"} else "inserted" if kinds == {"insertion"} else "changed"
    )
    ax.set_xlabel(f"fraction of features {verb}")
    ax.set_ylabel("target score")
    ax.set_title(" / ".join(sorted(kinds)) + " curve")
    ax.legend(fontsize=8)
    return ax


def randomization_curves(checks: Any, *, ax: Any = None) -> Any:
    """Draw the cascading randomization check: agreement with the original explanation
    (median and interquartile band) as layers are randomized from the top.

    Args:
        checks: a :class:`~pellucid.metrics.RandomizationCheck` or a list of them.

    Raises:
        TypeError: `checks` is not a RandomizationCheck or a list of them.

    Example:
        >>> import torch
        >>> from pellucid.metrics import model_randomization_check
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> r = model_randomization_check(net, torch.randn(5, 4), "saliency")
        >>> randomization_curves(r).get_ylabel()
        'spearman with original'
    """
    items = list(checks) if isinstance(checks, Sequence) else [checks]
    if not items or not all(hasattr(c, "correlations") for c in items):
        raise TypeError("`checks` must be a RandomizationCheck or a list of them.")
    ax = _axes(ax)
    for check in items:
        corr = check.correlations.detach().cpu().double()
        steps = list(range(1, corr.shape[0] + 1))
        median = corr.nanquantile(0.5, dim=1).numpy()
        low, high = corr.nanquantile(0.25, dim=1).numpy(), corr.nanquantile(0.75, dim=1).numpy()
        (line,) = ax.plot([0, *steps], [1.0, *median], marker="o", label=check.method)
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    first = items[0]
    ax.axhline(first.threshold, color="crimson", ls="--", lw=1, label="threshold")
    ax.set_xticks(range(len(first.layers) + 1))
    ax.set_xticklabels(["none", *first.layers], rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("randomized up to layer (output first)")
    ax.set_ylabel(f"{first.measure} with original")
    ax.set_ylim(min(-0.2, ax.get_ylim()[0]), 1.05)
    ax.legend(fontsize=8)
    return ax


def surrogate_tree(surrogate: Any, *, ax: Any = None, fontsize: int = 7) -> Any:
    """Draw a fitted tree :class:`~pellucid.inspection.GlobalSurrogate` with feature names.

    Raises:
        TypeError: `surrogate` is not a fitted tree GlobalSurrogate.

    Example:
        >>> import torch
        >>> from pellucid.inspection import GlobalSurrogate
        >>> s = GlobalSurrogate(torch.nn.Linear(3, 2), max_depth=2).fit(torch.randn(60, 3))
        >>> surrogate_tree(s).get_title().startswith("surrogate tree")
        True
    """
    if getattr(surrogate, "kind", None) != "tree" or not hasattr(surrogate, "surrogate_"):
        raise TypeError("`surrogate` must be a fitted GlobalSurrogate with kind='tree'.")
    from sklearn.tree import plot_tree

    ax = _axes(ax, (9.0, 5.0))
    class_names = None
    if surrogate.task_ == "classification":
        names = surrogate.class_names
        class_names = [
            str(names[int(c)]) if names is not None and int(c) < len(names) else str(int(c))
            for c in surrogate.classes_
        ]
    plot_tree(
        surrogate.surrogate_,
        feature_names=surrogate.feature_names_,
        class_names=class_names,
        filled=True,
        impurity=False,
        fontsize=fontsize,
        ax=ax,
    )
    ax.set_title(f"surrogate tree (fidelity {surrogate.fidelity_:.2f} on held-out rows)")
    return ax


def metric_vs_sparsity(
    series: Mapping[str, Any],
    *,
    ax: Any = None,
    ylabel: str = "metric",
    title: str | None = None,
) -> Any:
    """Draw one line per method: a metric's mean against sparsity, with its CI band.

    Args:
        series: ``{label: rows}``, each row ``(sparsity, mean, ci_half_width)`` (None is
            read as NaN, as JSON stores it).
        ylabel: the metric's name.

    Raises:
        TypeError: `series` is not a dict {label: [(sparsity, mean, ci), ...]}.

    Example:
        >>> ax = metric_vs_sparsity({"saliency": [(0.0, 0.5, 0.1), (0.5, 0.4, 0.1)]})
        >>> ax.get_xlabel()
        'sparsity (fraction of weights removed)'
    """
    if not isinstance(series, Mapping):
        raise TypeError("`series` must be a dict {label: [(sparsity, mean, ci), ...]}.")
    ax = _axes(ax)
    for label, rows in series.items():
        points = sorted((_float(s), _float(m), _float(c)) for s, m, c in rows)
        if not points:
            continue
        xs = [p[0] for p in points]
        means = [p[1] for p in points]
        half = [0.0 if math.isnan(p[2]) else p[2] for p in points]
        (line,) = ax.plot(xs, means, marker="o", label=str(label))
        ax.fill_between(
            xs,
            [m - h for m, h in zip(means, half, strict=True)],
            [m + h for m, h in zip(means, half, strict=True)],
            color=line.get_color(),
            alpha=0.15,
        )
    ax.set_xlabel("sparsity (fraction of weights removed)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return ax
