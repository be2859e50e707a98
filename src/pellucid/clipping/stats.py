"""What every clipper returns: device tensors, read on the host only when asked.

Example:
    >>> import torch
    >>> s = ClipStats.unclipped(torch.tensor(0.5))
    >>> s.to_dict()["clipped"]
    False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ClipStats"]

_FIELDS = ("norm_before", "norm_after", "clip_coef", "threshold", "clipped", "nonfinite", "skipped")


@dataclass(frozen=True, repr=False)
class ClipStats:
    """The outcome of one clipping step.

    Every field is a 0-d tensor on the gradients' device, so returning it costs no
    host-device synchronisation; :meth:`to_dict` (or ``repr``) reads them all in one sync.

    Attributes:
        norm_before: total gradient norm before clipping (the clipper's ``norm_type``).
        norm_after: total gradient norm after clipping.
        clip_coef: ``norm_after / norm_before`` (1 when nothing changed).
        threshold: the bound used this step (``max_norm``, AutoClip's percentile, ZClip's
            adaptive threshold; NaN where a method has no single bound).
        clipped: whether any gradient was changed.
        nonfinite: whether a NaN/inf gradient entry was found (before any change).
        skipped: whether the step should be skipped (the ``"skip"`` policy).
    """

    norm_before: torch.Tensor
    norm_after: torch.Tensor
    clip_coef: torch.Tensor
    threshold: torch.Tensor
    clipped: torch.Tensor
    nonfinite: torch.Tensor
    skipped: torch.Tensor

    @classmethod
    def unclipped(cls, norm: torch.Tensor, *, nonfinite: torch.Tensor | None = None) -> ClipStats:
        """Stats of a step that changed nothing (norm before == after)."""
        false = torch.zeros((), dtype=torch.bool, device=norm.device)
        return cls(
            norm_before=norm,
            norm_after=norm,
            clip_coef=torch.ones((), dtype=norm.dtype, device=norm.device),
            threshold=torch.full((), float("nan"), dtype=norm.dtype, device=norm.device),
            clipped=false,
            nonfinite=false if nonfinite is None else nonfinite,
            skipped=false,
        )

    def replace(self, **changes: torch.Tensor) -> ClipStats:
        """A copy with some fields replaced."""
        values = {name: getattr(self, name) for name in _FIELDS}
        values.update(changes)
        return ClipStats(**values)

    def stacked(self) -> torch.Tensor:
        """All fields as one float64 vector on the device (in ``to_dict`` order)."""
        return torch.stack(
            [getattr(self, name).detach().to(torch.float64).reshape(()) for name in _FIELDS]
        )

    def to_dict(self) -> dict[str, Any]:
        """Read every field on the host (one synchronisation)."""
        return stats_row(self.stacked().tolist())

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.to_dict().items())
        return f"ClipStats({fields})"


def stats_row(values: list[float]) -> dict[str, Any]:
    """Turn one :meth:`ClipStats.stacked` row (as floats) into a named dict."""
    row: dict[str, Any] = dict(zip(_FIELDS, values, strict=True))
    for name in ("clipped", "nonfinite", "skipped"):
        row[name] = bool(row[name])
    return row
