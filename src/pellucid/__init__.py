"""pellucid: a PyTorch-native workbench for understanding neural networks.

Train it stably (``pellucid.clipping``, ``pellucid.monitoring``), make it small
(``pellucid.pruning``), explain it (``pellucid.attribute`` and the attribution functions,
``pellucid.inspection``) and check that the explanation is faithful (``pellucid.metrics``).

Example:
    >>> import torch, pellucid
    >>> net = torch.nn.Linear(3, 1)
    >>> e = pellucid.integrated_gradients(net, torch.ones(2, 3))
    >>> e.method, tuple(e.attributions.shape)
    ('integrated_gradients', (2, 3))
"""

from __future__ import annotations

__version__ = "0.1.0"

from pellucid import (
    attribution,
    clipping,
    data,
    inspection,
    metrics,
    models,
    monitoring,
    pruning,
    sources,
    training,
)
from pellucid._adapt import estimator_model
from pellucid._registry import MethodInfo, attribute, get_method, list_methods
from pellucid._warnings import PellucidWarning
from pellucid.attribution import (
    AttentionMaps,
    EmptyMapWarning,
    UnsupportedOperationError,
    attention,
    attention_maps,
    attention_rollout,
    deconvolution,
    deeplift,
    exact_shapley,
    expected_gradients,
    feature_ablation,
    grad_cam,
    grid_segments,
    guided_backprop,
    guided_grad_cam,
    input_x_gradient,
    integrated_gradients,
    kernel_shap,
    lime,
    lrp,
    occlusion,
    saliency,
    sampling_shapley,
    slic_segments,
    smoothgrad,
    summarize_background,
    token_groups,
)
from pellucid.explanation import Explanation
from pellucid.monitoring import GradientMonitor

__all__ = [
    "AttentionMaps",
    "EmptyMapWarning",
    "Explanation",
    "GradientMonitor",
    "MethodInfo",
    "PellucidWarning",
    "UnsupportedOperationError",
    "__version__",
    "attention",
    "attention_maps",
    "attention_rollout",
    "attribute",
    "attribution",
    "clipping",
    "data",
    "deconvolution",
    "deeplift",
    "estimator_model",
    "exact_shapley",
    "expected_gradients",
    "feature_ablation",
    "get_method",
    "grad_cam",
    "grid_segments",
    "guided_backprop",
    "guided_grad_cam",
    "input_x_gradient",
    "inspection",
    "integrated_gradients",
    "kernel_shap",
    "lime",
    "list_methods",
    "lrp",
    "metrics",
    "models",
    "monitoring",
    "occlusion",
    "pruning",
    "saliency",
    "sampling_shapley",
    "slic_segments",
    "smoothgrad",
    "sources",
    "summarize_background",
    "token_groups",
    "training",
]
