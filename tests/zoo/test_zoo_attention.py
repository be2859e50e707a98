"""Grad-CAM and attention on torchvision/timm models: maps of the input's shape, token
models through ``reshape="tokens"``, rollout on both kinds of attention block; the issue's
real architectures (resnet18 ``layer4``, densenet121 ``features``, vit_b_16's last block)
at 32 px, Grad-CAM cross-checked against captum's LayerGradCam and a hand computation."""

from __future__ import annotations

import pytest
import torch

from pellucid.attribution import attention_maps, attention_rollout, grad_cam
from zoo.zoo_models import build, build_small, calibrate


@pytest.mark.parametrize(
    ("source", "name", "layer", "reshape"),
    [
        ("tv", "resnet18", "layer4", None),
        ("tv", "small_densenet", "features", None),
        ("tv", "densenet121", "features", None),
        ("tv", "small_vit", "encoder.layers.encoder_layer_1.ln_1", "tokens"),
        ("tv", "vit_b_16", "encoder.layers.encoder_layer_11.ln_1", "tokens"),
        ("tv", "small_swin", "features.3", "tokens"),
        ("timm", "vit_tiny_patch16_224", "blocks.11.norm1", "tokens"),
    ],
)
def test_grad_cam_on_zoo_layers(source, name, layer, reshape):
    model, x = build_small(source, name, 32)
    calibrate(model, 32)  # vit_b_16's zero head would give an all-zero map
    x = torch.cat([x, -x])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    e = grad_cam(model, x, layer=layer, target=0, reshape=reshape)
    assert e.attributions.shape == x.shape and torch.isfinite(e.attributions).all()
    assert e.extras["cam"].ndim == 4 and (e.extras["cam"] >= 0).all()
    assert e.extras["cam"].abs().max() > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("source", "name"),
    [("tv", "small_vit"), ("tv", "vit_b_16"), ("timm", "vit_tiny_patch16_224")],
)
def test_attention_rollout_on_vits(source, name):
    model, x = build_small(source, name, 32)
    x = torch.cat([x, -x])
    maps = attention_maps(model, x)
    tokens = 1 + (32 // (8 if name == "small_vit" else 16)) ** 2
    assert maps.weights.shape[-2:] == (tokens, tokens)
    torch.testing.assert_close(  # rows of softmax weights sum to one (float32)
        maps.weights.sum(-1), torch.ones_like(maps.weights.sum(-1)), rtol=0, atol=1e-5
    )
    e = attention_rollout(model, x, query=0)
    assert e.attributions.shape == x.shape
    assert e.extras["token_scores"].shape == (2, tokens)


@pytest.mark.parametrize(("name", "layer"), [("resnet18", "layer4"), ("densenet121", "features")])
def test_grad_cam_matches_captum_on_in_place_modified_layers(name, layer):
    """resnet18's ``layer4`` ends in an in-place ``out += identity`` then ReLU, densenet121's
    ``features`` is followed by an in-place ReLU: the layer's own output is explained."""
    captum = pytest.importorskip("captum.attr")
    model, x = build_small("tv", name, 32)
    x = torch.cat([x, -x])
    e = grad_cam(model, x, layer=layer, target=3, relu=False)  # signed: at 1x1 maps the
    module = dict(model.named_modules())[layer]  # ReLU'd map may be all zero
    theirs = captum.LayerGradCam(model, module).attribute(x, target=3, relu_attributions=False)
    assert theirs.abs().max() > 0  # a map that is not trivially zero
    torch.testing.assert_close(
        e.extras["cam"], theirs, rtol=1e-4, atol=1e-6 * float(theirs.abs().max())
    )


def test_grad_cam_tokens_on_vit_b_16_by_hand():
    """vit_b_16's last block (its first norm, the usual ViT Grad-CAM layer: the block's
    output feeds only the class token to the head, so its patch tokens get no gradient and
    a map there is zero), ``reshape="tokens"``: the class token dropped, the 2x2 patch grid
    as a map, channel weights the mean gradient over the grid (float32 rounding)."""
    model, x = build_small("tv", "vit_b_16", 32)
    calibrate(model, 32)  # its zero-initialized head drawn at random
    x = torch.cat([x, -x])
    block = model.encoder.layers.encoder_layer_11.ln_1
    e = grad_cam(model, x, layer="encoder.layers.encoder_layer_11.ln_1", target=5, reshape="tokens")
    captured = []
    handle = block.register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        out = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(out[:, 5].sum(), captured[0])
    grid = lambda t: t[:, 1:].transpose(1, 2).reshape(2, -1, 2, 2)  # noqa: E731
    acts, grads = grid(captured[0].detach()), grid(grad)
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True))
    assert cam.abs().max() > 0
    torch.testing.assert_close(e.extras["cam"], cam, rtol=1e-4, atol=1e-6 * float(cam.abs().max()))


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
