"""Local, per-example attributions. Every method is a registered function -> Explanation."""

from __future__ import annotations

from pellucid.attribution.attention import (
    AttentionMaps,
    attention,
    attention_maps,
    attention_rollout,
)
from pellucid.attribution.backprop import deconvolution, guided_backprop
from pellucid.attribution.cam import EmptyMapWarning, grad_cam, guided_grad_cam
from pellucid.attribution.decomposition import deeplift, lrp
from pellucid.attribution.gradients import input_x_gradient, saliency
from pellucid.attribution.integrated_gradients import expected_gradients, integrated_gradients
from pellucid.attribution.lime import lime
from pellucid.attribution.noise import smoothgrad
from pellucid.attribution.occlusion import feature_ablation, occlusion
from pellucid.attribution.rules import UnsupportedOperationError
from pellucid.attribution.segmentation import grid_segments, slic_segments, token_groups
from pellucid.attribution.shapley import (
    exact_shapley,
    kernel_shap,
    sampling_shapley,
    summarize_background,
)

__all__ = [
    "AttentionMaps",
    "EmptyMapWarning",
    "UnsupportedOperationError",
    "attention",
    "attention_maps",
    "attention_rollout",
    "exact_shapley",
    "feature_ablation",
    "grid_segments",
    "kernel_shap",
    "lime",
    "occlusion",
    "sampling_shapley",
    "slic_segments",
    "summarize_background",
    "token_groups",
    "deconvolution",
    "deeplift",
    "expected_gradients",
    "grad_cam",
    "guided_backprop",
    "guided_grad_cam",
    "input_x_gradient",
    "integrated_gradients",
    "lrp",
    "saliency",
    "smoothgrad",
]
