"""Gradient attributions: closed forms, axioms, layers, baselines, bad input, captum checks."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pellucid
from pellucid import (
    expected_gradients,
    grad_cam,
    guided_grad_cam,
    input_x_gradient,
    integrated_gradients,
    saliency,
    smoothgrad,
)
from pellucid._random import example_generators, per_example
from pellucid.attribution._quadrature import METHODS as QUADRATURES
from pellucid.attribution._quadrature import quadrature_nodes

D = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")


def _linear(seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    net = nn.Linear(5, 1).to(D)
    return net, torch.randn(4, 5, dtype=D), torch.randn(4, 5, dtype=D)


def _smooth(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).to(D)


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(6 * 16, 3),
        )
        .to(D)
        .eval()
    )


# ---------------------------------------------------------------- closed forms (float64)
@pytest.mark.parametrize("method", QUADRATURES)
def test_ig_equals_w_times_delta_on_a_linear_model(method):
    net, x, b = _linear()
    e = integrated_gradients(net, x, baseline=b, n_steps=7, quadrature=method)
    w = net.weight.detach()
    # Every quadrature integrates a constant exactly: weights sum to 1 (up to rounding).
    torch.testing.assert_close(e.attributions, w * (x - b), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        e.extras["completeness_gap"], torch.zeros(4, dtype=D), rtol=0, atol=1e-12
    )


def test_saliency_and_input_x_gradient_closed_forms():
    net, x, _ = _linear()
    w = net.weight.detach().expand_as(x)
    torch.testing.assert_close(saliency(net, x).attributions, w.abs())
    torch.testing.assert_close(saliency(net, x, absolute=False).attributions, w)
    torch.testing.assert_close(input_x_gradient(net, x).attributions, w * x)


def test_expected_gradients_with_one_reference_is_ig_of_a_linear_model():
    net, x, b = _linear()
    g = torch.Generator().manual_seed(0)
    e = expected_gradients(net, x, background=b[:1], n_samples=5, generator=g)
    torch.testing.assert_close(e.attributions, net.weight.detach() * (x - b[:1]))
    torch.testing.assert_close(e.extras["completeness_gap"], torch.zeros(4, dtype=D))


def test_smoothgrad_of_a_linear_model_is_its_gradient():
    net, x, _ = _linear()
    g = torch.Generator().manual_seed(0)
    e = smoothgrad(net, x, explain_kwargs={"absolute": False}, n_samples=8, generator=g)
    torch.testing.assert_close(e.attributions, net.weight.detach().expand_as(x))
    var = smoothgrad(
        net,
        x,
        variant="vargrad",
        explain_kwargs={"absolute": False},
        n_samples=8,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(var.attributions, torch.zeros_like(x))


def test_quadrature_weights_sum_to_one():
    for method in QUADRATURES:
        alphas, weights = quadrature_nodes(method, 9)
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-14)
        assert 0.0 <= float(alphas.min()) and float(alphas.max()) <= 1.0


# ---------------------------------------------------------------- axioms
def test_ig_completeness_gauss_legendre_50_steps():
    net = _smooth()
    torch.manual_seed(1)
    x = torch.randn(6, 5, dtype=D) * 2
    e = integrated_gradients(net, x, target=2, n_steps=50)
    diff = e.extras["output"] - e.extras["baseline_output"]
    assert (e.extras["completeness_gap"].abs() <= 1e-3 * diff.abs()).all()


def test_ig_is_memory_bounded_by_batch_size():
    net = _smooth()
    seen: list[int] = []
    net[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    x = torch.randn(3, 5, dtype=D)
    a = integrated_gradients(net, x, target=0, n_steps=1000, batch_size=256)
    assert max(seen) <= 256 and sum(seen) >= 3000
    b = integrated_gradients(net, x, target=0, n_steps=1000)
    torch.testing.assert_close(a.attributions, b.attributions)


def test_smoothgrad_equals_mean_of_saliency_on_the_same_noise():
    net = _smooth()
    x = torch.randn(3, 5, dtype=D)
    e = smoothgrad(
        net, x, target=1, n_samples=6, noise=0.2, generator=torch.Generator().manual_seed(3)
    )
    # the noise of each example comes from its own stream (pellucid._random)
    streams = example_generators(torch.Generator().manual_seed(3), 3)
    eps = per_example(streams, lambda g: torch.randn((6, 5), generator=g, dtype=D))
    sigma = 0.2 * (x.max(dim=1).values - x.min(dim=1).values)
    noisy = x[:, None] + sigma[:, None, None] * eps
    manual = torch.stack([saliency(net, noisy[i], target=1).attributions.mean(0) for i in range(3)])
    torch.testing.assert_close(e.attributions, manual)
    sq = smoothgrad(
        net,
        x,
        target=1,
        n_samples=6,
        noise=0.2,
        variant="smoothgrad_sq",
        generator=torch.Generator().manual_seed(3),
    )
    manual_sq = torch.stack(
        [(saliency(net, noisy[i], target=1).attributions ** 2).mean(0) for i in range(3)]
    )
    torch.testing.assert_close(sq.attributions, manual_sq)


def test_smoothgrad_wraps_integrated_gradients():
    net = _smooth()
    x = torch.randn(2, 5, dtype=D)
    e = smoothgrad(
        net,
        x,
        target="predicted",
        base="integrated_gradients",
        n_samples=3,
        explain_kwargs={"n_steps": 8},
        generator=torch.Generator().manual_seed(0),
    )
    assert e.attributions.shape == x.shape
    assert e.params["base"] == "integrated_gradients"
    assert e.params["explain_kwargs"]["n_steps"] == 8


# ---------------------------------------------------------------- layers and baselines
class _TokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(11, 4)
        self.head = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(tokens).mean(dim=1))


def test_ig_through_the_embedding_of_a_token_model():
    model = _TokenModel().to(D)
    tokens = torch.randint(1, 11, (3, 6))
    e = integrated_gradients(model, tokens, target=1, layer="embedding", n_steps=64)
    assert e.attributions.shape == (3, 6, 4)
    assert e.params["layer"] == "embedding"
    assert e.extras["completeness_gap"].abs().max() < 1e-6
    # A padding-token baseline is mapped through the embedding.
    pad = torch.zeros(6, dtype=torch.long)
    e_pad = integrated_gradients(model, tokens, target=1, layer="embedding", baseline=pad)
    torch.testing.assert_close(e_pad.baseline[0], model.embedding.weight[0].detach().expand(6, 4))
    # Equal to IG of the head on the embeddings directly.
    direct = integrated_gradients(
        lambda h: model.head(h.mean(dim=1)), e.inputs, target=1, n_steps=64
    )
    torch.testing.assert_close(e.attributions, direct.attributions)


def test_saliency_at_a_layer_and_layer_errors():
    model = _TokenModel().to(D)
    tokens = torch.randint(0, 11, (2, 5))
    assert saliency(model, tokens, target=0, layer=model.embedding).attributions.shape == (2, 5, 4)
    with pytest.raises(ValueError, match="must name a submodule.*embedding"):
        saliency(model, tokens, target=0, layer="embeding")
    with pytest.raises(TypeError, match="floating-point"):
        saliency(model, tokens, target=0)


def test_baselines():
    net = _cnn()
    x = torch.rand(2, 1, 8, 8, dtype=D)
    bg = torch.rand(5, 1, 8, 8, dtype=D)
    e = integrated_gradients(net, x, target=0, baseline="mean", background=bg, n_steps=4)
    torch.testing.assert_close(e.baseline, bg.mean(0, keepdim=True).expand_as(x))
    blur = integrated_gradients(net, x, target=0, baseline="blur", n_steps=4).baseline
    assert blur.shape == x.shape and blur.std() < x.std()
    u1 = integrated_gradients(
        net, x, target=0, baseline="uniform", n_steps=4, generator=torch.Generator().manual_seed(1)
    )
    u2 = integrated_gradients(
        net, x, target=0, baseline="uniform", n_steps=4, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(u1.attributions, u2.attributions, rtol=0, atol=0)
    scalar = integrated_gradients(net, x, target=0, baseline=0.5, n_steps=4).baseline
    torch.testing.assert_close(scalar, torch.full_like(x, 0.5))


# ---------------------------------------------------------------- extra arguments, outputs
def test_forward_args_and_tuple_outputs():
    net = _smooth()

    class WithArgs(nn.Module):
        def forward(self, x, scale):
            return net(x) * scale, "aux"

    x = torch.randn(3, 5, dtype=D)
    scale = torch.tensor([[1.0], [2.0], [3.0]], dtype=D)
    e = integrated_gradients(
        WithArgs(), x, target=0, forward_args=(scale,), output=0, n_steps=16, batch_size=5
    )
    ref = torch.cat(
        [
            integrated_gradients(
                lambda z, s=s: net(z) * s, x[i : i + 1], target=0, n_steps=16
            ).attributions
            for i, s in enumerate(scale)
        ]
    )
    torch.testing.assert_close(e.attributions, ref)


# ---------------------------------------------------------------- bad input
def test_bad_inputs_have_clear_messages():
    net = _smooth()
    x = torch.randn(2, 5, dtype=D)
    with pytest.raises(ValueError, match=r"`n_steps` must be .*>= 1"):
        integrated_gradients(net, x, target=0, n_steps=0)
    with pytest.raises(ValueError, match="`target` must be a class index in \\[0, 2\\]"):
        saliency(net, x, target=3)
    with pytest.raises(ValueError, match="3 outputs per example; `target` must say"):
        saliency(net, x)
    with pytest.raises(ValueError, match="must be finite"):
        saliency(net, torch.tensor([[float("nan")] * 5], dtype=D), target=0)
    with pytest.raises(ValueError, match="could not run on `inputs` of shape"):
        saliency(net, torch.randn(2, 4, dtype=D), target=0)
    with pytest.raises(ValueError, match=r"use shape \(5,\)"):
        integrated_gradients(net, x, target=0, baseline=torch.zeros(3, dtype=D))
    with pytest.raises(ValueError, match="needs `background=`"):
        integrated_gradients(net, x, target=0, baseline="mean")
    with pytest.raises(ValueError, match="Did you mean 'gausslegendre'"):
        integrated_gradients(net, x, target=0, quadrature="gauss")
    with pytest.raises(ValueError, match="`layer` is required"):
        grad_cam(_cnn(), torch.rand(1, 1, 8, 8, dtype=D), target=0)
    with pytest.raises(ValueError, match="feature maps"):
        grad_cam(_cnn(), torch.rand(1, 1, 8, 8, dtype=D), target=0, layer="6")


def test_training_mode_warns_and_eval_mode_explains_in_eval():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Linear(8, 2)).to(D).train()
    x = torch.randn(2, 5, dtype=D)
    with pytest.warns(pellucid.PellucidWarning, match="training mode"):
        saliency(net, x, target=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = saliency(net, x, target=0, eval_mode=True).attributions
        b = saliency(net, x, target=0, eval_mode=True).attributions
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert net.training


# ---------------------------------------------------------------- captum (float64)
@pytest.mark.peer
@pytest.mark.parametrize("method", QUADRATURES)
def test_ig_matches_captum(method):
    from captum.attr import IntegratedGradients

    net = _cnn()
    x, b = torch.rand(3, 1, 8, 8, dtype=D), torch.rand(3, 1, 8, 8, dtype=D) * 0.1
    ours = integrated_gradients(net, x, target=2, baseline=b, n_steps=20, quadrature=method)
    theirs = IntegratedGradients(net).attribute(x, b, target=2, n_steps=20, method=method)
    if method == "riemann_trapezoid":
        # captum's trapezoid weights are 1/n (ends halved) and sum to 1 - 1/n; ours are
        # 1/(n - 1) and sum to 1, so ours is theirs times n / (n - 1).
        theirs = theirs * 20 / 19
    # captum builds its alphas in float32 (torch.linspace(...).tolist()): ~1e-8 relative.
    torch.testing.assert_close(ours.attributions, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.peer
def test_saliency_input_x_gradient_match_captum():
    from captum.attr import InputXGradient, Saliency

    net = _cnn()
    x = torch.rand(3, 1, 8, 8, dtype=D)
    torch.testing.assert_close(
        saliency(net, x, target=1).attributions,
        Saliency(net).attribute(x, target=1),
        rtol=1e-6,
        atol=1e-6,
    )
    torch.testing.assert_close(
        saliency(net, x, target=1, absolute=False).attributions,
        Saliency(net).attribute(x, target=1, abs=False),
        rtol=1e-6,
        atol=1e-6,
    )
    torch.testing.assert_close(
        input_x_gradient(net, x, target=1).attributions,
        InputXGradient(net).attribute(x, target=1),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.peer
def test_grad_cam_and_guided_grad_cam_match_captum():
    from captum.attr import GuidedGradCam, LayerGradCam

    net = _cnn()
    x = torch.rand(3, 1, 8, 8, dtype=D)
    ours = grad_cam(net, x, target=1, layer="2")
    theirs = LayerGradCam(net, net[2]).attribute(x, target=1, relu_attributions=True)
    torch.testing.assert_close(ours.extras["cam"], theirs, rtol=1e-6, atol=1e-6)
    ours_g = guided_grad_cam(net, x, target=1, layer="2", upsample="nearest")
    theirs_g = GuidedGradCam(net, net[2]).attribute(x, target=1)
    torch.testing.assert_close(ours_g.attributions, theirs_g, rtol=1e-6, atol=1e-6)


@pytest.mark.peer
def test_smoothgrad_matches_captum_noise_tunnel_in_expectation():
    from captum.attr import NoiseTunnel, Saliency

    net = _smooth()
    x = torch.randn(2, 5, dtype=D)
    sigma = 0.1
    rel = sigma / float((x.max(1).values - x.min(1).values)[0])
    ours = smoothgrad(
        net, x[:1], target=0, n_samples=4000, noise=rel, generator=torch.Generator().manual_seed(0)
    ).attributions
    torch.manual_seed(0)
    theirs = NoiseTunnel(Saliency(net)).attribute(
        x[:1], target=0, nt_type="smoothgrad", nt_samples=4000, stdevs=sigma
    )
    # Two independent Monte Carlo means of 4000 samples: agree to a few standard errors.
    torch.testing.assert_close(ours, theirs, rtol=0.05, atol=5e-3)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 3.0), n=st.integers(1, 4))
def test_ig_completeness_property(seed, scale, n):
    net = _smooth(seed)
    x = scale * torch.randn(n, 5, dtype=D)
    e = integrated_gradients(net, x, target=0, n_steps=50)
    diff = (e.extras["output"] - e.extras["baseline_output"]).abs()
    # Gauss-Legendre with 50 nodes on a tanh network: far below 1e-3 relative (+ rounding).
    assert (e.extras["completeness_gap"].abs() <= 1e-3 * diff + 1e-12).all()


class _AddInPlace(nn.Module):
    """A residual block that adds the identity in place, like torchvision's ResNet."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.inplace = inplace
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        if self.inplace:
            out += x
            return self.head(torch.relu_(out).flatten(1))
        return self.head(torch.relu(out + x).flatten(1))


