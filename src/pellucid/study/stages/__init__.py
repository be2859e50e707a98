"""The study's stages, in the order they run. Adding a stage: one module, one line here."""

from __future__ import annotations

from pellucid.study.stages.base import Stage
from pellucid.study.stages.training import TrainingStage

#: Every known stage, in run order.
STAGES: dict[str, Stage] = {stage.name: stage for stage in (TrainingStage(),)}

__all__ = ["STAGES", "Stage"]
