"""Gradient clipping: torch-compatible functions, composable transforms, adaptive clippers.

* Functional, in place, torch's names and results: :func:`clip_grad_norm_`,
  :func:`clip_grad_value_`, :func:`clip_grads_with_norm_`, per-tensor and per-layer
  bounds, unit-wise :func:`adaptive_clip_grad_` (AGC); pure norms: :func:`total_norm`,
  :func:`tensor_norms`.
* Transforms over lists of gradients: :func:`clip_by_global_norm`, :func:`clip_by_value`,
  :func:`clip_by_norm`, :func:`adaptive_clip`, :class:`AutoClip`, :class:`ZClip`, composed
  by :func:`chain` and applied in place by :func:`apply_` with a non-finite policy.
* Training: :class:`GradientClipper`, a callback for ``fit(..., clipper=...)``;
  :func:`sweep_clip_bounds` suggests a ``max_norm`` from a monitored run's norm history.
* Weight constraints after the optimizer step: :func:`weight_clip` (``θ ← clip(θ, −c, c)``),
  :func:`max_norm` (Keras ``MaxNorm``), applied by :func:`constrain_` or the
  :class:`WeightClipper` callback.

With ``torch.amp.GradScaler``, unscale first, then clip::

    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)          # gradients are now in true units
    clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)              # skips the step itself if unscale found inf/NaN
    scaler.update()

Example:
    >>> import torch
    >>> net = torch.nn.Linear(3, 1)
    >>> net(torch.ones(4, 3)).sum().mul(10).backward()
    >>> norm = clip_grad_norm_(net.parameters(), 1.0)
    >>> float(norm) > 1.0
    True
"""

from __future__ import annotations

from pellucid.clipping.adaptive import AutoClip, ZClip
from pellucid.clipping.agc import adaptive_clip_grad_, classifier_parameters, unitwise_norm
from pellucid.clipping.callback import GradientClipper
from pellucid.clipping.functional import (
    GradNorms,
    clip_grad_norm_,
    clip_grad_value_,
    clip_grads_with_norm_,
    global_norm,
    tensor_norms,
    total_norm,
)
from pellucid.clipping.grouped import (
    clip_grad_norm_per_layer_,
    clip_grad_norm_per_tensor_,
    layer_groups,
)
from pellucid.clipping.guard import NONFINITE_POLICIES, NonFiniteGradientError, nonfinite_flags
from pellucid.clipping.reduce import all_reduce_norm
from pellucid.clipping.stats import ClipStats
from pellucid.clipping.sweep import ClipSweep, sweep_clip_bounds
from pellucid.clipping.transforms import (
    Scaling,
    Transform,
    TransformResult,
    adaptive_clip,
    apply_,
    chain,
    clip_by_global_norm,
    clip_by_norm,
    clip_by_value,
)
from pellucid.clipping.weights import (
    NonFiniteWeightError,
    WeightClipper,
    WeightConstraint,
    constrain_,
    max_norm,
    weight_clip,
)

__all__ = [
    "NONFINITE_POLICIES",
    "AutoClip",
    "ClipStats",
    "ClipSweep",
    "GradNorms",
    "GradientClipper",
    "NonFiniteGradientError",
    "NonFiniteWeightError",
    "Transform",
    "Scaling",
    "TransformResult",
    "WeightClipper",
    "WeightConstraint",
    "ZClip",
    "adaptive_clip",
    "all_reduce_norm",
    "adaptive_clip_grad_",
    "apply_",
    "chain",
    "classifier_parameters",
    "clip_by_global_norm",
    "clip_by_norm",
    "clip_by_value",
    "clip_grad_norm_",
    "clip_grad_norm_per_layer_",
    "clip_grad_norm_per_tensor_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "constrain_",
    "global_norm",
    "layer_groups",
    "max_norm",
    "nonfinite_flags",
    "tensor_norms",
    "total_norm",
    "unitwise_norm",
    "sweep_clip_bounds",
    "weight_clip",
]
