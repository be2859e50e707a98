"""Unstructured pruning says what it does: recurrent and attention weights are pruned and
counted, a layer pruned to nothing warns, and ``min_keep=`` keeps a floor per layer."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from pellucid.models import SequenceRNN
from pellucid.pruning import LayerCollapseWarning, magnitude_masks, prune_magnitude_, sparsity
from pellucid.pruning.importance import prunable_parameters


def _rnn(cell: str) -> nn.Module:
    torch.manual_seed(0)
    return SequenceRNN(5, 3, hidden=8, cell=cell).double()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_weights_are_pruned_like_torch_and_counted(cell):
    ours, ref = _rnn(cell), _rnn(cell)
    prune_magnitude_(ours, amount=0.5)
    names = ("weight_ih_l0", "weight_hh_l0")
    pairs = [(ref.rnn, n) for n in names] + [(ref.head, "weight")]
    prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=0.5)
    for n in names:  # the same masks as torch's own global pruning over every weight
        assert torch.equal(getattr(ours.rnn, n + "_mask"), getattr(ref.rnn, n + "_mask"))
    report = sparsity(ours)
    weights = [ours.rnn.weight_ih_l0, ours.rnn.weight_hh_l0, ours.head.weight]
    total = sum(w.numel() for w in weights)
    assert report.total == total and report.zeros == sum(int((w == 0).sum()) for w in weights)
    assert set(report.layers) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "head"}
    assert report.layers["rnn.weight_hh_l0"] > 0.2  # the recurrent weights really lost weights
    out = ours(torch.randn(2, 4, 5, dtype=torch.float64))  # and the pruned model still runs
    assert out.shape == (2, 3)
    assert prune.is_pruned(ours.rnn)


def test_attention_input_projection_is_pruned_and_counted():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2)
    assert sorted(prunable_parameters(mha)) == ["in_proj_weight", "out_proj"]
    prune_magnitude_(mha, amount=0.9, scope="layer")
    report = sparsity(mha)
    assert report.layers["in_proj_weight"] == pytest.approx(0.9, abs=0.01)
    assert report.overall == pytest.approx(0.9, abs=0.01)
    x = torch.randn(3, 1, 8)
    assert mha(x, x, x)[0].shape == (3, 1, 8)


def _lopsided() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 20), nn.ReLU(), nn.Linear(20, 2))
    with torch.no_grad():
        net[2].weight.mul_(1e-3)  # the head's weights are the smallest everywhere
    return net


def test_a_layer_pruned_to_nothing_warns_naming_it():
    net = _lopsided()
    with pytest.warns(LayerCollapseWarning, match=r"every weight of '2'.*min_keep"):
        prune_magnitude_(net, amount=0.7)
    assert sparsity(net).layers["2"] == 1.0


def test_min_keep_is_a_per_layer_floor():
    net = _lopsided()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerCollapseWarning)
        prune_magnitude_(net, amount=0.7, min_keep=5)
    kept = int(net[2].weight_mask.sum())
    assert kept == 5
    # the floor keeps the head's five largest weights
    top = net[2].weight_orig.abs().reshape(-1).topk(5).indices
    assert net[2].weight_mask.reshape(-1)[top].sum() == 5
    # the rest of the amount is taken as before: 0.7 of all weights, less the protected ones
    n = sum(p.numel() for p in (net[0].weight, net[2].weight))
    assert sparsity(net).zeros == round(0.7 * n)
    # fraction form, layer scope: the floor wins over the amount
    masks = magnitude_masks(_lopsided(), amount=0.99, scope="layer", min_keep=0.25)
    assert int(masks["0"].sum()) == 30 and int(masks["2"].sum()) == 10


def test_min_keep_is_validated():
    with pytest.raises(ValueError, match=r"`min_keep` must be a non-negative integer count"):
        prune_magnitude_(_lopsided(), amount=0.5, min_keep=-1)
    with pytest.raises(TypeError, match=r"`min_keep` must be .*got True"):
        prune_magnitude_(_lopsided(), amount=0.5, min_keep=True)
    with pytest.raises(ValueError, match=r"`min_keep`"):
        prune_magnitude_(_lopsided(), amount=0.5, min_keep=1.5)
