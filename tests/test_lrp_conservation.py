"""LRP's conservation with constants: the relevance that biases, shifts, positional
parameters and class tokens absorb is measured site by site (``extras["absorbed"]``), so
that ``sum(attributions) + sum(absorbed) == f(x)``; ``ignore_bias=True`` (zennit's
``zero_params="bias"``) hands the biases' share to the inputs. Closed forms on hand-built
models in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pellucid import lrp

D = torch.float64
# Exact in exact arithmetic: float64 rounding over a few dozen O(1) operations.
EXACT = 1e-12


def _sum(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


class _Shifted(nn.Module):
    """``fc2(relu(fc1(x) + pos))``: a bias in each layer and an additive parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)
        self.pos = nn.Parameter(torch.randn(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x) + self.pos))


def _shifted() -> tuple[_Shifted, torch.Tensor]:
    torch.manual_seed(0)
    net = _Shifted().to(D).eval()
    with torch.no_grad():
        net.fc1.bias.normal_()
        net.fc2.bias.normal_()
    return net, torch.randn(3, 4, dtype=D)


def test_absorbed_relevance_closed_form():
    net, x = _shifted()
    e = lrp(net, x, target=1, rule="zero", epsilon=0.0)
    with torch.no_grad():
        u = net.fc1(x)
        live = (u + net.pos > 0).to(D)  # where the ReLU passes
        w2, b2 = net.fc2.weight[1], net.fc2.bias[1]
        f_x = net(x)[:, 1]
    # LRP-0 hands each layer's relevance to its terms in proportion: a bias b takes
    # b * (downstream gradient), the inputs take the rest.
    expected = {
        "fc2: linear": b2.expand(3),
        "pos: add": (live * w2 * net.pos).sum(1),
        "fc1: linear": (live * w2 * net.fc1.bias).sum(1),
    }
    assert set(e.extras["absorbed"]) == set(expected)
    for site, value in expected.items():
        torch.testing.assert_close(e.extras["absorbed"][site], value, rtol=0, atol=EXACT)
    torch.testing.assert_close(_sum(e.attributions), (live * w2 * (u - net.fc1.bias)).sum(1))
    assert e.extras["conservation_gap"].abs().max() < EXACT
    torch.testing.assert_close(
        e.extras["conservation_error"], -sum(expected.values()), rtol=0, atol=EXACT
    )
    assert all(v.abs().min() > 1e-3 for v in expected.values())  # every site takes a share
    torch.testing.assert_close(
        _sum(e.attributions) + sum(expected.values()), f_x, rtol=0, atol=EXACT
    )


def test_ignore_bias_hands_the_biases_share_to_the_inputs():
    net, x = _shifted()
    e = lrp(net, x, target=0, rule="zero", epsilon=0.0, ignore_bias=True)
    with torch.no_grad():
        u = net.fc1(x)
        a = torch.relu(u + net.pos)
        w2, b2 = net.fc2.weight[0], net.fc2.bias[0]
        f_x = net(x)[:, 0]
    # fc2 (bias ignored) hands all of f(x) to a, in proportion to a_j w2_j; of a_j's share,
    # pos takes pos_j / a_j, and fc1 (bias ignored) hands the rest, u_j / a_j, to x
    share = a * w2 * (f_x / (f_x - b2))[:, None]
    live = a > 0
    pos_share = torch.where(live, share * net.pos / torch.where(live, a, 1), 0).sum(1)
    absorbed = e.extras["absorbed"]
    torch.testing.assert_close(absorbed["pos: add"], pos_share, rtol=0, atol=EXACT)
    for site in ("fc1: linear", "fc2: linear"):  # the biases take nothing
        assert absorbed[site].abs().max() < EXACT
    torch.testing.assert_close(_sum(e.attributions), f_x - pos_share, rtol=0, atol=EXACT)
    assert e.extras["conservation_gap"].abs().max() < EXACT
    assert e.params["ignore_bias"] is True
    assert "bias ignored" in e.extras["rules"]["fc1: linear"]


class _Tokens(nn.Module):
    """A class token concatenated to linear token embeddings, a positional parameter added
    in place, an in-place ReLU, a batch norm and a mean-pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv1d(3, 5, 1)
        self.cls = nn.Parameter(torch.randn(1, 5, 1))
        self.pos = nn.Parameter(torch.randn(1, 5, 5))
        self.norm = nn.BatchNorm1d(5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), h], dim=2)
        h += self.pos
        h = self.norm(h).relu_()
        return self.head(h.mean(2))


def _tokens() -> nn.Module:
    torch.manual_seed(1)
    net = _Tokens().to(D)
    with torch.no_grad():
        net.norm.running_mean.normal_()
        net.norm.running_var.uniform_(0.5, 2.0)
        net.norm.bias.normal_()
    return net.eval()


@pytest.mark.parametrize("rule", ["epsilon", "gamma", "alpha_beta"])
def test_conservation_gap_with_class_token_in_place_ops_and_chunks(rule):
    net, x = _tokens(), torch.randn(4, 3, 4, dtype=D)
    whole = lrp(net, x, target=1, rule=rule, epsilon=1e-3)
    chunked = lrp(net, x, target=1, rule=rule, epsilon=1e-3, batch_size=1)
    with torch.no_grad():
        f_x = net(x)[:, 1]
    for e in (whole, chunked):
        assert e.extras["conservation_gap"].abs().max() < EXACT * f_x.abs().max()
        assert {"_Tokens: cat", "pos: add_", "norm: batch_norm"} <= set(e.extras["absorbed"])
    for site, value in whole.extras["absorbed"].items():
        torch.testing.assert_close(chunked.extras["absorbed"][site], value, rtol=0, atol=EXACT)
    # without a bias anywhere and LRP-0, nothing but the two constants absorbs relevance
    with torch.no_grad():
        net.embed.bias.zero_()
        net.head.bias.zero_()
        net.norm.running_mean.zero_()
        net.norm.bias.zero_()
    e = lrp(net, x, target=1, rule="zero", epsilon=0.0)
    takers = {k for k, v in e.extras["absorbed"].items() if v.abs().max() > EXACT}
    assert takers == {"_Tokens: cat", "pos: add_"}
    assert e.extras["conservation_gap"].abs().max() < EXACT


def test_ignore_bias_conserves_on_the_inputs_of_a_cnn():
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).to(D)
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[1].bias.normal_()
        net[0].bias.normal_()
    net.eval()
    x = torch.randn(2, 2, 4, 4, dtype=D)
    with torch.no_grad():
        f_x = net(x)[:, 2]
    plain = lrp(net, x, target=2, rule="zero", epsilon=0.0)
    assert plain.extras["conservation_error"].abs().max() > 1e-3  # the biases took a share
    e = lrp(net, x, target=2, rule="zero", epsilon=0.0, ignore_bias=True)
    torch.testing.assert_close(_sum(e.attributions), f_x, rtol=0, atol=EXACT)
    assert all(v.abs().max() < EXACT for v in e.extras["absorbed"].values())


def test_ignore_bias_must_be_a_bool():
    net, x = _shifted()
    with pytest.raises(TypeError, match="`ignore_bias` must be True or False; got 1"):
        lrp(net, x, ignore_bias=1)