@pytest.mark.parametrize("inplace_model", ["bn_relu", "residual"])
def test_layer_outputs_changed_in_place_later_are_explained_as_without(inplace_model):
    torch.manual_seed(0)
    if inplace_model == "bn_relu":
        layers = [nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True)]
        net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(144, 2)).to(D).eval()
        plain = nn.Sequential(*[nn.ReLU() if isinstance(m, nn.ReLU) else m for m in net]).eval()
        x, layer = torch.randn(3, 3, 8, 8, dtype=D), "1"
    else:
        net = _AddInPlace().to(D).eval()
        plain = _AddInPlace(inplace=False).to(D).eval()
        plain.load_state_dict(net.state_dict())
        x, layer = torch.randn(3, 3, 6, 6, dtype=D), "bn"
    cam = grad_cam(net, x, layer=layer, target=0)
    ig = integrated_gradients(net, x, layer=layer, target=0, n_steps=16)
    # the layer's own output (before the in-place change) is what is explained
    acts = []

    def record(module: nn.Module, args: object, out: torch.Tensor) -> None:
        acts.append(out.detach().clone())

    handle = dict(net.named_modules())[layer].register_forward_hook(record)
    net(x)
    handle.remove()
    torch.testing.assert_close(ig.inputs, acts[0], rtol=0, atol=0)
    # the same numbers as the model without in-place operations (float64: rounding only)
    torch.testing.assert_close(
        cam.attributions, grad_cam(plain, x, layer=layer, target=0).attributions
    )
    torch.testing.assert_close(
        ig.attributions,
        integrated_gradients(plain, x, layer=layer, target=0, n_steps=16).attributions,
    )


