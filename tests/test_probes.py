"""Probes: weights, activations and gradients per layer, with the model left untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pellucid.inspection import (
    activation_functions,
    probe,
    record_activations,
    record_gradients,
    record_weights,
)

DT = torch.float64


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)


def test_weights_are_copies():
    model = net()
    w = record_weights(model)
    assert list(w) == ["0", "2"]
    torch.testing.assert_close(w["0"], model[0].weight.detach())
    w["0"].zero_()
    assert model[0].weight.abs().sum() > 0


def test_activations_match_manual_forward_and_batching():
    model = net()
    x = torch.randn(7, 4, dtype=DT)
    acts = record_activations(model, x)
    assert list(acts) == ["0", "1", "2"]
    torch.testing.assert_close(acts["1"], torch.tanh(model[0](x)).detach())
    torch.testing.assert_close(acts["2"], model(x).detach())
    small = record_activations(model, x, layers=["1"], batch_size=2)
    torch.testing.assert_close(small["1"], acts["1"])


def test_weight_gradients_equal_autograd_of_the_loss():
    model = net()
    x = torch.randn(6, 4, dtype=DT)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    grads = record_gradients(model, x, labels=y, batch_size=4)
    loss = F.cross_entropy(model(x), y)
    expected = torch.autograd.grad(loss, [model[0].weight, model[2].weight])
    torch.testing.assert_close(grads["0"], expected[0])
    torch.testing.assert_close(grads["2"], expected[1])
    assert all(p.grad is None for p in model.parameters())


def test_target_and_activation_gradients():
    model = net()
    x = torch.randn(5, 4, dtype=DT)
    grads = record_gradients(model, x, target=1, wrt="activations", layers=["1", "2"])
    # d out[:, 1] / d out = one-hot column 1
    expected = torch.zeros(5, 3, dtype=DT)
    expected[:, 1] = 1.0
    torch.testing.assert_close(grads["2"], expected)
    torch.testing.assert_close(grads["1"], model[2].weight.detach()[1].expand(5, 5))


def test_probe_and_activation_functions():
    model = net()
    model[0].weight.requires_grad_(False)
    rec = probe(model, torch.randn(3, 4, dtype=DT), target=0)
    assert sorted(rec.gradients) == ["0", "2"]
    assert list(rec.activation_functions) == ["Tanh"]
    assert not model[0].weight.requires_grad and model[0].weight.grad is None
    assert not any(m._forward_hooks for m in model.modules())
    assert list(activation_functions(nn.Sequential(nn.ReLU(), nn.ReLU(), nn.GELU()))) == [
        "ReLU",
        "GELU",
    ]


def test_bad_input():
    model = net()
    x = torch.randn(3, 4, dtype=DT)
    with pytest.raises(TypeError, match="`model` must be an nn.Module"):
        record_weights(lambda t: t)
    with pytest.raises(ValueError, match="`layers` must name a submodule.*Did you mean"):
        record_activations(model, x, layers=["22"])
    with pytest.raises(ValueError, match="`labels` must have one entry per example"):
        record_gradients(model, x, labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="`wrt` must be one of"):
        record_gradients(model, x, target=0, wrt="bias")
    with pytest.raises(ValueError, match="has no `weight` to record"):
        record_weights(model, layers=["1"])
