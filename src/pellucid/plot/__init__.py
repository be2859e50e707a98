"""Plots (matplotlib, imported only when drawing): every function takes ``ax=None`` and
returns the Axes it drew on."""

from __future__ import annotations

from pellucid.plot.attention import attention_heatmap
from pellucid.plot.attributions import attribution_bars, attribution_summary, image_attribution
from pellucid.plot.gradients import gradient_flow
from pellucid.plot.importance import importance_bars
from pellucid.plot.metrics import (
    metric_vs_sparsity,
    perturbation_curves,
    randomization_curves,
    surrogate_tree,
)
from pellucid.plot.probes import (
    activation_curves,
    activation_distributions,
    gradient_heatmap,
    weight_heatmap,
)
from pellucid.plot.sweeps import clip_bound_sweep, pruning_sweep
from pellucid.plot.text import token_attribution

__all__ = [
    "activation_curves",
    "activation_distributions",
    "attention_heatmap",
    "attribution_bars",
    "attribution_summary",
    "clip_bound_sweep",
    "gradient_flow",
    "gradient_heatmap",
    "image_attribution",
    "importance_bars",
    "metric_vs_sparsity",
    "perturbation_curves",
    "pruning_sweep",
    "randomization_curves",
    "surrogate_tree",
    "token_attribution",
    "weight_heatmap",
]
