"""Grad-CAM speaks when its map says nothing (issue 16: never silently wrong).

From a transformer block's output only the class token reaches the head, so the gradient
at every patch position is zero and the map is zero everywhere; the warning names the
layer and the block's norm, whose output the class token reads through attention. A
normal CNN map never warns.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from pellucid import grad_cam
from pellucid.attribution import EmptyMapWarning
from pellucid.models import SmallCNN


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _ClassTokenViT(nn.Module):
    """Patches of 2x2 -> tokens, a class token in front, one block; the head reads the
    class token only (as torchvision's and timm's ViTs do)."""

    def __init__(self, d: int = 8, n_classes: int = 3) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, d, 2, stride=2)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.block = _Block(d)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        return self.head(self.block(tokens)[:, 0])


def _vit() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _ClassTokenViT().eval(), torch.randn(2, 1, 8, 8)


def test_block_output_of_a_class_token_model_warns_and_names_the_norm():
    model, x = _vit()
    with pytest.warns(EmptyMapWarning, match=r"layer 'block' is zero everywhere.*'block\.ln_1'"):
        out = grad_cam(model, x, layer="block", reshape="tokens", target=1)
    assert not out.attributions.any()


def test_the_suggested_norm_gives_a_map_without_warning():
    model, x = _vit()
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyMapWarning)
        out = grad_cam(model, x, layer="block.ln_1", reshape="tokens", target=1, relu=False)
    assert out.attributions.ne(0).any()


def test_a_cnn_map_does_not_warn():
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, n_classes=3).eval()
    x = torch.randn(4, 1, 8, 8)
    layer = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][-1]
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyMapWarning)
        out = grad_cam(model, x, layer=layer, target="predicted")
    assert out.attributions.ne(0).any()


def test_a_layer_after_the_last_spatial_operation_warns_and_names_a_conv():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()
    with pytest.warns(EmptyMapWarning, match=r"layer '2' has a single position.*conv.*'0'"):
        grad_cam(model, torch.randn(2, 1, 6, 6), layer="2", target=0)
