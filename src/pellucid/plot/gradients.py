"""Gradient-flow figures: per-layer gradient norm over training steps.

matplotlib is imported lazily; every function takes ``ax=None`` and returns the Axes.

Example:
    >>> ax = gradient_flow({"steps": [0, 1, 2], "layer_norms": {"fc": [1.0, 2.0, 4.0]}})
    >>> ax.get_ylabel()
    'gradient norm'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["gradient_flow"]


def _series(source: Any) -> tuple[list[int], dict[str, list[float]]]:
    if hasattr(source, "layer_norms") and callable(source.layer_norms):
        norms = source.layer_norms()
        return list(source.steps), norms
    if isinstance(source, Mapping) and "layer_norms" in source:
        norms = dict(source["layer_norms"])
        steps = list(source.get("steps") or range(len(next(iter(norms.values()), []))))
        return steps, norms
    raise TypeError(
        "`source` must be a GradientMonitor or a dict with 'layer_norms' (and 'steps'), as "
        f"written by GradientMonitor.to_dict(); got {type(source).__name__}."
    )


def gradient_flow(
    source: Any,
    *,
    ax: Any = None,
    layers: Sequence[str] | None = None,
    log: bool = True,
    max_layers: int = 12,
) -> Any:
    """Draw each layer's gradient norm over the recorded steps (NaN/inf marked with x).

    Args:
        source: a :class:`~pellucid.monitoring.GradientMonitor` or its ``to_dict()``.
        ax: matplotlib Axes to draw on (a new figure when None).
        layers: which layers (default: all, thinned to ``max_layers`` evenly spaced).
        log: logarithmic y axis.
        max_layers: most lines drawn when ``layers`` is None.

    Returns:
        The Axes.

    Raises:
        TypeError: `source` is neither a GradientMonitor nor its `to_dict()`.
        ValueError: `layers` names a layer the monitor did not record.
    """
    steps, norms = _series(source)
    if layers is None:
        names = list(norms)
        if len(names) > max_layers:
            pick = sorted(
                {round(i * (len(names) - 1) / (max_layers - 1)) for i in range(max_layers)}
            )
            names = [names[i] for i in pick]
    else:
        unknown = [n for n in layers if n not in norms]
        if unknown:
            raise ValueError(
                f"`layers` must name monitored layers; got unknown {unknown}. "
                f"Known: {', '.join(list(norms)[:12])}."
            )
        names = list(layers)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 3.6))
    cmap_n = max(len(names) - 1, 1)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    for i, name in enumerate(names):
        values = [v if v is not None else math.nan for v in norms[name]]
        color = cmap(i / cmap_n)
        ax.plot(steps[: len(values)], values, color=color, lw=1.2, label=name)
        bad = [s for s, v in zip(steps, values, strict=False) if not math.isfinite(v)]
        if bad:
            top = max((v for v in values if math.isfinite(v)), default=1.0)
            ax.scatter(bad, [top] * len(bad), marker="x", color=color, s=12)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient norm")
    ax.set_title("Gradient flow (per layer; x = non-finite)")
    ax.legend(fontsize=6, ncol=2, loc="best")
    return ax
