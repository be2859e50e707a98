"""Figures of the metrics, the surrogate and the probes: they draw what was computed."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

from pellucid import metrics
from pellucid.inspection import GlobalSurrogate, probe
from pellucid.plot.metrics import (
    metric_vs_sparsity,
    perturbation_curves,
    randomization_curves,
    surrogate_tree,
)
from pellucid.plot.probes import (
    activation_curves,
    activation_distributions,
    gradient_heatmap,
    weight_heatmap,
)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2))


def test_curve_plots_draw_the_mean_curve():
    net, x = model(), torch.randn(4, 5)
    dele = metrics.deletion_curve(net, x, torch.rand(4, 5), target=0, step=1)
    ax = perturbation_curves(dele)
    mean_line = ax.get_lines()[-1]
    torch.testing.assert_close(
        torch.as_tensor(mean_line.get_ydata()), dele.scores.double().mean(0), check_dtype=False
    )
    ins = metrics.insertion_curve(net, x, torch.rand(4, 5), target=0, step=1)
    fig, axes = plt.subplots(1, 2)
    assert perturbation_curves({"a": dele, "b": dele}, ax=axes[0]) is axes[0]
    assert perturbation_curves({"a": dele, "b": ins}, ax=axes[1]).get_xlabel().endswith("changed")
    with pytest.raises(TypeError, match="PerturbationCurve"):
        perturbation_curves([1, 2])


def test_randomization_and_trend_plots():
    net, x = model(), torch.randn(6, 5)
    check = metrics.model_randomization_check(net, x, "saliency", target=0)
    ax = randomization_curves([check, check])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["none", "2", "0"]
    ax = metric_vs_sparsity({"m": [(0.5, 1.0, float("nan")), (0.0, 2.0, 0.1)]}, ylabel="AUC")
    assert list(ax.get_lines()[0].get_xdata()) == [0.0, 0.5]
    with pytest.raises(TypeError, match="RandomizationCheck"):
        randomization_curves([1])


def test_surrogate_tree_plot():
    s = GlobalSurrogate(model(), max_depth=2, class_names=["no", "yes"]).fit(torch.randn(80, 5))
    ax = surrogate_tree(s)
    assert "fidelity" in ax.get_title() and ax.texts
    with pytest.raises(TypeError, match="fitted GlobalSurrogate"):
        surrogate_tree(GlobalSurrogate(model()))


def test_probe_plots():
    net = model()
    rec = probe(net, torch.randn(8, 5), target=1)
    ax = weight_heatmap(rec.weights, layer="2")
    assert ax.get_title() == "weights of 2 (2 x 6)"
    assert gradient_heatmap(rec.gradients).get_title() == "gradients of 0"
    ax = activation_distributions(rec.activations)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
    ax = activation_curves(rec.activation_functions)
    line = ax.get_lines()[0]
    assert min(line.get_ydata()) == 0.0  # ReLU
    with pytest.raises(ValueError, match="`layer` must be one of the recorded layers"):
        weight_heatmap(rec.weights, layer="7")
