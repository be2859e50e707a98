"""Torch-Pruning configured the way its own examples configure each model family.

Shared by the zoo tier (the 2% parameter bound) and ``benchmarks/bench_zoo.py``, so that
both compare pellucid against the same, fair, peer configuration:

* the classifier (the layer whose outputs are the model's outputs) is ignored, whether it
  is a ``Linear`` or a 1x1 ``Conv2d`` (SqueezeNet);
* torchvision's ``VisionTransformer``: ``round_to=num_heads`` and ``hidden_dim`` updated
  after pruning, as in Torch-Pruning's ``torchvision_pruning.py`` (given ``num_heads`` for
  ``nn.MultiheadAttention`` instead, it leaves the residual stream whole);
* timm attention (``qkv``/``proj``): ``num_heads={qkv: heads}`` and the ``num_heads``/
  ``head_dim`` fix-ups of its ``prune_timm_vit.py``.
"""

from __future__ import annotations

import time

import torch
from torch import nn

__all__ = ["torch_pruning_prune"]


def _classifiers(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """Layers whose outputs have the model's output width (what must not be pruned)."""
    with torch.no_grad():
        width = model(x).shape[-1]
    found = []
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.out_features == width:
            found.append(m)
        elif isinstance(m, nn.Conv2d) and m.out_channels == width and m.kernel_size == (1, 1):
            found.append(m)
    return found


def torch_pruning_prune(model: nn.Module, x: torch.Tensor, ratio: float) -> tuple[nn.Module, float]:
    """Prune ``model`` in place with Torch-Pruning's L2 magnitude pruner at ``ratio``;
    returns the model and the seconds it took to build the pruner (its planning)."""
    import torch_pruning as tp
    from torchvision.models.vision_transformer import VisionTransformer

    num_heads: dict[nn.Module, int] = {}
    round_to = None
    if isinstance(model, VisionTransformer):
        round_to = model.encoder.layers[0].num_heads
    else:
        for m in model.modules():
            if isinstance(getattr(m, "qkv", None), nn.Linear) and hasattr(m, "num_heads"):
                num_heads[m.qkv] = m.num_heads
    start = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=_classifiers(model, x),
        num_heads=num_heads,
        round_to=round_to,
    )
    elapsed = time.perf_counter() - start
    pruner.step()
    for m in model.modules():
        qkv = getattr(m, "qkv", None)
        if qkv in pruner.num_heads:
            m.num_heads = pruner.num_heads[qkv]
            m.head_dim = qkv.out_features // (3 * m.num_heads)
            if hasattr(m, "attn_dim"):
                m.attn_dim = m.num_heads * m.head_dim
    if isinstance(model, VisionTransformer):
        model.hidden_dim = model.conv_proj.out_channels
    return model, elapsed
