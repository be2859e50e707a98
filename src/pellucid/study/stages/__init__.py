"""The study's stages, in the order they run. Adding a stage: one module, one line here."""

from __future__ import annotations

from pellucid.study.stages.base import Stage
from pellucid.study.stages.clipping import ClippingStage
from pellucid.study.stages.explanations import ExplanationsStage
from pellucid.study.stages.findings import FindingsStage
from pellucid.study.stages.interpretability import InterpretabilityStage
from pellucid.study.stages.model_agnostic import ModelAgnosticStage
from pellucid.study.stages.pruning import PruningStage
from pellucid.study.stages.training import TrainingStage

#: Every known stage, in run order.
STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        TrainingStage(),
        ClippingStage(),
        ExplanationsStage(),
        ModelAgnosticStage(),
        PruningStage(),
        InterpretabilityStage(),
        FindingsStage(),
    )
}

__all__ = ["STAGES", "Stage"]
