"""Warning categories: every pellucid warning is a ``PellucidWarning``."""

from __future__ import annotations

__all__ = ["PellucidDeprecationWarning", "PellucidWarning", "TrainingModeWarning"]


class PellucidWarning(UserWarning):
    """Base class of every warning pellucid emits."""


class TrainingModeWarning(PellucidWarning):
    """The model is in training mode and has layers whose output depends on the mode."""


class PellucidDeprecationWarning(PellucidWarning, FutureWarning):
    """A keyword or function was renamed; the old name works for one more release.

    A ``FutureWarning`` too, so that it is shown to end users by default.
    """
