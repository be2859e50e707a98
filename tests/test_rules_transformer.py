"""Decomposition rules of transformers and modern CNNs: layer norm, GELU/SiLU/ReLU6/hardswish,
softmax attention (``nn.MultiheadAttention`` and ``F.scaled_dot_product_attention``) and
products of two input-dependent tensors, checked against closed forms and the axioms
(DeepLIFT's completeness, LRP's conservation) on small hand-built modules in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pellucid import UnsupportedOperationError, deeplift, exact_shapley, guided_backprop, lrp
from pellucid.attribution.rules import _paired

D = torch.float64
# Every decomposition below is exact in exact arithmetic; float64 rounding over a few
# dozen operations of O(1) values stays below 1e-12.
EXACT = 1e-12


def _sum(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


class _Block(nn.Module):
    """A pre-norm transformer block: attention through ``nn.MultiheadAttention`` (with a
    key-padding and a causal mask) or ``F.scaled_dot_product_attention``, then a GELU MLP."""

    def __init__(self, sdpa: bool, width: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.sdpa, self.heads = sdpa, heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 12), nn.Linear(12, width)

    def attend(self, y: torch.Tensor) -> torch.Tensor:
        b, n, d = y.shape
        if not self.sdpa:
            causal = torch.ones(n, n, dtype=torch.bool).triu(1)
            padding = torch.zeros(b, n, dtype=torch.bool)
            padding[:, -1] = True
            return self.attn(y, y, y, attn_mask=causal, key_padding_mask=padding)[0]
        qkv = self.qkv(y).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(a.transpose(1, 2).reshape(b, n, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attend(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class _Tiny(nn.Module):
    """Token embedding + positional parameter, two blocks, final norm, mean-pooled head."""

    def __init__(self, sdpa: bool) -> None:
        super().__init__()
        self.embed, self.pos = nn.Linear(4, 8), nn.Parameter(torch.randn(1, 5, 8))
        self.blocks = nn.Sequential(_Block(sdpa), _Block(sdpa))
        self.norm, self.head = nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.embed(x) + self.pos)
        return self.head(self.norm(h).mean(1))


def _tiny(sdpa: bool, bias: bool = True) -> _Tiny:
    torch.manual_seed(0)
    net = _Tiny(sdpa).to(D).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("weight") and p.ndim == 1:  # layer norms: not the identity
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias") or name == "pos":
                p.normal_() if bias else p.zero_()
    return net


@pytest.mark.parametrize("sdpa", [False, True], ids=["multihead", "sdpa"])
def test_deeplift_on_attention_blocks_is_complete(sdpa):
    net, x = _tiny(sdpa), torch.randn(3, 5, 4, dtype=D)
    for baseline in (None, torch.randn(3, 5, 4, dtype=D)):
        e = deeplift(net, x, target=1, baseline=baseline)
        b = torch.zeros_like(x) if baseline is None else baseline
        with torch.no_grad():  # the model's own forward (not the decomposed attention)
            diff = net(x)[:, 1] - net(b)[:, 1]
        torch.testing.assert_close(_sum(e.attributions), diff, rtol=0, atol=EXACT)
        assert e.extras["completeness_gap"].abs().max() < EXACT
    labels = set(e.extras["rules"].values())
    assert {"rescale (layer norm)", "rescale (softmax)", "midpoint (bilinear)"} <= labels
    assert "decomposed" in labels


@pytest.mark.parametrize("sdpa", [False, True], ids=["multihead", "sdpa"])
def test_deeplift_reference_strategies_agree_on_attention(sdpa, monkeypatch):
    net, x = _tiny(sdpa), torch.randn(3, 5, 4, dtype=D)
    joint = deeplift(net, x, target=2, baseline=0.5)
    monkeypatch.setattr(_paired, "REFERENCE_PASS", _paired.TwoPasses())
    separate = deeplift(net, x, target=2, baseline=0.5)
    torch.testing.assert_close(joint.attributions, separate.attributions, rtol=0, atol=EXACT)


@pytest.mark.parametrize("sdpa", [False, True], ids=["multihead", "sdpa"])
def test_lrp_conserves_relevance_on_bias_free_attention_blocks(sdpa):
    net, x = _tiny(sdpa, bias=False), torch.randn(3, 5, 4, dtype=D)
    e = lrp(net, x, target=1, rule="zero", epsilon=0.0)
    with torch.no_grad():
        f_x = net(x)[:, 1]
    torch.testing.assert_close(_sum(e.attributions), f_x, rtol=0, atol=EXACT)
    assert e.extras["rules"]["blocks.0.ln1: layer_norm"] == "epsilon(0), constant deviation"
    assert "constant (attention weights)" in e.extras["rules"].values()


class _Attention(nn.Module):
    """Single-head attention with a layer norm, bias-free; ``frozen`` holds the attention
    weights and the norm's deviation constant (CP-LRP's linearization, by hand)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(4, 4, bias=False) for _ in range(3))
        self.ln, self.head = nn.LayerNorm(4, bias=False), nn.Linear(4, 2, bias=False)
        self.frozen = False

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        if not self.frozen:
            return self.ln(x)
        deviation = (x.var(-1, unbiased=False, keepdim=True) + self.ln.eps).sqrt().detach()
        return (x - x.mean(-1, keepdim=True)) / deviation * self.ln.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        weights = torch.softmax(self.q(h) @ self.k(h).transpose(-2, -1), dim=-1)
        if self.frozen:
            weights = weights.detach()
        return self.head((weights @ self.v(h)).sum(1))


