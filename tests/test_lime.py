"""LIME: closed forms in both samplers, the lime package, superpixels, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pellucid import grid_segments, lime, slic_segments

D = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _linear(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Linear(6, 1).to(D)
    return net, torch.randn(4, 6, dtype=D), torch.randn(6, dtype=D)


def test_interpretable_sampler_closed_form_unregularized():
    net, x, b = _linear()
    e = lime(net, x, baseline=b, alpha=0.0, n_samples=40, generator=_gen())
    torch.testing.assert_close(e.attributions, net.weight.detach() * (x - b))
    torch.testing.assert_close(e.extras["r2"], torch.ones(4, dtype=D))
    with torch.no_grad():
        torch.testing.assert_close(e.extras["intercept"], net(b.unsqueeze(0))[:, 0].expand(4))
    assert e.params["mode"] == "interpretable"


def test_tabular_sampler_closed_form_unregularized():
    net, x, _ = _linear()
    train = torch.randn(100, 6, dtype=D) * torch.arange(1, 7, dtype=D) + 3
    e = lime(net, x, train_data=train, alpha=0.0, n_samples=50, generator=_gen())
    w = net.weight.detach()
    std = train.std(0, unbiased=False)
    torch.testing.assert_close(e.extras["coefficients"], (w * std).expand(4, 6))
    torch.testing.assert_close(e.attributions, w * (x - train.mean(0)))
    torch.testing.assert_close(e.baseline, train.mean(0))
    assert e.params["mode"] == "tabular" and e.params["kernel_width"] == pytest.approx(
        0.75 * 6**0.5
    )


def test_ridge_shrinks_and_all_examples_are_solved_together():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 2)).to(D)
    x = torch.randn(5, 6, dtype=D)
    plain = lime(net, x, target=1, alpha=0.0, n_samples=200, generator=_gen(1))
    ridge = lime(net, x, target=1, alpha=10.0, n_samples=200, generator=_gen(1))
    assert (ridge.attributions.norm(dim=1) < plain.attributions.norm(dim=1)).all()
    # the perturbations are shared, so a batch equals its rows with the same generator
    rows = torch.cat(
        [
            lime(
                net, x[i : i + 1], target=1, alpha=0.0, n_samples=200, generator=_gen(1)
            ).attributions
            for i in range(5)
        ]
    )
    torch.testing.assert_close(plain.attributions, rows)
    assert ((plain.extras["r2"] > 0) & (plain.extras["r2"] <= 1)).all()


def test_superpixels_share_their_coefficient():
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 4)
    ).to(D)
    x = torch.randn(3, 1, 8, 8, dtype=D)
    for mask in ("grid", "slic"):
        e = lime(net, x, target=0, feature_mask=mask, n_segments=4, n_samples=64, generator=_gen(2))
        seg = grid_segments(x, 4) if mask == "grid" else slic_segments(x, 4)
        seg = seg.expand(x.shape)
        p = int(seg.max()) + 1
        assert e.extras["coefficients"].shape == (3, p)
        torch.testing.assert_close(
            e.attributions, e.extras["coefficients"].gather(1, seg.reshape(3, -1)).view_as(x)
        )


def test_grid_and_slic_segments():
    grid = grid_segments(torch.zeros(2, 3, 6, 9), n_segments=6)
    assert grid.shape == (3, 6, 9) and int(grid.max()) == 5
    assert torch.equal(grid[0], grid[2])
    assert torch.equal(grid_segments(torch.zeros(1, 10), 5), torch.arange(10) // 2)
    img = torch.zeros(2, 1, 8, 8)
    img[0, :, :, 4:] = 1.0  # halves along the grid: kept
    img[1, :, 1:6, 2:7] = 1.0  # an off-grid square: followed more closely than by the grid
    seg = slic_segments(img, n_segments=2)
    assert seg.shape == img.shape
    assert torch.equal(seg[0, 0, :, :4], seg[0, 0, :1, :1].expand(8, 4))
    assert seg[0, 0, 0, 0] != seg[0, 0, 0, 7]

    def spread(labels: torch.Tensor, image: torch.Tensor) -> float:
        return sum(
            float(image[labels == k].var(unbiased=False)) * int((labels == k).sum())
            for k in labels.unique()
        )

    slic = slic_segments(img[1:], n_segments=4)[0, 0]
    grid = grid_segments(img[1:], n_segments=4)[0]
    assert spread(slic, img[1, 0]) < spread(grid, img[1, 0])


@pytest.mark.peer
@pytest.mark.slow
def test_tabular_agrees_with_the_lime_package():
    import numpy as np
    from lime.lime_tabular import LimeTabularExplainer
    from scipy.stats import spearmanr

    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2)).to(D).eval()
    train = torch.randn(200, 8, dtype=D) * torch.linspace(0.5, 2, 8, dtype=D)
    x = torch.randn(4, 8, dtype=D)
    ours = lime(net, x, target=1, train_data=train, n_samples=4000, generator=_gen(3))

    def predict(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = net(torch.as_tensor(a, dtype=D))
        return torch.stack([torch.zeros_like(out[:, 1]), out[:, 1]], 1).numpy()

    explainer = LimeTabularExplainer(
        train.numpy(),
        discretize_continuous=False,
        sample_around_instance=True,
        feature_selection="none",
        random_state=0,
    )
    agree = 0
    for i in range(4):
        exp = explainer.explain_instance(
            x[i].numpy(), predict, labels=(1,), num_features=8, num_samples=4000
        )
        theirs = np.zeros(8)
        for j, v in exp.local_exp[1]:
            theirs[j] = v
        mine = ours.extras["coefficients"][i].numpy()
        assert spearmanr(mine, theirs).correlation > 0.9
        agree += len(set(np.argsort(-abs(mine))[:5]) & set(np.argsort(-abs(theirs))[:5])) >= 4
        assert ours.extras["r2"][i].item() == pytest.approx(exp.score, abs=0.05)
    assert agree >= 3


def test_bad_input_messages():
    net, x, _ = _linear()
    with pytest.raises(ValueError, match=r"`n_samples` must be an integer >= 8; got 5.*6 players"):
        lime(net, x, n_samples=5)
    with pytest.raises(ValueError, match="shape of one example"):
        lime(net, x, train_data=torch.randn(10, 4, dtype=D))
    with pytest.raises(ValueError, match="Pass one or the other"):
        lime(net, x, train_data=torch.randn(10, 6, dtype=D), feature_mask="grid")
    with pytest.raises(ValueError, match="`kernel_width` must be > 0.0"):
        lime(net, x, kernel_width=0.0)
    with pytest.raises(ValueError, match="`alpha` must be >= 0.0"):
        lime(net, x, alpha=-1.0)
    with pytest.raises(ValueError, match="must be finite"):
        lime(net, x, train_data=torch.full((3, 6), float("inf"), dtype=D))


def test_batch_aligned_forward_args_follow_their_example():
    class Scaled(nn.Module):
        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return (scale * x.sum(1)).unsqueeze(1)

    x, scale = torch.randn(3, 4, dtype=D), torch.tensor([1.0, -2.0, 3.0], dtype=D)
    e = lime(Scaled(), x, forward_args=(scale,), alpha=0.0, n_samples=30, generator=_gen())
    torch.testing.assert_close(e.attributions, scale[:, None] * x)
    train = torch.randn(20, 4, dtype=D)
    e = lime(
        Scaled(),
        x,
        forward_args=(scale,),
        alpha=0.0,
        n_samples=30,
        train_data=train,
        generator=_gen(),
        batch_size=7,
    )
    torch.testing.assert_close(e.attributions, scale[:, None] * (x - train.mean(0)))


@pytest.mark.peer
def test_documented_relation_to_the_lime_package_defaults():
    # The docstring says: our coefficients are lime's with sample_around_instance=True, and
    # lime's default (samples around the training mean) gives different weights. Both halves.
    import warnings

    import numpy as np
    from lime.lime_tabular import LimeTabularExplainer

    doc = lime.__doc__ or ""
    assert "sample_around_instance=True" in doc and "sample_around_instance=False" in doc
    assert "discretize_continuous=True" in doc and "not**" in doc
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2)).to(D).eval()
    train = torch.randn(200, 8, dtype=D) * torch.linspace(0.5, 2, 8, dtype=D)
    x = torch.randn(2, 8, dtype=D) * 2  # away from the training mean, where it matters
    ours = lime(net, x, target=1, train_data=train, n_samples=4000, generator=_gen(3))

    def predict(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = net(torch.as_tensor(a, dtype=D))[:, 1]
        return torch.stack([torch.zeros_like(out), out], 1).numpy()

    def gap(around: bool, i: int) -> float:
        explainer = LimeTabularExplainer(
            train.numpy(),
            discretize_continuous=False,
            sample_around_instance=around,
            feature_selection="none",
            random_state=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "probabilities do not sum to 1"
            exp = explainer.explain_instance(
                x[i].numpy(), predict, labels=(1,), num_features=8, num_samples=4000
            )
        theirs = np.zeros(8)
        for j, v in exp.local_exp[1]:
            theirs[j] = v
        mine = ours.extras["coefficients"][i].numpy()
        return float(np.linalg.norm(mine - theirs) / np.linalg.norm(theirs))

    for i in range(2):
        # sampling noise of 4000 draws on each side: measured 2-3%; 8% leaves room
        assert gap(True, i) < 0.08
        # lime's default sampling explains a different quantity: measured 21-40%
        assert gap(False, i) > 0.15
