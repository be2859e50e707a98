"""Guided backpropagation's and deconvolution's tables: modified ReLU backward passes.

Guided backprop (Springenberg et al. 2015) passes only positive gradients where the unit
was active (``relu(grad) * f'(x)``: ``x > 0`` for ReLU, ``0 < x < 6`` for ReLU6);
deconvolution (Zeiler and Fergus 2014) passes positive gradients whatever the input.
Linear layers, pooling and eval-mode batch norm keep their ordinary gradient; every other
non-linearity is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pellucid.attribution.rules._elementwise import (
    Elementwise,
    derivative,
    positive,
    positive_part,
)
from pellucid.attribution.rules._ops import AVG_POOL_OPS, MAX_POOL_OPS, RELU_OPS, WEIGHTED_OPS
from pellucid.attribution.rules._tables import always, entries, eval_batch_norm, gradient

__all__ = ["DECONVOLUTION_RULES", "GUIDED_RULES", "GuidedReLU"]

#: Clamped-linear units: ReLU, ReLU6 (``hardtanh(0, 6)``) and hardtanh.
CLAMPS = RELU_OPS | {"relu6", "hardtanh", "hardtanh_"}

#: Guided backprop's rule on a ReLU (also used by guided Grad-CAM).
GuidedReLU = Elementwise("guided", slope=positive, grad_map=positive_part)
_GUIDED_CLAMP = Elementwise("guided", slope=derivative, grad_map=positive_part)
_DECONVOLUTION = Elementwise("deconvolution", grad_map=positive_part)

_LINEAR: Mapping[str, Any] = {
    **entries(WEIGHTED_OPS | AVG_POOL_OPS | MAX_POOL_OPS, gradient),
    "batch_norm": eval_batch_norm,
}

#: Guided backprop's table: operation name -> handler.
GUIDED_RULES: Mapping[str, Any] = {
    **_LINEAR,
    **entries(CLAMPS - RELU_OPS, always(_GUIDED_CLAMP)),
    **entries(RELU_OPS, always(GuidedReLU)),
}
#: Deconvolution's table.
DECONVOLUTION_RULES: Mapping[str, Any] = {**_LINEAR, **entries(CLAMPS, always(_DECONVOLUTION))}
