"""Attribution plots: they draw on the given Axes, return it, and refuse bad input clearly."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from pellucid import integrated_gradients
from pellucid.plot import attribution_bars, attribution_summary, image_attribution


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _image_explanation():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(72, 3))
    return integrated_gradients(net, torch.rand(3, 1, 8, 8), target=1, n_steps=4)


def test_image_overlay_draws_on_the_given_axes_with_a_signed_colorbar():
    e = _image_explanation()
    fig, ax = plt.subplots()
    assert image_attribution(e, index=2, ax=ax) is ax
    heat = ax.images[-1]
    low, high = heat.get_clim()
    assert low == pytest.approx(-high)  # signed maps are centred on zero
    assert len(fig.axes) == 2  # the colorbar
    assert ax.get_title() == "integrated_gradients"
    ax2 = image_attribution(e, absolute=True, colorbar=False)
    assert ax2.images[-1].get_clim()[0] == 0


def test_bars_show_the_top_k_signed_features_largest_on_top():
    values = torch.tensor([[0.5, -2.0, 0.1, 1.0]])
    ax = attribution_bars(values, names=["a", "b", "c", "d"], top_k=3)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "d", "b"]
    widths = [p.get_width() for p in ax.patches]
    assert widths == [0.5, 1.0, -2.0]


def test_summary_orders_features_by_mean_absolute_attribution():
    torch.manual_seed(0)
    values = torch.randn(30, 4) * torch.tensor([0.1, 3.0, 1.0, 0.01])
    ax = attribution_summary(values, names=list("abcd"), top_k=2)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["c", "b"]
    assert len(ax.collections) == 2


def test_bad_input_messages():
    with pytest.raises(TypeError, match="`explanation` must be an Explanation or a tensor"):
        attribution_bars([1.0, 2.0])
    with pytest.raises(ValueError, match="must hold images"):
        image_attribution(torch.randn(2, 5))
    with pytest.raises(ValueError, match="`names` must have one entry per feature \\(3\\)"):
        attribution_bars(torch.randn(1, 3), names=["a"])
    with pytest.raises(ValueError, match="`index`"):
        attribution_bars(torch.randn(2, 3), index=5)
