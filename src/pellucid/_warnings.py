"""Warning categories: every pellucid warning is a ``PellucidWarning``."""

from __future__ import annotations

__all__ = ["PellucidWarning", "TrainingModeWarning"]


class PellucidWarning(UserWarning):
    """Base class of every warning pellucid emits."""


class TrainingModeWarning(PellucidWarning):
    """The model is in training mode and has layers whose output depends on the mode."""