def test_lrp_zero_on_attention_is_input_times_gradient_of_the_linearized_model():
    torch.manual_seed(3)
    net, x = _Attention().to(D).eval(), torch.randn(2, 3, 4, dtype=D)
    with torch.no_grad():
        net.ln.weight.uniform_(0.5, 1.5)
    e = lrp(net, x, target=0, rule="zero", epsilon=0.0)
    net.frozen = True
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(leaf)[:, 0].sum(), leaf)
    torch.testing.assert_close(e.attributions, x * grad, rtol=0, atol=EXACT)


def test_deeplift_of_a_quadratic_form_is_its_shapley_value():
    # f(x) = (Ax) . (Bx): every term is a two-player product, whose Shapley value gives
    # each player half of the cross term: the midpoint rule's multiplier, exactly.
    torch.manual_seed(4)
    a, b = torch.randn(5, 3, dtype=D), torch.randn(5, 3, dtype=D)

    def model(x: torch.Tensor) -> torch.Tensor:
        return ((x @ a) * (x @ b)).sum(1, keepdim=True)

    x, base = torch.randn(3, 5, dtype=D), torch.randn(3, 5, dtype=D)
    ours = deeplift(model, x, target=0, baseline=base)
    shapley = exact_shapley(model, x, target=0, baseline=base)
    torch.testing.assert_close(ours.attributions, shapley.attributions, rtol=0, atol=1e-10)


def test_deeplift_softmax_over_two_logits_equals_the_sigmoid_secant():
    # softmax([h, 0])[0] = sigmoid(h): a function of one variable has one exact multiplier.
    torch.manual_seed(5)
    lin = nn.Linear(3, 1).to(D)

    def soft(x: torch.Tensor) -> torch.Tensor:
        h = lin(x)
        return torch.softmax(torch.cat([h, torch.zeros_like(h)], dim=1), dim=1)[:, :1]

    def sig(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(lin(x))

    x, base = torch.randn(4, 3, dtype=D), torch.randn(4, 3, dtype=D)
    ours = deeplift(soft, x, target=0, baseline=base)
    expected = deeplift(sig, x, target=0, baseline=base)
    torch.testing.assert_close(ours.attributions, expected.attributions, rtol=0, atol=EXACT)


def test_deeplift_layer_norm_tends_to_the_gradient_as_the_baseline_nears_the_input():
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6), nn.Linear(6, 1)).to(D).eval()
    x, step = torch.randn(2, 3, dtype=D), torch.randn(2, 3, dtype=D)
    e = deeplift(net, x, target=0, baseline=x - 1e-6 * step)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(leaf).sum(), leaf)
    # multipliers are secants over a 1e-6 step: equal to the gradient up to O(1e-6)
    torch.testing.assert_close(e.attributions / 1e-6, step * grad, rtol=1e-5, atol=1e-5)


def test_lrp_layer_norm_matches_the_closed_form():
    # f = v . LN(x) (no biases), the deviation s held constant: R_i = x_i / s (w_i v_i -
    # mean(w v)); it sums to f(x) because sum(x_i - mean x) w_i v_i / s = f(x).
    torch.manual_seed(7)
    ln, head = nn.LayerNorm(5, bias=False).to(D), nn.Linear(5, 1, bias=False).to(D)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
    net = nn.Sequential(ln, head).eval()
    x = torch.randn(3, 5, dtype=D)
    e = lrp(net, x, target=0, rule="zero", epsilon=0.0)
    s = (x.var(1, unbiased=False, keepdim=True) + ln.eps).sqrt()
    wv = (ln.weight * head.weight[0]).detach()
    torch.testing.assert_close(e.attributions, x / s * (wv - wv.mean()), rtol=0, atol=EXACT)


