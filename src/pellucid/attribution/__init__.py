"""Local, per-example attributions. Every method is a registered function -> Explanation."""

from __future__ import annotations

from pellucid.attribution.gradients import input_x_gradient, saliency

__all__ = [
    "input_x_gradient",
    "saliency",
]
