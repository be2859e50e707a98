"""Choosing a threshold: the clipping-bound sweep and the pruning-amount sweep, and their plots."""

from __future__ import annotations

import copy
import math
import warnings

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from pellucid import GradientMonitor
from pellucid.clipping import ClipSweep, sweep_clip_bounds
from pellucid.data import load_dataset
from pellucid.models import MLP
from pellucid.plot import clip_bound_sweep, pruning_sweep
from pellucid.pruning import (
    CollapsedModelWarning,
    LayerCollapseWarning,
    PruningSweep,
    plan_channel_pruning,
    prune_magnitude_,
    sweep_pruning,
)
from pellucid.training import Callback, evaluate, fit

matplotlib.use("Agg")


# -- clipping bound ---------------------------------------------------------------------------
def test_clip_sweep_percentiles_fractions_and_scales_in_closed_form():
    norms = [0.5, 1.0, 2.0, 4.0, 8.0, float("nan"), 16.0]
    sweep = sweep_clip_bounds(norms, percentiles=(90, 25, 50), suggest=50)
    finite = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
    expected = np.percentile(finite, [25, 50, 90])  # numpy's linear rule, sorted levels
    np.testing.assert_allclose(sweep.bounds.numpy(), expected, rtol=1e-12)
    assert sweep.percentiles.tolist() == [25.0, 50.0, 90.0]
    for bound, frac, scale in zip(expected, sweep.clipped_fraction, sweep.mean_scale, strict=True):
        assert frac.item() == pytest.approx((finite > bound).mean())
        assert scale.item() == pytest.approx(np.minimum(1.0, bound / finite).mean())
    assert sweep.suggested == pytest.approx(3.0)  # median of the finite norms
    assert sweep.nonfinite_steps == [5]
    given = sweep_clip_bounds(norms, bounds=[3.0, 1.0])
    assert given.bounds.tolist() == [1.0, 3.0]
    assert given.clipped_fraction.tolist() == pytest.approx([4 / 6, 3 / 6])
    assert all(math.isnan(p) for p in given.percentiles.tolist())