@pytest.mark.parametrize("act", [nn.GELU, nn.SiLU, nn.Hardswish, nn.ReLU6, nn.Tanh])
def test_lrp_passes_relevance_through_activations_unchanged(act):
    # Linear -> act -> Linear, no biases: R_x = x * W1^T (v * act(z) / z).
    torch.manual_seed(8)
    w1, v = nn.Linear(4, 6, bias=False).to(D), nn.Linear(6, 1, bias=False).to(D)
    net = nn.Sequential(w1, act(), v).eval()
    x = 3 * torch.randn(3, 4, dtype=D)  # ReLU6 saturates on some units
    e = lrp(net, x, target=0, rule="zero", epsilon=0.0)
    z = w1(x).detach()
    expected = x * ((v.weight * act()(z) / z) @ w1.weight).detach()
    torch.testing.assert_close(e.attributions, expected, rtol=0, atol=EXACT)
    torch.testing.assert_close(_sum(e.attributions), net(x)[:, 0].detach(), rtol=0, atol=EXACT)


def test_guided_backprop_and_lrp_accept_relu6():
    torch.manual_seed(9)
    w1, w2 = nn.Linear(4, 6).to(D), nn.Linear(6, 2).to(D)
    net = nn.Sequential(w1, nn.ReLU6(inplace=True), w2).eval()
    x = 4 * torch.randn(3, 4, dtype=D)
    z = w1(x).detach()
    active = ((z > 0) & (z < 6)).to(D)
    expected = (w2.weight[1].detach().clamp(min=0) * active) @ w1.weight.detach()
    e = guided_backprop(net, x, target=1)
    torch.testing.assert_close(e.attributions, expected, rtol=0, atol=EXACT)
    assert e.extras["rules"]["1: hardtanh"] == "guided"
    assert lrp(net, x, target=1).extras["rules"]["1: hardtanh"] == "identity"


class _Mobile(nn.Module):
    """MobileNet-style ops: depthwise conv, BN, ReLU6, hardswish, squeeze-excitation gate."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU6())
        self.dw = nn.Conv2d(6, 6, 3, groups=6)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(6, 3, 1), nn.SiLU())
        self.se_out, self.head = nn.Conv2d(3, 6, 1), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.hardswish(self.dw(self.conv(x)))
        h = h * torch.sigmoid(self.se_out(self.se(h)))
        return self.head(h.mean((2, 3)))


def test_deeplift_on_mobile_ops_is_complete():
    torch.manual_seed(10)
    net, x = _Mobile().to(D).eval(), torch.randn(3, 2, 8, 8, dtype=D)
    e = deeplift(net, x, target=2)
    assert e.extras["completeness_gap"].abs().max() < EXACT
    assert e.extras["rules"]["_Mobile: mul"] == "midpoint (bilinear)"  # the gate


def _keyed(add_bias_kv: bool) -> nn.Module:
    attn = nn.MultiheadAttention(4, 1, batch_first=True, add_bias_kv=add_bias_kv).to(D).eval()

    class _Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = attn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x)[0].sum(1)

    return _Net()


def test_unsupported_parts_of_attention_and_products_are_refused_by_name():
    x = torch.randn(2, 3, 4, dtype=D)
    with pytest.raises(UnsupportedOperationError, match="`multi_head_attention_forward`.*bias_k"):
        deeplift(_keyed(True), x, target=0)
    with pytest.raises(UnsupportedOperationError, match="guided_backprop.*`gelu`"):
        guided_backprop(nn.Sequential(nn.Linear(4, 4), nn.GELU()).to(D), x[:, 0], target=0)
    with pytest.raises(UnsupportedOperationError, match="deeplift has no rule for .*`div`"):
        deeplift(lambda t: t / t.sum(1, keepdim=True), x[:, 0], target=0)

    def dropped(t: torch.Tensor) -> torch.Tensor:
        q = t.unsqueeze(1)
        return F.scaled_dot_product_attention(q, q, q, dropout_p=0.5).flatten(1)

    with pytest.raises(UnsupportedOperationError, match="`scaled_dot_product_attention`.*drop"):
        lrp(dropped, x, target=0)
