"""The model-parameter randomization check (Adebayo et al. 2018)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pellucid import metrics
from pellucid._state import parameters_fingerprint

DT = torch.float64


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
    ).to(DT)


def returns_input(model, inputs, *, target=None):
    """An 'explanation' that ignores the model entirely."""
    return inputs.clone()


def test_flags_a_method_that_ignores_the_weights():
    model = net()
    x = torch.randn(16, 20, dtype=DT)
    check = metrics.model_randomization_check(
        model, x, returns_input, target="predicted", generator=torch.Generator().manual_seed(0)
    )
    assert check.layers == ("4", "2", "0")
    assert check.correlations.shape == (3, 16)
    torch.testing.assert_close(check.correlations, torch.ones(3, 16, dtype=DT))
    assert not check.passed.any() and check.fraction_passed == 0.0
    assert "FAILS" in check.summary() and "returns_input" in check.summary()


def test_plain_gradients_pass():
    model = net()
    before = parameters_fingerprint(model)
    x = torch.randn(16, 20, dtype=DT)
    check = metrics.model_randomization_check(
        model, x, "saliency", target="predicted", generator=torch.Generator().manual_seed(0)
    )
    # After randomizing every layer the gradient has nothing left in common with the original.
    assert check.final.abs().median() < 0.3
    assert check.fraction_passed >= 0.9
    assert "passes" in check.summary()
    for a, b in zip(before, parameters_fingerprint(model), strict=True):
        assert torch.equal(a, b)  # the user's model is never randomized


def test_layers_subset_measures_and_determinism():
    model = net()
    x = torch.randn(8, 20, dtype=DT)
    kw = {"target": 0, "layers": ["4"], "measure": "top_k"}
    a = metrics.model_randomization_check(
        model, x, "saliency", **kw, generator=torch.Generator().manual_seed(5)
    )
    b = metrics.model_randomization_check(
        model, x, "saliency", **kw, generator=torch.Generator().manual_seed(5)
    )
    assert a.layers == ("4",)
    torch.testing.assert_close(a.correlations, b.correlations)


def test_randomize_module_keeps_global_rng():
    layer = nn.Linear(4, 4)
    state = torch.random.get_rng_state()
    metrics.randomize_module_(layer, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.random.get_rng_state())
    param = nn.Module()
    param.p = nn.Parameter(torch.ones(3, 3))
    metrics.randomize_module_(param, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(param.p.detach(), torch.ones(3, 3))


def test_bad_input():
    model = net()
    x = torch.randn(2, 20, dtype=DT)
    with pytest.raises(TypeError, match="`model` must be an nn.Module"):
        metrics.model_randomization_check(lambda t: t, x, "saliency")
    with pytest.raises(ValueError, match="`layers` must name a submodule.*Did you mean"):
        metrics.model_randomization_check(model, x, "saliency", target=0, layers=["44"])
    with pytest.raises(ValueError, match="`threshold` must be <= 1.0"):
        metrics.model_randomization_check(model, x, "saliency", target=0, threshold=2.0)
    with pytest.raises(ValueError, match="`measure` must be one of"):
        metrics.model_randomization_check(model, x, "saliency", target=0, measure="x")
