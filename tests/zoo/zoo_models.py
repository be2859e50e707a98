"""Random-weight torchvision and timm models at small resolution, for the zoo tier.

Shared by ``tests/zoo`` and ``benchmarks/bench_zoo.py``; nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TIER", "ZOO", "build", "build_small", "calibrate"]

#: (source, name, image side): the 18 models of issue 13, at a side that keeps them quick
ZOO: list[tuple[str, str, int]] = [
    ("tv", "resnet18", 64),
    ("tv", "resnet50", 64),
    ("tv", "mobilenet_v2", 64),
    ("tv", "mobilenet_v3_small", 64),
    ("tv", "efficientnet_b0", 64),
    ("tv", "vgg11_bn", 32),
    ("tv", "densenet121", 64),
    ("tv", "regnet_y_400mf", 64),
    ("tv", "shufflenet_v2_x0_5", 64),
    ("tv", "squeezenet1_1", 64),
    ("tv", "convnext_tiny", 64),
    ("tv", "vit_b_16", 64),
    ("tv", "swin_t", 64),
    ("tv", "googlenet", 64),
    ("tv", "mnasnet0_5", 64),
    ("timm", "resnet18", 64),
    ("timm", "mobilevitv2_050", 64),
    ("timm", "vit_tiny_patch16_224", 64),
]


def build(source: str, name: str, side: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The model in eval mode with seeded random weights, and one ``(1, 3, side, side)`` input."""
    torch.manual_seed(seed)
    if source == "tv":
        import torchvision

        kwargs: dict = {}
        if name == "googlenet":
            kwargs = {"aux_logits": False, "init_weights": False}
        if name.startswith("vit_"):
            kwargs = {"image_size": side}
        model = getattr(torchvision.models, name)(weights=None, **kwargs)
    else:
        import timm

        kwargs = {"img_size": side} if name.startswith("vit_") else {}
        model = timm.create_model(name, pretrained=False, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    return model.eval(), torch.randn(1, 3, side, side, generator=gen)


#: the test tier: the same architectures' code paths in small configurations (seconds each)
TIER: list[tuple[str, str, int]] = [
    ("tv", "resnet18", 32),
    ("tv", "mobilenet_v3_small", 32),
    ("tv", "efficientnet_b0", 32),
    ("tv", "regnet_y_400mf", 32),
    ("tv", "squeezenet1_1", 32),
    ("tv", "mnasnet0_5", 32),
    ("tv", "googlenet", 32),
    ("tv", "small_densenet", 32),
    ("tv", "small_convnext", 32),
    ("tv", "small_vit", 32),
    ("tv", "small_swin", 32),
    ("timm", "resnet18", 32),
    ("timm", "mobilevitv2_050", 64),
    ("timm", "vit_tiny_patch16_224", 32),
]


def build_small(source: str, name: str, side: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Like :func:`build`, with ``small_*`` names for reduced torchvision configurations."""
    if not name.startswith("small_"):
        return build(source, name, side, seed)
    from torchvision.models import convnext, densenet, swin_transformer, vision_transformer

    torch.manual_seed(seed)
    kind = name[len("small_") :]
    if kind == "densenet":
        model: nn.Module = densenet.DenseNet(8, (2, 2), 16, num_classes=10)
    elif kind == "convnext":
        blocks = [convnext.CNBlockConfig(16, 32, 2), convnext.CNBlockConfig(32, None, 1)]
        model = convnext.ConvNeXt(blocks, stochastic_depth_prob=0.1, num_classes=10)
    elif kind == "vit":
        model = vision_transformer.VisionTransformer(side, 8, 2, 4, 64, 128, num_classes=10)
    else:
        model = swin_transformer.SwinTransformer(
            [4, 4], 32, [2, 2], [2, 4], [4, 4], stochastic_depth_prob=0.1, num_classes=10
        )
    gen = torch.Generator().manual_seed(seed)
    return model.eval(), torch.randn(1, 3, side, side, generator=gen)


def calibrate(model: nn.Module, side: int, seed: int = 0, rows: int = 4) -> nn.Module:
    """``model`` made to explain like a trained one, in place (returned in eval mode).

    Random weights with torchvision's default batch-norm statistics (mean 0, variance 1)
    shrink activations layer after layer: mobilenet_v2's outputs are ~1e-10 and its input
    gradients ~1e-11, which makes any comparison of explanations meaningless. Here every
    batch norm takes the statistics of one seeded random batch (as after training, outputs
    and gradients are O(1)), and a classifier initialized to zero (vit_b_16's head: a
    constant output, zero gradients) is drawn at random.
    """
    param = next(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    batch = torch.randn(rows, 3, side, side, generator=gen).to(param)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = None  # the cumulative average: after one batch, that batch's statistics
        m.reset_running_stats()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and not m.weight.any():
                m.weight.normal_(0.0, 0.05, generator=gen)
        if norms:
            model.train()(batch)
    return model.eval()
