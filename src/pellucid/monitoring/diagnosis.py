"""The diagnosis behind :meth:`pellucid.monitoring.GradientMonitor.diagnose`.

Pure functions of the monitor's host-side history (per-layer gradient norms per step, the
losses, layer sizes, dead-unit counts) that return :class:`Finding` objects: non-finite
gradients (and the first layer they reached), exploding gradients (growth or a spike over
the steps, or layers far above the output side), vanishing gradients (layers far below the
output side) and dead units.

Example:
    >>> import torch
    >>> norms = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    >>> diagnose_history(layers=["a", "b"], steps=[0, 1, 2, 3], norms=norms,
    ...                  losses=torch.ones(4), sizes=[4, 4], dead={}, ratio=100.0,
    ...                  growth=100.0)
    []
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["Finding", "diagnose_history"]


@dataclass(frozen=True)
class Finding:
    """One diagnosis: ``kind`` is ``nonfinite``, ``exploding``, ``vanishing`` or
    ``dead_units``; ``layers`` are the culprits (most affected first); ``value`` is the
    evidence (growth factor, ratio to the median layer, fraction of dead units)."""

    kind: str
    layers: tuple[str, ...]
    message: str
    step: int | None = None
    value: float = math.nan

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out


def _median(x: torch.Tensor) -> float:
    return float(x.median()) if x.numel() else math.nan


def _nonfinite(
    layers: list[str], steps: list[int], losses: torch.Tensor, norms: torch.Tensor
) -> Finding | None:
    bad = ~torch.isfinite(norms)
    rows = torch.nonzero(bad.any(dim=1)).flatten()
    if not rows.numel():
        return None
    r = int(rows[0])
    hit = [layers[j] for j in torch.nonzero(bad[r]).flatten().tolist()]
    if not math.isfinite(float(losses[r])) or len(hit) == len(layers):
        before = norms[:r][torch.isfinite(norms[:r]).all(dim=1)]
        lead = ""
        if before.shape[0] >= 2:
            growth = before[-1] / before[0].clamp_min(1e-30)
            j = int(torch.nan_to_num(growth, nan=-1.0).argmax())
            hit = [layers[j]] + [n for n in hit if n != layers[j]]
            lead = f" Before that, {layers[j]} grew fastest (x{float(growth[j]):.3g})."
        return Finding(
            "nonfinite",
            tuple(hit),
            f"The loss and every layer's gradient became non-finite at step {steps[r]}: the "
            f"forward pass overflowed.{lead} Clip the gradients (clip_by_global_norm) or lower "
            "the learning rate; use nonfinite='skip' to drop such steps.",
            steps[r],
        )
    origin = hit[-1]  # backward reaches the layer closest to the output first
    ordered = (origin, *[n for n in hit if n != origin])
    return Finding(
        "nonfinite",
        ordered,
        f"Gradients first became non-finite at step {steps[r]} in {origin} (the layer nearest "
        f"the output among the {len(hit)} affected: {', '.join(hit[:6])}). Look for an "
        "overflow or a log/division by zero there; clip or use nonfinite='skip'.",
        steps[r],
    )


def _growth(
    layers: list[str], steps: list[int], norms: torch.Tensor, growth: float, blew_up: bool
) -> Finding | None:
    finite_rows = torch.isfinite(norms).all(dim=1)
    good = norms[finite_rows]
    good_steps = [s for s, ok in zip(steps, finite_rows.tolist(), strict=True) if ok]
    if good.shape[0] < 4:
        return None
    w = max(1, good.shape[0] // 10)
    total = good.pow(2).sum(dim=1).sqrt()
    early = max(_median(total[:w]), 1e-30)
    late = _median(total[-w:]) / early
    peak_row = w + int(total[w:].argmax())
    peak = float(total[peak_row]) / early
    base = good[:w].median(dim=0).values.clamp_min(1e-30)
    fix = (
        f"Clip the global norm (e.g. clip_by_global_norm({early:.3g}), the early median) "
        "or lower the learning rate."
    )
    if late >= growth or (blew_up and late > math.sqrt(growth)):
        per_layer = good[-w:].median(dim=0).values / base
        when = (
            f"grew x{late:.3g} between steps {good_steps[0]}-{good_steps[w - 1]} and "
            f"{good_steps[-w]}-{good_steps[-1]}"
        )
        factor, step = late, good_steps[-1]
    elif peak >= growth:
        per_layer = good[peak_row] / base
        when = (
            f"spiked to x{peak:.3g} its early value (steps {good_steps[0]}-"
            f"{good_steps[w - 1]}) at step {good_steps[peak_row]}"
        )
        factor, step = peak, good_steps[peak_row]
    else:
        return None
    order = torch.argsort(per_layer, descending=True).tolist()[:3]
    top = ", ".join(f"{layers[j]} (x{float(per_layer[j]):.3g})" for j in order)
    return Finding(
        "exploding",
        tuple(layers[j] for j in order),
        f"The gradient norm {when}; fastest-growing layers: {top}. {fix}",
        step,
        factor,
    )


def _depth(layers: list[str], norms: torch.Tensor, sizes: list[int], ratio: float) -> list[Finding]:
    if len(layers) < 2 or norms.shape[0] == 0:
        return []
    rms = torch.stack(
        [_finite_median(norms[:, j]) / math.sqrt(max(sizes[j], 1)) for j in range(len(layers))]
    )
    out = []
    high, low = [], []
    # the reference is the output side, which receives the loss gradient directly
    tail = rms[-max(1, math.ceil(len(layers) / 4)) :]
    ref = _median(tail[torch.isfinite(tail)])
    if not math.isfinite(ref) or ref <= 0:
        return []
    for j in range(len(layers)):
        value = float(rms[j])
        if not math.isfinite(value):
            continue
        if value > ratio * ref:
            high.append((j, value / ref))
        elif value * ratio < ref:
            low.append((j, ref / max(value, 1e-300)))
    # One direction only: gradients either shrink or grow as they flow back. Layers on the
    # wrong side of the reference in the other direction are the output end of that same
    # trend (e.g. a head far above vanishing hidden layers), not a second finding.
    trend = _trend(rms)
    if trend > 0:
        high = []
    elif trend < 0:
        low = []
    if high:
        high.sort(key=lambda t: -t[1])
        names = ", ".join(f"{layers[j]} (x{r:.3g})" for j, r in high[:4])
        out.append(
            Finding(
                "exploding",
                tuple(layers[j] for j, _ in high),
                f"Gradients explode through depth: {names} above the gradient RMS of the "
                "output-side layers. They grow as they flow back (weights initialised too large, no "
                "normalisation). Rescale the init or add normalisation; AGC or a global-norm "
                "clip keeps training stable meanwhile.",
                None,
                high[0][1],
            )
        )
    if low:
        low.sort(key=lambda t: -t[1])
        names = ", ".join(f"{layers[j]} (1/{r:.3g})" for j, r in low[:4])
        out.append(
            Finding(
                "vanishing",
                tuple(layers[j] for j, _ in low),
                f"Gradients vanish in {names} of the output-side layers' "
                "gradient RMS: these layers "
                "barely learn. Use a variance-preserving init (Kaiming/Xavier), non-saturating "
                "activations, normalisation or residual connections.",
                None,
                low[0][1],
            )
        )
    return out


def _trend(rms: torch.Tensor) -> float:
    """Least-squares slope of log gradient RMS over depth (input -> output side)."""
    keep = torch.isfinite(rms) & (rms > 0)
    if int(keep.sum()) < 2:
        return 0.0
    depth = torch.arange(rms.numel(), dtype=torch.float64)[keep]
    logs = rms[keep].to(torch.float64).log()
    depth = depth - depth.mean()
    return float((depth * (logs - logs.mean())).sum() / depth.pow(2).sum())


def _finite_median(x: torch.Tensor) -> torch.Tensor:
    x = x[torch.isfinite(x)]
    return x.median() if x.numel() else torch.tensor(math.nan, dtype=torch.float64)


def _dead(dead: dict[str, tuple[int, int]]) -> list[Finding]:
    hit = sorted(
        (
            (n_dead / n_units, layer, n_dead, n_units)
            for layer, (n_dead, n_units) in dead.items()
            if n_units and n_dead / n_units >= 0.1
        ),  # a few idle units are normal
        reverse=True,
    )
    if not hit:
        return []
    parts = ", ".join(f"{layer} {d}/{u} ({frac:.0%})" for frac, layer, d, u in hit[:6])
    return [
        Finding(
            "dead_units",
            tuple(layer for _, layer, _, _ in hit),
            f"Dead units (no gradient on any sampled step): {parts}. If these are ReLUs that "
            "died, lower the learning rate, check the bias init, or use LeakyReLU/GELU.",
            None,
            hit[0][0],
        )
    ]


def diagnose_history(
    *,
    layers: list[str],
    steps: list[int],
    norms: torch.Tensor,
    losses: torch.Tensor,
    sizes: list[int],
    dead: dict[str, tuple[int, int]],
    ratio: float,
    growth: float,
) -> list[Finding]:
    """The findings of :meth:`GradientMonitor.diagnose` from host-side arrays."""
    findings: list[Finding] = []
    nonfinite = _nonfinite(layers, steps, losses, norms)
    if nonfinite is not None:
        findings.append(nonfinite)
    grew = _growth(layers, steps, norms, growth, nonfinite is not None)
    if grew is not None:
        findings.append(grew)
    findings.extend(_depth(layers, norms, sizes, ratio))
    findings.extend(_dead(dead))
    return findings
