"""Unstructured pruning: torch-identical masks, exact counts, optimizer steps, permanence."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from pellucid.models import SmallCNN
from pellucid.pruning import (
    apply_masks_,
    importance,
    magnitude_masks,
    make_permanent_,
    prune_magnitude_,
    prune_threshold_,
    sparsity,
)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 10)
        self.b = nn.Linear(10, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _fresh(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _Net().double()


def _named(net):
    return {"a": net.a, "b": net.b}


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.9, 7])
def test_layer_masks_equal_torch_l1_unstructured(amount):
    ours, ref = _fresh(), _fresh()
    prune_magnitude_(ours, amount=amount, scope="layer")
    for module in _named(ref).values():
        prune.l1_unstructured(module, "weight", amount=amount)
    for name in ("a", "b"):
        torch.testing.assert_close(
            getattr(ours, name).weight_mask, getattr(ref, name).weight_mask, rtol=0, atol=0
        )


@pytest.mark.parametrize("amount", [0.25, 0.8, 11])
def test_global_masks_equal_torch_global_unstructured(amount):
    ours, ref = _fresh(1), _fresh(1)
    prune_magnitude_(ours, amount=amount, scope="global")
    prune.global_unstructured(
        [(ref.a, "weight"), (ref.b, "weight")], pruning_method=prune.L1Unstructured, amount=amount
    )
    for name in ("a", "b"):
        assert torch.equal(getattr(ours, name).weight_mask, getattr(ref, name).weight_mask)


def test_repeated_pruning_composes_like_torch():
    ours, ref = _fresh(2), _fresh(2)
    for amount in (0.5, 0.5, 3):
        prune_magnitude_(ours, amount=amount, scope="layer")
        for module in _named(ref).values():
            prune.l1_unstructured(module, "weight", amount=amount)
    for name in ("a", "b"):
        assert torch.equal(getattr(ours, name).weight_mask, getattr(ref, name).weight_mask)
    # 60 weights in a: 30 -> 15 -> 12 left
    assert int(ours.a.weight_mask.sum()) == 12


@settings(max_examples=25, deadline=None)
@given(amount=st.floats(0.0, 0.99), seed=st.integers(0, 10))
def test_exact_zero_count_at_smallest_magnitudes(amount, seed):
    net = _fresh(seed)
    n = net.a.weight.numel() + net.b.weight.numel()
    prune_magnitude_(net, amount=amount, scope="global")
    report = sparsity(net)
    assert report.zeros == round(amount * n)
    weights = torch.cat([net.a.weight_orig.flatten(), net.b.weight_orig.flatten()]).abs()
    masks = torch.cat([net.a.weight_mask.flatten(), net.b.weight_mask.flatten()])
    if 0 < report.zeros < n:
        assert weights[masks == 0].max() <= weights[masks == 1].min()


def test_masks_survive_optimizer_steps_and_torch_api():
    net = _fresh()
    prune_magnitude_(net, amount=0.7)
    mask = net.a.weight_mask.clone()
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        net(torch.randn(8, 6, dtype=torch.float64)).pow(2).sum().backward()
        opt.step()
    net(torch.randn(1, 6, dtype=torch.float64))
    assert torch.all(net.a.weight[mask == 0] == 0)
    assert prune.is_pruned(net)
    prune.remove(net.a, "weight")
    assert not hasattr(net.a, "weight_mask")
    assert torch.all(net.a.weight[mask == 0] == 0)


def test_make_permanent_keeps_outputs():
    net = _fresh()
    prune_magnitude_(net, amount=0.6)
    x = torch.randn(5, 6, dtype=torch.float64)
    before = net(x)
    make_permanent_(net)
    assert not prune.is_pruned(net)
    assert set(dict(net.named_parameters())) == {"a.weight", "a.bias", "b.weight", "b.bias"}
    torch.testing.assert_close(net(x), before, rtol=0, atol=0)


def test_threshold_pruning_and_sparsity_report():
    net = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.1, -0.2, 0.3], [-0.4, 0.05, 0.6]]))
    prune_threshold_(net, threshold=0.25)
    assert net.weight_mask.tolist() == [[0, 0, 1], [1, 0, 1]]
    report = sparsity(net)
    assert report.zeros == 3 and report.total == 6 and report.overall == 0.5
    assert "50.0%" in str(report)


def test_custom_importance_mapping_and_random():
    net = _fresh()
    scores = {"a": torch.arange(60.0).view(10, 6), "b": torch.arange(30.0).view(3, 10)}
    prune_magnitude_(net, amount=0.5, scope="layer", importance=scores)
    assert net.a.weight_mask.flatten()[:30].sum() == 0 and net.a.weight_mask.flatten()[30:].all()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    m1 = magnitude_masks(_fresh(), amount=0.5, importance="random", generator=g1)
    m2 = magnitude_masks(_fresh(), amount=0.5, importance="random", generator=g2)
    assert all(torch.equal(m1[k], m2[k]) for k in m1)


def test_data_driven_importance_shapes_and_guard():
    net = SmallCNN().train()
    data = (torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    flags = [m.training for m in net.modules()]
    t = importance.taylor(net, data, batch_size=8)
    g = importance.gradient_magnitude(net, data, batch_size=8)
    a = importance.activation_gradient(net, data)
    assert t["features.0"].shape == net.features[0].weight.shape
    assert torch.all(g["classifier.3"] >= 0)
    assert a["features.3"].shape == (32,)
    assert [m.training for m in net.modules()] == flags
    assert all(p.grad is None for p in net.parameters())
    prune_magnitude_(net, amount=0.5, importance=t)
    assert sparsity(net).overall == pytest.approx(0.5, abs=1e-4)
    assert importance.bn_scale(net)["features.1"].shape == (16,)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"amount": 1.0}, ValueError, r"`amount` must be < 1.0"),
        ({"amount": -0.1}, ValueError, r"`amount` must be >= 0.0"),
        ({"amount": 61, "scope": "layer"}, ValueError, r"at most the number of unpruned"),
        ({"amount": "half"}, TypeError, r"`amount` must be a fraction"),
        ({"amount": 0.5, "scope": "model"}, ValueError, r"`scope` must be one of"),
        ({"amount": 0.5, "layers": ["c"]}, ValueError, r"`layers` must name"),
        ({"amount": 0.5, "importance": "l3"}, ValueError, r"Did you mean"),
        ({"amount": 0.5, "importance": {"a": torch.ones(2)}}, ValueError, r"importance"),
    ],
)
def test_bad_input_leaves_model_untouched(kwargs, error, match):
    net = _fresh()
    state = copy.deepcopy(net.state_dict())
    with pytest.raises(error, match=match):
        prune_magnitude_(net, **kwargs)
    assert not prune.is_pruned(net)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_apply_masks_validates_every_mask_first():
    net = _fresh()
    with pytest.raises(ValueError, match="weight's shape"):
        apply_masks_(net, {"a": torch.ones(10, 6), "b": torch.ones(2, 2)})
    assert not prune.is_pruned(net)
