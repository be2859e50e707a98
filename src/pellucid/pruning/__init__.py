"""Pruning that really makes models smaller and faster.

Unstructured masks in torch's format (:func:`prune_magnitude_`), structured channel
pruning that physically shrinks layers (:func:`plan_channel_pruning`), schedules and
regularizers as training callbacks, honest measurement and round-trip save/load.
"""

from __future__ import annotations

from pellucid.pruning import importance, io, measure
from pellucid.pruning.collapse import CollapsedModelWarning, detect_collapse, prediction_collapse
from pellucid.pruning.distill import Distillation, distillation_loss
from pellucid.pruning.finetune import PruneResult, prune_and_finetune
from pellucid.pruning.group_lasso import GroupLasso, unit_norms
from pellucid.pruning.l1 import L1Penalty
from pellucid.pruning.schedules import (
    BNScaleL1,
    ChannelPruning,
    MagnitudePruning,
    PolynomialPruning,
    ReapplyMasks,
    polynomial_sparsity,
    reapply_masks_,
)
from pellucid.pruning.structured import ChannelGroup, ChannelPruningPlan, plan_channel_pruning
from pellucid.pruning.sweep import PruningSweep, sweep_pruning
from pellucid.pruning.unstructured import (
    LayerCollapseWarning,
    SparsityReport,
    apply_masks_,
    detach_pruned_,
    magnitude_masks,
    make_permanent_,
    prune_magnitude_,
    prune_threshold_,
    sparsity,
    threshold_masks,
)

__all__ = [
    "BNScaleL1",
    "ChannelGroup",
    "ChannelPruning",
    "CollapsedModelWarning",
    "Distillation",
    "GroupLasso",
    "L1Penalty",
    "LayerCollapseWarning",
    "MagnitudePruning",
    "PolynomialPruning",
    "PruneResult",
    "PruningSweep",
    "ReapplyMasks",
    "detect_collapse",
    "distillation_loss",
    "io",
    "measure",
    "polynomial_sparsity",
    "prediction_collapse",
    "prune_and_finetune",
    "reapply_masks_",
    "ChannelPruningPlan",
    "SparsityReport",
    "apply_masks_",
    "detach_pruned_",
    "importance",
    "magnitude_masks",
    "make_permanent_",
    "plan_channel_pruning",
    "prune_magnitude_",
    "prune_threshold_",
    "sparsity",
    "sweep_pruning",
    "threshold_masks",
    "unit_norms",
]
