"""Save/load round trips of pruned models, file size, and the measurement helpers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pellucid.models import SmallCNN, TinyResNet
from pellucid.pruning import io, measure, plan_channel_pruning, prune_magnitude_


def _structured(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyResNet(width=8).eval()
    plan_channel_pruning(model, torch.randn(1, 1, 8, 8), amount=0.5).apply_(model)
    return model


def test_structured_round_trip_through_factory(tmp_path):
    model = _structured()
    path = io.save(model, tmp_path / "m.safetensors", metadata={"amount": 0.5})
    back = io.load(path, lambda: TinyResNet(width=8))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    assert back.stem[0].out_channels == 4
    assert io.read_metadata(path) == {"amount": 0.5}
    # a state_dict of the pruned model loads into the model rebuilt from the spec
    rebuilt = io.from_bytes(io.to_bytes(model), lambda: TinyResNet(width=8))
    rebuilt.load_state_dict(model.state_dict())
    assert not list(tmp_path.glob(".*.tmp"))


def test_unstructured_round_trip_and_file_shrinks(tmp_path):
    torch.manual_seed(1)
    dense = SmallCNN().eval()
    sparse = prune_magnitude_(copy.deepcopy(dense), amount=0.9)
    io.save(dense, tmp_path / "dense.safetensors")
    io.save(sparse, tmp_path / "sparse.safetensors")
    dense_size = (tmp_path / "dense.safetensors").stat().st_size
    sparse_size = (tmp_path / "sparse.safetensors").stat().st_size
    assert sparse_size <= 0.25 * dense_size
    assert measure.serialized_size(sparse) == sparse_size
    back = io.load(tmp_path / "sparse.safetensors", SmallCNN)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(back(x), sparse(x), rtol=0, atol=0)
    assert measure.count_nonzeros(back) == measure.count_nonzeros(sparse)
    dense_file = io.to_bytes(sparse, sparse=False)
    assert len(dense_file) > 3 * sparse_size


def test_load_refuses_a_spec_that_does_not_fit(tmp_path):
    path = io.save(_structured(), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="spec does not fit.*'stem.0'"):
        io.load(path, SmallCNN)
    with pytest.raises(ValueError, match="spec does not fit"):
        io.load(path, lambda: TinyResNet(width=2))
    with pytest.raises(TypeError, match="`factory` must be a callable"):
        io.load(path, TinyResNet())  # an instance, not a factory
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ValueError, match="Not a pellucid pruned-model file"):
        io.load(tmp_path / "bad.safetensors", SmallCNN)


def test_counts_and_macs():
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 25, 3)
    )
    x = torch.zeros(2, 2, 5, 5)
    assert measure.count_parameters(net) == 4 * 2 * 9 + 100 * 3 + 3
    assert measure.macs(net, x) == 25 * 4 * 2 * 9 + 3 * 100
    assert measure.macs(net, x, per_example=False) == 2 * (25 * 4 * 2 * 9 + 3 * 100)
    prune_magnitude_(net, amount=0.5)
    assert measure.count_parameters(net) == 4 * 2 * 9 + 100 * 3 + 3
    assert measure.count_nonzeros(net) == (72 + 300) // 2 + 3


def test_latency_and_compare_report_measured_speedup():
    dense = TinyResNet(width=8).eval()
    pruned = _structured()
    x = torch.randn(1, 1, 8, 8)
    lat = measure.latency(dense, x, batch_size=4, warmup=1, n_repeats=3)
    assert lat.batch_size == 4 and lat.q1 <= lat.median <= lat.q3
    result = measure.compare(dense, pruned, x, batch_size=4, warmup=1, n_repeats=3)
    assert result["speedup"] == pytest.approx(
        result["dense"]["latency_s"] / result["pruned"]["latency_s"]
    )
    assert result["pruned"]["macs"] < result["dense"]["macs"]
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1"):
        measure.latency(dense, x, batch_size=0)


def test_activation_gradient_keeps_existing_grad_values():
    """It used to call .backward(), adding into the user's .grad tensors in place."""
    from pellucid.pruning.importance import activation_gradient

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = [(p.grad, p.grad.clone()) for p in net.parameters()]
    data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
    scores = activation_gradient(net, data, layers=["0", "2"])
    assert scores["0"].shape == (4,) and scores["0"].abs().sum() > 0
    for p, (obj, values) in zip(net.parameters(), before, strict=True):
        assert p.grad is obj and torch.equal(p.grad, values)


def test_model_guard_detects_grads_changed_in_place():
    from pellucid._state import model_guard

    net = nn.Linear(2, 2)
    net.weight.grad = torch.zeros(2, 2)
    with pytest.raises(RuntimeError, match=r"changed the values of 1 existing `.grad`"):
        with model_guard(net):
            net.weight.grad.add_(1.0)
    with model_guard(net):  # replacing a .grad is restored, not an error
        net.weight.grad = torch.ones(2, 2)
    assert torch.equal(net.weight.grad, torch.ones(2, 2))  # the object from entry, +1 above


def test_macs_still_counts_a_meta_device_model():
    """Meta models are refused where values matter, not for shape-only counting."""
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).to("meta")
    assert measure.macs(net, torch.randn(2, 4, device="meta")) == 48
