"""Report helpers of the "interpretability" stage: table columns, cells and the figure."""

from __future__ import annotations

import math
from typing import Any

import torch

from pellucid.report.html import figure_png

__all__ = ["TABLE", "num", "plus_minus", "randomization_png"]


#: Report table columns: metric -> heading.
TABLE = {
    "faithfulness": "faithfulness ↑",
    "deletion_auc": "deletion AUC ↓",
    "sparseness": "sparseness",
    "max_sensitivity": "max-sensitivity ↓",
    "agreement": "agreement w/ dense",
}


def num(value: Any) -> float:
    return math.nan if value is None else float(value)


def plus_minus(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3g}" if math.isnan(half) else f"{mean:.3g} ± {half:.2g}"


def randomization_png(key: str, entry: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pellucid.metrics import RandomizationCheck
    from pellucid.plot.metrics import randomization_curves

    checks = [  # one "example" per seed: the band spans the seeds' medians
        RandomizationCheck(
            method=method,
            layers=tuple(runs[0]["layers"]),
            correlations=torch.tensor(
                [[num(v) for v in r["median"]] for r in runs], dtype=torch.float64
            ).T,
            threshold=0.5,
            measure="spearman",
        )
        for method, runs in entry["randomization"].items()
    ]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    randomization_curves(checks, ax=ax)
    ax.set_title(key)
    fig.tight_layout()
    return figure_png(fig)
