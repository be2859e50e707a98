"""Choosing a clipping bound from a recorded gradient-norm history.

:func:`sweep_clip_bounds` reads the per-step gradient norms a
:class:`~pellucid.monitoring.GradientMonitor` recorded (or its ``to_dict()``, or a plain
sequence of norms), forms the global norm of every step (the norm ``clip_grad_norm_``
compares with ``max_norm``: the square root of the sum of the layers' squared norms), and
for each candidate bound reports the fraction of steps it would have clipped and the mean
factor it would have scaled gradients by. Candidates are percentiles of the finite norms
unless given; the suggestion is the bound at ``suggest`` (default the 90th percentile:
the largest tenth of the steps are clipped, the rest untouched). Non-finite steps are
counted apart: no bound clips them, that is the non-finite policy's job.

The history is one run's; a bound chosen from it is a starting point for the next run of
the same setup (the AutoClip idea, frozen), not a guarantee.

Example:
    >>> sweep = sweep_clip_bounds([1.0, 2.0, 3.0, 4.0, 100.0], percentiles=(50, 75))
    >>> sweep.bounds.tolist(), sweep.clipped_fraction.tolist()
    ([3.0, 4.0], [0.4, 0.2])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pellucid._validation import check_float, check_int, describe_value

__all__ = ["ClipSweep", "sweep_clip_bounds"]


@dataclass(frozen=True)
class ClipSweep:
    """Candidate clipping bounds and what each would have done to a recorded run.

    Attributes:
        steps: the recorded step indices (after ``start``).
        norms: the global gradient norm per step, float64 (NaN/inf where non-finite).
        bounds: candidate ``max_norm`` values, increasing.
        percentiles: the percentile each bound came from (NaN for user-given bounds).
        clipped_fraction: per bound, the fraction of finite steps with a norm above it.
        mean_scale: per bound, the mean of ``min(1, bound / norm)`` over finite steps.
        suggested: the bound at the ``suggest`` percentile.
        nonfinite_steps: steps whose norm was NaN or inf (no bound clips them).
        layers: the layers summed into the global norm (None for a plain sequence).
    """

    steps: list[int]
    norms: torch.Tensor
    bounds: torch.Tensor
    percentiles: torch.Tensor
    clipped_fraction: torch.Tensor
    mean_scale: torch.Tensor
    suggested: float
    nonfinite_steps: list[int]
    layers: list[str] | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (norms as lists; non-finite norms as None)."""
        return {
            "steps": self.steps,
            "norms": [v if math.isfinite(v) else None for v in self.norms.tolist()],
            "bounds": self.bounds.tolist(),
            "percentiles": [v if math.isfinite(v) else None for v in self.percentiles.tolist()],
            "clipped_fraction": self.clipped_fraction.tolist(),
            "mean_scale": self.mean_scale.tolist(),
            "suggested": self.suggested,
            "nonfinite_steps": self.nonfinite_steps,
            "layers": self.layers,
        }

    def plot(self, *, ax: Any = None) -> Any:
        """The history with the candidate bounds (see :func:`pellucid.plot.clip_bound_sweep`)."""
        from pellucid.plot.sweeps import clip_bound_sweep

        return clip_bound_sweep(self, ax=ax)