class _TotalNorm(Callback):
    """The global norm clip_grad_norm_ compares with max_norm, recorded every step."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_step(self, state):
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        self.norms.append(float(torch.nn.utils.get_total_norm(grads, norm_type=2.0)))


def test_clip_sweep_from_a_monitor_uses_the_global_norm_clip_grad_norm_sees():
    digits = load_dataset("digits")
    torch.manual_seed(0)
    net = MLP(64, 10, hidden=(32,))
    monitor, total = GradientMonitor(log_every=4), _TotalNorm()
    fit(net, (digits.X_train[:512], digits.y_train[:512]), epochs=2, monitor=monitor,
        callbacks=[total], progress=False)  # fmt: skip
    sweep = sweep_clip_bounds(monitor)
    torch.testing.assert_close(sweep.norms, torch.tensor(total.norms, dtype=torch.float64),
                               rtol=1e-5, atol=0)  # fmt: skip
    assert sweep.steps == list(range(len(total.norms)))
    # the dict written by the monitor gives the same sweep; `start` drops a warm-up
    again = sweep_clip_bounds(monitor.to_dict(), start=3)
    torch.testing.assert_close(again.norms, sweep.norms[3:])
    # the suggested bound (90th percentile) clips a tenth of the steps, up to rounding
    assert abs(float((sweep.norms > sweep.suggested).double().mean()) - 0.1) <= 1 / 16 + 1e-9
    only_head = sweep_clip_bounds(monitor, layers=["net.2"])
    assert torch.all(only_head.norms <= sweep.norms + 1e-12)


def test_clip_sweep_refuses_bad_input_clearly():
    with pytest.raises(TypeError, match="`source` must be a GradientMonitor"):
        sweep_clip_bounds("norms.csv")
    with pytest.raises(ValueError, match="`percentiles` must be"):
        sweep_clip_bounds([1.0, 2.0], percentiles=(50, 120))
    with pytest.raises(ValueError, match="`bounds` must be"):
        sweep_clip_bounds([1.0, 2.0], bounds=[0.0])
    with pytest.raises(ValueError, match="at least one finite"):
        sweep_clip_bounds([float("inf"), float("nan")])
    with pytest.raises(ValueError, match="`layers` must name monitored layers.*'fc9'"):
        sweep_clip_bounds({"steps": [0], "layer_norms": {"fc": [1.0]}}, layers=["fc9"])


def test_clip_sweep_plot_draws_every_candidate_with_what_it_clips():
    sweep = sweep_clip_bounds([1.0, 2.0, 4.0, float("nan"), 3.0, 50.0])
    assert isinstance(sweep, ClipSweep)
    ax = clip_bound_sweep(sweep)
    labels = ax.get_legend_handles_labels()[1]
    assert len(ax.get_lines()) == 1 + len(sweep.bounds)  # the history and one line per bound
    assert any(lab.startswith("p90 ") and "clips 20%" in lab for lab in labels)
    assert "non-finite (1)" in labels
    assert sweep.plot().get_ylabel() == "global gradient norm"
    with pytest.raises(TypeError, match="`sweep` must be a ClipSweep"):
        clip_bound_sweep([1.0, 2.0])


# -- pruning amount ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cancer_net():
    cancer = load_dataset("breast_cancer")
    torch.manual_seed(0)
    net = MLP(30, 2, hidden=(64, 32))
    fit(net, cancer.train, epochs=6, progress=False)
    return net, cancer


def _snapshot(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_pruning_sweep_matches_pruning_copies_by_hand_and_leaves_the_model_alone(cancer_net):
    net, cancer = cancer_net
    test = (cancer.X_test, cancer.y_test)
    net.train()
    net.net[0].weight.grad = torch.ones_like(net.net[0].weight)
    before = _snapshot(net)
    amounts = (0.5, 0.9, 0.99)
    sweep = sweep_pruning(net, test, amounts=amounts)
    # the user's model: same values, mode, gradient and no pruning parametrization
    assert net.training and not hasattr(net.net[0], "weight_mask")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(net.net[0].weight.grad, torch.ones_like(net.net[0].weight))
    net.net[0].weight.grad = None
    net.eval()
    assert sweep.amounts == [0.0, *amounts]
    for amount, score, measured, dead in zip(
        sweep.amounts, sweep.scores, sweep.sparsity, sweep.collapsed, strict=True
    ):
        by_hand = copy.deepcopy(net)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if amount:
                prune_magnitude_(by_hand, amount=amount)
        assert score == pytest.approx(evaluate(by_hand, test)["accuracy"], abs=0)
        assert measured == pytest.approx(amount, abs=2e-3)
        # a copy where a layer lost every weight is flagged with that layer's name
        named = [n for w in caught if issubclass(w.category, LayerCollapseWarning)
                 for n in ("net.0", "net.2", "net.4") if repr(n) in str(w.message)]  # fmt: skip
        assert dead == named
    assert sweep.collapsed[-1] and not any(sweep.collapsed[:-1])  # only at 99%
    assert sweep.best_amount == 0.9 and sweep.knee == 0.9
    assert sweep.parameters[0] > sweep.parameters[1] > sweep.parameters[2]


def test_structured_sweep_shrinks_copies_and_scores_them(cancer_net):
    net, cancer = cancer_net
    before = _snapshot(net)
    test = (cancer.X_test, cancer.y_test)
    sweep = sweep_pruning(net, test, kind="structured", example_inputs=cancer.X_test[:4],
                          amounts=(0.5, 0.75))  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    by_hand = copy.deepcopy(net)
    plan_channel_pruning(by_hand, cancer.X_test[:4], amount=0.5).apply_(by_hand)
    assert sweep.scores[1] == evaluate(by_hand, test)["accuracy"]
    dense = sum(p.numel() for p in net.parameters())
    assert sweep.parameters[1] == sum(int((p != 0).sum()) for p in by_hand.parameters())
    assert sweep.sparsity[1] == pytest.approx(
        1 - sum(p.numel() for p in by_hand.parameters()) / dense
    )
    assert sweep.sparsity[0] == 0.0 < sweep.sparsity[1] < sweep.sparsity[2]


def test_best_amount_and_knee_follow_the_metric_and_its_direction():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))

    def kept(model):  # 1.0 until more than half the weights are gone, then 0.2
        zeros = sum(int((m.weight == 0).sum()) for m in model if isinstance(m, nn.Linear))
        return 1.0 if zeros <= 0.55 * 120 else 0.2

    sweep = sweep_pruning(net, kept, amounts=[0.1 * i for i in range(1, 10)], tolerance=0.0)
    assert sweep.best_amount == pytest.approx(0.5) and sweep.knee == pytest.approx(0.5)
    # read as a loss, the same values say the opposite: lower is better, 0.8 is fine
    loss = sweep_pruning(net, kept, amounts=(0.3, 0.8), higher_is_better=False)
    assert loss.best_amount == pytest.approx(0.8)
    flipped = sweep_pruning(
        net, lambda m: 2.0 - kept(m), amounts=(0.3, 0.8), higher_is_better=False
    )
    assert flipped.best_amount == pytest.approx(0.3)
    calls = []
    sweep_pruning(net, kept, amounts=(0.3,), finetune=calls.append)
    assert len(calls) == 1 and hasattr(calls[0][0], "weight_mask") and calls[0] is not net[0]


def test_pruning_sweep_refuses_bad_input_before_pruning():
    net = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(TypeError, match="`metric` must be a callable"):
        sweep_pruning(net, "accuracy")
    with pytest.raises(ValueError, match="`amounts` must be"):
        sweep_pruning(net, lambda m: 0.0, amounts=(0.5, 1.0))
    with pytest.raises(ValueError, match="`kind` must be"):
        sweep_pruning(net, lambda m: 0.0, kind="channels")
    with pytest.raises(ValueError, match="`example_inputs` must be given"):
        sweep_pruning(net, lambda m: 0.0, kind="structured")
    with pytest.raises(TypeError, match="`model` must be an nn.Module"):
        sweep_pruning(lambda x: x, lambda m: 0.0)


def test_pruning_sweep_plot_marks_best_knee_and_collapse(cancer_net):
    net, cancer = cancer_net
    test = (cancer.X_test, cancer.y_test)
    sweep = sweep_pruning(net, test, amounts=(0.5, 0.99))
    assert isinstance(sweep, PruningSweep)
    ax = pruning_sweep({"unstructured": sweep})
    assert ax.get_xlabel() == "measured sparsity"
    line = ax.get_lines()[0]
    assert list(line.get_ydata()) == sweep.scores
    # ringed best amount, knee triangle, red x on the collapsed copy
    best, knee, dead = (c.get_offsets().tolist() for c in ax.collections)
    assert best == [[sweep.sparsity[1], sweep.scores[1]]]
    assert knee == [[sweep.sparsity[1], sweep.scores[1]]]
    assert dead == [[sweep.sparsity[2], sweep.scores[2]]]
    assert "unstructured: ≤0.5 within tolerance" in ax.get_legend_handles_labels()[1]
    with pytest.raises(ValueError, match="`x` must be"):
        pruning_sweep(sweep, x="params")


def _dies_without_an_empty_layer() -> nn.Module:
    """Two small-weight units carry the class signal; two large ones add the same value to
    both logits. Pruning half the weights (globally) removes the signal but leaves every
    layer some weights: the outputs still vary, and the copy predicts one class for all."""
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.1, 0.0], [-0.1, 0.0], [5.0, 5.0], [-5.0, 5.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[2.0, -2.0, 3.0, 3.0], [-2.0, 2.0, 3.0, 3.0]]))
        net[2].bias.copy_(torch.tensor([0.1, 0.0]))
    return net.eval()


@pytest.mark.parametrize("as_pair", [True, False])
def test_a_dead_copy_without_an_empty_layer_is_flagged_and_warns(as_pair):
    net = _dies_without_an_empty_layer()
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] < 0).long()  # class 1 where the signal says so: the dense model is right
    metric = (x, y) if as_pair else (lambda m: float((m(x).argmax(1) == y).float().mean()))
    with pytest.warns(CollapsedModelWarning, match=r"amount 0\.5: .*class 0 for 100% of 200"):
        sweep = sweep_pruning(net, metric, amounts=(0.5,), scope="global")
    assert sweep.scores[0] > 0.8 > 0.6 > sweep.scores[1]  # the dense model is alive
    assert sweep.collapsed == [[], []]  # and no layer lost every weight
    assert sweep.dead[0] is None and "class 0 for 100%" in sweep.dead[1]
    assert sweep.best_amount == 0.0 and sweep.to_dict()["dead"] == sweep.dead
