"""Clipping inside :func:`pellucid.training.fit`: ``fit(model, data, clipper=GradientClipper(...))``.

The callback runs a transform on the model's gradients after ``backward`` and before the
optimizer step, applies the non-finite policy first (``"skip"`` makes the loop skip the
step), reuses the per-tensor norms a :class:`~pellucid.monitoring.GradientMonitor` already
computed this step, and keeps every step's :class:`ClipStats` on the device until
:meth:`GradientClipper.summary` reads them in one go.

Example:
    >>> import torch
    >>> from pellucid.models import MLP
    >>> from pellucid.training import fit
    >>> from pellucid.clipping import clip_by_global_norm
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> clipper = GradientClipper(clip_by_global_norm(0.1))
    >>> _ = fit(MLP(4, 2), (x, y), epochs=1, batch_size=16, clipper=clipper, progress=False)
    >>> clipper.summary()["steps"]
    4
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pellucid.clipping.guard import check_policy
from pellucid.clipping.stats import ClipStats, stats_row
from pellucid.clipping.transforms import Transform, _apply
from pellucid.training import Callback, TrainState

__all__ = ["GradientClipper"]

#: Where the monitor leaves this step's :class:`GradNorms` for the clipper to reuse.
NORMS_KEY = "grad_norms"
#: Where the clipper leaves this step's :class:`ClipStats`.
STATS_KEY = "clip_stats"


class GradientClipper(Callback):
    """A training-loop callback that clips with ``transform`` before every optimizer step.

    Args:
        transform: a transform (``clip_by_global_norm(1.0)``, ``adaptive_clip(0.01)``,
            ``AutoClip()``, ``ZClip()``, a ``chain(...)``), or None to only guard and record.
        nonfinite: ``"skip"`` (default: a step with NaN/inf gradients is not taken),
            ``"raise"``, ``"zero"`` or ``"propagate"``.
        parameters: clip only these parameters (default: all of the model's).

    Raises:
        TypeError: `transform` is not a gradient transform.
        ValueError: `nonfinite` is not a known policy.
    """

    def __init__(
        self,
        transform: Transform | None,
        *,
        nonfinite: str = "skip",
        parameters: Any = None,
    ) -> None:
        if transform is not None and not callable(transform):
            raise TypeError(
                f"`transform` must be a gradient transform or None; got "
                f"{type(transform).__name__}. Build one with clip_by_global_norm(1.0), ZClip(), ..."
            )
        self.transform = transform
        self.nonfinite = check_policy(nonfinite)
        self.parameters = None if parameters is None else list(parameters)
        self._rows: list[torch.Tensor] = []

    def _identity(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], norms: Any = None
    ) -> Any:
        from pellucid.clipping.transforms import TransformResult, _norms

        return TransformResult(list(grads), ClipStats.unclipped(_norms(grads, norms).total(2.0)))

    def on_train_begin(self, state: TrainState) -> None:
        self._rows = []

    def on_before_step(self, state: TrainState) -> bool | None:
        target = self.parameters if self.parameters is not None else state.model
        stats, skip = _apply(
            self.transform if self.transform is not None else self._identity,  # type: ignore[arg-type]
            target,
            nonfinite=self.nonfinite,
            norms=state.info.get(NORMS_KEY),
        )
        state.info[STATS_KEY] = stats
        self._rows.append(stats.stacked())
        if skip:
            return False
        return None

    def history(self) -> list[dict[str, Any]]:
        """Every step's stats as plain Python values (one host synchronisation)."""
        if not self._rows:
            return []
        return [stats_row(r) for r in torch.stack(self._rows).cpu().tolist()]

    def summary(self) -> dict[str, float]:
        """Steps, fraction clipped, non-finite and skipped steps, norm statistics."""
        rows = self.history()
        n = len(rows)
        finite = [r["norm_before"] for r in rows if math.isfinite(r["norm_before"])]
        finite.sort()
        return {
            "steps": n,
            "clipped_fraction": sum(r["clipped"] for r in rows) / n if n else math.nan,
            "nonfinite_steps": sum(r["nonfinite"] for r in rows),
            "skipped_steps": sum(r["skipped"] for r in rows),
            "median_norm_before": finite[len(finite) // 2] if finite else math.nan,
            "max_norm_before": finite[-1] if finite else math.nan,
        }