def _history(
    source: Any, layers: Sequence[str] | None
) -> tuple[list[int], torch.Tensor, list[str] | None]:
    """(steps, global norm per step, layers used) from a monitor, its dict, or norms."""
    if hasattr(source, "layer_norms") and callable(source.layer_norms):
        per_layer, steps = source.layer_norms(), list(source.steps)
    elif isinstance(source, Mapping) and "layer_norms" in source:
        per_layer = dict(source["layer_norms"])
        steps = list(source.get("steps") or range(len(next(iter(per_layer.values()), []))))
    elif isinstance(source, torch.Tensor | Sequence) and not isinstance(source, str):
        if layers is not None:
            raise ValueError("`layers` needs a GradientMonitor (or its to_dict()) as `source`.")
        norms = torch.as_tensor(source, dtype=torch.float64).detach().cpu()
        if norms.ndim != 1:
            raise ValueError(f"`source` must be a 1-D sequence of norms; got shape {norms.shape}.")
        return list(range(norms.numel())), norms, None
    else:
        raise TypeError(
            "`source` must be a GradientMonitor, its to_dict(), or a sequence of gradient "
            f"norms; got {describe_value(source)}."
        )
    names = list(per_layer) if layers is None else list(layers)
    unknown = [n for n in names if n not in per_layer]
    if unknown or not names:
        raise ValueError(
            f"`layers` must name monitored layers; got {unknown or names}. "
            f"Known: {', '.join(list(per_layer)[:12])}."
        )
    columns = [
        torch.tensor([math.nan if v is None else v for v in per_layer[n]], dtype=torch.float64)
        for n in names
    ]
    return steps, torch.stack(columns, dim=1).pow(2).sum(dim=1).sqrt(), names


def sweep_clip_bounds(
    source: Any,
    *,
    percentiles: Sequence[float] = (50.0, 75.0, 90.0, 95.0, 99.0),
    bounds: Sequence[float] | None = None,
    suggest: float = 90.0,
    layers: Sequence[str] | None = None,
    start: int = 0,
) -> ClipSweep:
    """Candidate ``max_norm`` bounds from a gradient-norm history, and what each clips.

    Args:
        source: a :class:`~pellucid.monitoring.GradientMonitor` after ``fit``, its
            ``to_dict()``, or a 1-D sequence/tensor of global gradient norms per step.
        percentiles: percentiles (0-100) of the finite norms used as candidates.
        bounds: explicit candidate bounds instead of percentiles.
        suggest: the percentile of the suggested bound.
        layers: sum only these layers into the global norm (default: every layer).
        start: ignore the first ``start`` recorded steps (a warm-up).

    Returns:
        A :class:`ClipSweep`; ``.plot()`` draws it.

    Raises:
        TypeError: `source` is none of the accepted kinds.
        ValueError: a percentile outside [0, 100], a bound <= 0, `layers` naming an unknown
            layer, or no finite norm after `start`.
    """
    suggest = check_float("suggest", suggest, min_value=0.0, max_value=100.0)
    start = check_int("start", start, min_value=0)
    steps, norms, names = _history(source, layers)
    steps, norms = steps[start:], norms[start:]
    finite = norms[torch.isfinite(norms)]
    if finite.numel() == 0:
        raise ValueError(
            f"`source` must hold at least one finite gradient norm after `start`={start}; "
            f"got {norms.numel()} step(s), none finite. Train with the monitor attached first."
        )
    if bounds is None:
        levels = (
            torch.tensor(
                [
                    check_float("percentiles", p, min_value=0.0, max_value=100.0)
                    for p in percentiles
                ],
                dtype=torch.float64,
            )
            .sort()
            .values
        )
        candidates = torch.quantile(finite, levels / 100.0)
    else:
        values = [check_float("bounds", b, min_value=0.0, min_inclusive=False) for b in bounds]
        candidates = torch.tensor(sorted(values), dtype=torch.float64)
        levels = torch.full_like(candidates, math.nan)
    clipped = (finite[None, :] > candidates[:, None]).double().mean(dim=1)
    scale = (candidates[:, None] / finite.clamp_min(1e-300)[None, :]).clamp(max=1.0).mean(dim=1)
    return ClipSweep(
        steps=steps,
        norms=norms,
        bounds=candidates,
        percentiles=levels,
        clipped_fraction=clipped,
        mean_scale=scale,
        suggested=float(torch.quantile(finite, suggest / 100.0)),
        nonfinite_steps=[
            s for s, v in zip(steps, norms.tolist(), strict=True) if not math.isfinite(v)
        ],
        layers=names,
    )