def test_grad_cam_on_tokens_drops_the_class_token_and_uses_the_patch_grid():
    from pellucid.attribution import grad_cam

    torch.manual_seed(3)
    embed, head = nn.Linear(3, 6), nn.Linear(6, 2)

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cls = nn.Parameter(torch.randn(1, 1, 3, dtype=torch.float64))
            self.embed, self.head = embed.double(), head.double()

        def forward(self, x):  # (N, 3, 4, 4) -> 16 tokens + a class token
            t = torch.cat([self.cls.expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], 1)
            return self.head(torch.tanh(self.embed(t)).mean(1))

    net = Tokens().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    e = grad_cam(net, x, layer="embed", target=1, reshape="tokens", relu=False)
    # closed form: activations and gradients of the 16 patch tokens on their 4x4 grid
    tokens = torch.cat([net.cls.expand(2, -1, -1), x.flatten(2).transpose(1, 2)], 1)
    acts = net.embed(tokens).detach().requires_grad_(True)
    (grads,) = torch.autograd.grad(net.head(torch.tanh(acts).mean(1))[:, 1].sum(), acts)
    a, g = (t[:, 1:].transpose(1, 2).reshape(2, 6, 4, 4) for t in (acts.detach(), grads))
    expected = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)
    torch.testing.assert_close(e.extras["cam"], expected, rtol=0, atol=1e-12)
    assert e.attributions.shape == x.shape and e.params["reshape"] == "tokens"
    with pytest.raises(ValueError, match="`reshape` must be None"):
        grad_cam(net, x, layer="embed", target=1, reshape="grid")
