"""Attention maps and rollout: captured weights equal a manual computation, model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import model_rows
from pellucid import attention, attention_maps, attention_rollout
from pellucid.models import TinyTransformer

D = torch.float64


def _net(n_layers: int = 2, **kw) -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer(3, 2, d_model=8, n_heads=2, n_layers=n_layers, **kw).to(D).eval()


def _manual_weights(block, h: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) per head, from the layer's own projection weights."""
    attn = block.attn
    z = block.norm1(h)
    q, k, _ = nn.functional.linear(z, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    n, t, d = q.shape
    heads = attn.num_heads
    q = q.view(n, t, heads, d // heads).transpose(1, 2)
    k = k.view(n, t, heads, d // heads).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)


def test_captured_weights_equal_manual_computation_and_outputs_unchanged():
    net = _net()
    x = torch.randn(4, 5, 3, dtype=D)
    with torch.no_grad():
        before = net(x)
        maps = attention_maps(net, x)
        h = net.embedding(x) + net.position[:, :5]
        expected = []
        for block in net.blocks:
            expected.append(_manual_weights(block, h))
            h = block(h)
    assert maps.weights.shape == (2, 4, 2, 5, 5)
    assert maps.layers == ["blocks.0.attn", "blocks.1.attn"]
    torch.testing.assert_close(maps.weights, torch.stack(expected))
    torch.testing.assert_close(maps.outputs, before)
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=0, atol=0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_caller_still_gets_what_it_asked_for():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(4, 2, batch_first=True).to(D)

    class Wants(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha
            self.seen = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, weights = self.mha(x, x, x)  # default: head-averaged weights
            self.seen = weights
            return out.mean(1)

    model = Wants().eval()
    x = torch.randn(2, 3, 4, dtype=D)
    maps = attention_maps(model, x)
    torch.testing.assert_close(model.seen, maps.weights[0].mean(1))


def test_attention_scores_and_layers():
    net = _net()
    x = torch.randn(3, 5, 3, dtype=D)
    e = attention(net, x, layer=0, head_fusion="max")
    w = e.extras["weights"][0].amax(1).mean(1)  # (N, S)
    torch.testing.assert_close(e.attributions, w.unsqueeze(-1).expand(3, 5, 3))
    assert e.attributions.dtype == D and e.params["layer"] == 0


def test_rollout_recurrence_and_single_layer():
    net = _net()
    x = torch.randn(3, 5, 3, dtype=D)
    e = attention_rollout(net, x)
    a = e.extras["weights"] if "weights" in e.extras else attention_maps(net, x).weights
    eye = torch.eye(5, dtype=D)
    steps = [(0.5 * layer.mean(1) + 0.5 * eye) for layer in a]
    torch.testing.assert_close(e.extras["rollout"], steps[1] @ steps[0])
    torch.testing.assert_close(e.extras["rollout"].sum(-1), torch.ones(3, 5, dtype=D))
    torch.testing.assert_close(e.attributions[..., 0], (steps[1] @ steps[0]).mean(1))
    one = _net(n_layers=1)
    raw = attention_rollout(one, x, residual=False, query=2)
    torch.testing.assert_close(
        raw.attributions[..., 0], attention_maps(one, x).weights[0].mean(1)[:, 2]
    )


def test_token_ids_and_target_validation():
    net = _net(vocab_size=11)
    ids = torch.randint(0, 11, (3, 6))
    e = attention_rollout(net, ids, target=1)
    assert e.attributions.shape == (3, 6) and e.attributions.dtype == torch.float32
    assert torch.equal(e.target, torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        attention(net, ids, target=7)


def test_no_attention_layer_and_other_bad_input():
    with pytest.raises(ValueError, match="has no nn.MultiheadAttention layer"):
        attention(nn.Sequential(nn.Linear(3, 2)), torch.randn(2, 4, 3))
    with pytest.raises(TypeError, match="must be an nn.Module"):
        attention_rollout(lambda x: x, torch.randn(2, 4, 3))
    net = _net()
    x = torch.randn(2, 5, 3, dtype=D)
    with pytest.raises(ValueError, match="`layer` must be an integer <= 1"):
        attention(net, x, layer=2)
    with pytest.raises(ValueError, match="`head_fusion` must be one of"):
        attention_rollout(net, x, head_fusion="median")
    with pytest.raises(ValueError, match="`query` must be an integer <= 4"):
        attention_rollout(net, x, query=5)


def test_heatmap_plot():
    from pellucid.plot.attention import attention_heatmap

    net = _net()
    x = torch.randn(2, 5, 3, dtype=D)
    ax = attention_heatmap(attention(net, x), layer=1, head=0, tokens=list("abcde"))
    assert ax.get_title() == "layer 1, head 0"
    ax = attention_heatmap(attention_rollout(net, x), example=1)
    assert ax.get_title() == "rollout"
    with pytest.raises(TypeError, match="2-D tensor, AttentionMaps"):
        attention_heatmap("nope")


class FusedAttention(nn.Module):
    """timm-style block: fused qkv, scaled_dot_product_attention, never forms the weights."""

    def __init__(self, dim: int = 8, num_heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.q_norm, self.k_norm = nn.LayerNorm(self.head_dim), nn.Identity()

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj(out.transpose(1, 2).reshape(n, t, c))


class PatchViT(nn.Module):
    """4x4 patches of an 8x8 image -> 4 tokens + a class token -> attention -> class token."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.fused = fused
        self.attn = FusedAttention() if fused else nn.MultiheadAttention(8, 2, batch_first=True)
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        h = h + (self.attn(h) if self.fused else self.attn(h, h, h, need_weights=False)[0])
        h = torch.relu(self.block(h))
        return self.head(h[:, 0])


def test_fused_attention_weights_are_recomputed_exactly():
    torch.manual_seed(1)
    net = PatchViT(fused=True).to(D).eval()
    x = torch.randn(3, 3, 8, 8, dtype=D)
    h = torch.cat([net.cls.expand(3, -1, -1), net.embed(x).flatten(2).transpose(1, 2)], 1)
    a = net.attn
    q, k, _ = a.qkv(h).reshape(3, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    manual = torch.softmax(a.q_norm(q) @ k.transpose(-1, -2) / 2.0, dim=-1)  # sqrt(head_dim)
    maps = attention_maps(net, x)
    assert maps.layers == ["attn"]
    # float64, same operations in the same order: equal to rounding
    torch.testing.assert_close(maps.weights[0], manual.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(maps.outputs, net(x).detach(), rtol=0, atol=0)


@pytest.mark.parametrize("fused", [False, True])
def test_rollout_on_images_lays_tokens_on_the_patch_grid(fused):
    torch.manual_seed(2)
    net = PatchViT(fused=fused).to(D).eval()
    x = torch.randn(2, 3, 8, 8, dtype=D)
    e = attention_rollout(net, x, query=0)
    scores = e.extras["token_scores"]  # (N, 5): class token then the 2x2 patches
    torch.testing.assert_close(scores, e.extras["rollout"][:, 0], rtol=0, atol=1e-12)
    assert e.attributions.shape == x.shape
    grid = scores[:, 1:].reshape(2, 2, 2)
    for i in range(2):
        for j in range(2):
            patch = e.attributions[:, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
            assert torch.equal(patch, grid[:, i, j, None, None, None].expand_as(patch))
    assert attention(net, x).attributions.shape == x.shape


@pytest.mark.parametrize("method", ["attention", "attention_rollout"])
def test_wrong_input_shape_names_the_inputs(method):
    """It used to raise torch's raw 'mat1 and mat2 shapes cannot be multiplied'."""
    import pellucid
    from pellucid.models import TinyTransformer

    net = TinyTransformer(4, 2, d_model=8, n_heads=2, n_layers=1).eval()
    with pytest.raises(ValueError, match=r"could not run on `inputs` of shape \(2, 5, 7\)"):
        getattr(pellucid, method)(net, torch.randn(2, 5, 7))


def test_meta_device_model_is_refused_at_the_boundary():
    import pellucid

    net = torch.nn.Linear(3, 2).to("meta")
    for method in ("saliency", "kernel_shap", "occlusion"):
        with pytest.raises(ValueError, match=r"`model` must hold real weights.*to_empty"):
            getattr(pellucid, method)(net, torch.randn(2, 3), target=0)


@pytest.mark.parametrize("method", ["attention", "attention_rollout"])
def test_one_forward_pass_with_or_without_a_target(method):
    fn = {"attention": attention, "attention_rollout": attention_rollout}[method]
    net = TinyTransformer(3, 2, d_model=8, n_heads=2).eval()
    x = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0))
    with model_rows(net) as calls:
        plain = fn(net, x)
        targeted = fn(net, x, target=1)
    assert calls == [4, 4]  # one pass each: the target is validated on the recorded pass
    torch.testing.assert_close(targeted.attributions, plain.attributions, rtol=0, atol=0)


def _maps_or_attributions(result):
    return result.weights if hasattr(result, "weights") else result.attributions


@pytest.mark.parametrize("method", [attention_maps, attention, attention_rollout])
def test_max_memory_bounds_the_peak_and_keeps_the_result(method):
    from pellucid._evaluate import measure_peak

    torch.manual_seed(0)
    net = TinyTransformer(3, 2, d_model=32, n_heads=8, n_layers=3).eval()
    x = torch.randn(32, 40, 3, generator=torch.Generator().manual_seed(1))
    default, default_peak = measure_peak(lambda: method(net, x))
    budget = int(0.75 * default_peak)  # the maps (about half of it) and a few rows' work
    limited, peak = measure_peak(lambda: method(net, x, max_memory=budget))
    assert peak <= budget, f"{peak / 1e6:.2f} MB over a {budget / 1e6:.2f} MB budget"
    assert default_peak > budget
    torch.testing.assert_close(
        _maps_or_attributions(limited), _maps_or_attributions(default), rtol=0, atol=0
    )
    if method is not attention_maps:  # the size the budget picked, and the budget
        assert 1 <= limited.params["batch_size"] < x.shape[0]
        assert limited.params["max_memory"] == budget
        assert default.params["batch_size"] is None and "max_memory" not in default.params


def test_max_memory_that_cannot_hold_the_maps_says_how_much_is_needed():
    net = _net()
    x = torch.randn(6, 5, 3, dtype=D)
    before = [p.detach().clone() for p in net.parameters()]
    for method in (attention_maps, attention, attention_rollout):
        with pytest.raises(
            ValueError,
            match=r"`max_memory` must hold the attention maps of 6 example\(s\) and what "
            rf"{method.__name__} computes .*got max_memory=600\. Raise it to at least",
        ):
            method(net, x, max_memory=600)
    for p, q in zip(net.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_layers_that_run_differently_per_chunk_are_refused_with_the_fix():
    x = torch.randn(4, 5, 3, dtype=D)
    x[:2, 0, 0], x[2:, 0, 0] = 1.0, -1.0

    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = _net(n_layers=1), _net(n_layers=2)

        def forward(self, x):
            return self.a(x) if float(x[0, 0, 0]) > 0 else self.b(x)

    with pytest.raises(ValueError, match="ran differently for different examples"):
        attention_maps(Branching(), x, batch_size=2)
    assert attention_maps(Branching(), x).weights.shape[0] == 1  # one chunk: one path
