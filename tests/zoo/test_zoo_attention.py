"""Grad-CAM and attention on torchvision/timm models: maps of the input's shape, token
models through ``reshape="tokens"``, rollout on both kinds of attention block."""

from __future__ import annotations

import pytest
import torch

from pellucid.attribution import attention_maps, attention_rollout, grad_cam
from zoo.zoo_models import build, build_small


@pytest.mark.parametrize(
    ("source", "name", "layer", "reshape"),
    [
        ("tv", "resnet18", "layer4", None),
        ("tv", "small_densenet", "features", None),
        ("tv", "small_vit", "encoder.layers.encoder_layer_1", "tokens"),
        ("tv", "small_swin", "features.3", "tokens"),
        ("timm", "vit_tiny_patch16_224", "blocks.11", "tokens"),
    ],
)
def test_grad_cam_on_zoo_layers(source, name, layer, reshape):
    model, x = build_small(source, name, 32)
    x = torch.cat([x, -x])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    e = grad_cam(model, x, layer=layer, target=0, reshape=reshape)
    assert e.attributions.shape == x.shape and torch.isfinite(e.attributions).all()
    assert e.extras["cam"].ndim == 4 and (e.extras["cam"] >= 0).all()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("source", "name"), [("tv", "small_vit"), ("timm", "vit_tiny_patch16_224")]
)
def test_attention_rollout_on_vits(source, name):
    model, x = build_small(source, name, 32)
    x = torch.cat([x, -x])
    maps = attention_maps(model, x)
    tokens = 1 + (32 // (8 if source == "tv" else 16)) ** 2
    assert maps.weights.shape[-2:] == (tokens, tokens)
    torch.testing.assert_close(  # rows of softmax weights sum to one (float32)
        maps.weights.sum(-1), torch.ones_like(maps.weights.sum(-1)), rtol=0, atol=1e-5
    )
    e = attention_rollout(model, x, query=0)
    assert e.attributions.shape == x.shape
    assert e.extras["token_scores"].shape == (2, tokens)


def test_timm_fused_attention_matches_its_unfused_path():
    model, x = build("timm", "vit_tiny_patch16_224", 32)
    fused = attention_maps(model, x).weights
    captured = []
    for block in model.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, a, out: captured.append(out))
    with torch.no_grad():
        model(x)
    # timm's own explicit softmax path forms the same weights (float32 rounding)
    torch.testing.assert_close(fused[:, 0], torch.stack(captured)[:, 0], rtol=1e-5, atol=1e-6)
