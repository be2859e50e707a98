"""Weight clipping and max-norm constraints: closed forms, Keras parity, policies, fit."""

from __future__ import annotations

import pytest
import torch

from pellucid.clipping import (
    NonFiniteWeightError,
    WeightClipper,
    constrain_,
    max_norm,
    weight_clip,
)
from pellucid.models import MLP
from pellucid.training import fit


def test_weight_clip_is_the_entrywise_clamp():
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 4, generator=g, dtype=torch.float64))
    outside = (w.detach().abs() > 0.3).double().mean()
    expected = w.detach().clamp(-0.3, 0.3)
    stats = constrain_([w], weight_clip(0.3))
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=0)
    assert float(stats["changed"]) == pytest.approx(float(outside))


def test_max_norm_matches_keras_formula_per_unit():
    g = torch.Generator().manual_seed(1)
    conv = torch.nn.Conv2d(3, 6, 3).double()
    with torch.no_grad():
        units = torch.randn(6, 3, 3, 3, generator=g, dtype=torch.float64)
        conv.weight.copy_(units * torch.tensor([0.1, 1.0, 0.2, 1.0, 0.3, 1.0]).view(6, 1, 1, 1))
    w = conv.weight.detach().clone()
    bias = conv.bias.detach().clone()
    constrain_(conv, max_norm(2.0))
    # Keras MaxNorm: w * m / (eps + norm) above the bound, norm over every axis but the
    # unit's; units within the bound stay exactly as they are.
    norms = w.reshape(6, -1).norm(dim=1)
    assert (norms > 2.0).any() and (norms <= 2.0).any()  # both cases are exercised
    scale = torch.where(norms > 2.0, 2.0 / (norms + 1e-7), torch.ones_like(norms))
    expected = w * scale.reshape(6, 1, 1, 1)
    torch.testing.assert_close(conv.weight.detach(), expected, rtol=1e-12, atol=0)
    assert conv.weight.detach().reshape(6, -1).norm(dim=1).max() <= 2.0
    torch.testing.assert_close(conv.bias.detach(), bias, rtol=0, atol=0)  # no units: untouched


def test_nonfinite_policies_decide_before_changing_anything():
    a = torch.nn.Parameter(torch.tensor([5.0, -5.0]))
    b = torch.nn.Parameter(torch.tensor([float("nan"), 2.0]))
    with pytest.raises(NonFiniteWeightError, match="parameter 1.*left unchanged"):
        constrain_([a, b], weight_clip(1.0))
    assert a.tolist() == [5.0, -5.0]
    stats = constrain_([a, b], weight_clip(1.0), nonfinite="skip")
    assert bool(stats["skipped"]) and a.tolist() == [5.0, -5.0]
    constrain_([a, b], weight_clip(1.0), nonfinite="zero")
    assert a.tolist() == [1.0, -1.0] and b.tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="`value` must be > 0.0; got -1.0"):
        weight_clip(-1.0)
    with pytest.raises(ValueError, match="`nonfinite` must be one of"):
        constrain_([a], weight_clip(1.0), nonfinite="ignore")


def test_weight_clipper_in_fit_bounds_every_step():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 2, (64,), generator=g)
    net = MLP(4, 2)
    clipper = WeightClipper(max_norm(0.5))
    fit(net, (x, y), epochs=2, batch_size=16, lr=0.3, callbacks=[clipper], progress=False)
    for p in net.parameters():
        if p.ndim >= 2:
            assert p.detach().norm(dim=1).max() <= 0.5 + 1e-6
    summary = clipper.summary()
    assert summary["steps"] == 8 and summary["changed_fraction"] > 0
