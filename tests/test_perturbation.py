"""Occlusion and feature ablation: closed forms, captum equality, masks, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pellucid import feature_ablation, occlusion

D = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")


def _linear(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Linear(6, 1).to(D)
    return net, torch.randn(4, 6, dtype=D), torch.randn(6, dtype=D)


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
        )
        .to(D)
        .eval()
    )


class _Counting(nn.Module):
    """Records the largest batch the model was called with."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.largest = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.largest = max(self.largest, x.shape[0])
        return self.inner(x)


def test_linear_closed_form():
    net, x, b = _linear()
    expected = net.weight.detach() * (x - b)
    torch.testing.assert_close(occlusion(net, x, baseline=b).attributions, expected)
    torch.testing.assert_close(feature_ablation(net, x, baseline=b).attributions, expected)


def test_occlusion_mean_over_covering_windows_and_uncovered_zero():
    net, x, _ = _linear()
    e = occlusion(net, x, window=2, stride=1)
    w = net.weight.detach()
    # window 2 stride 1: the drop of a window is w_i x_i + w_{i+1} x_{i+1}
    pair = (w * x)[:, :-1] + (w * x)[:, 1:]
    inner = (pair[:, :-1] + pair[:, 1:]) / 2
    torch.testing.assert_close(e.attributions[:, 1:-1], inner)
    torch.testing.assert_close(e.attributions[:, 0], pair[:, 0])
    e = occlusion(net, x, window=4, stride=4)  # the second window is clipped to 4..5
    torch.testing.assert_close(
        e.attributions[:, 4:], (w * x)[:, 4:].sum(1, keepdim=True).expand(4, 2)
    )
    assert e.extras["n_windows"] == 2
    e = occlusion(net, x, window=2, stride=3)  # features 2 and 5 are never covered
    assert torch.equal(e.attributions[:, [2, 5]], torch.zeros(4, 2, dtype=D))


@pytest.mark.peer
@pytest.mark.parametrize(("window", "stride"), [((2, 3, 3), (1, 2, 2)), ((1, 2, 2), (1, 1, 1))])
def test_occlusion_equals_captum(window, stride):
    from captum.attr import Occlusion

    net = _cnn()
    torch.manual_seed(1)
    x = torch.randn(3, 2, 6, 6, dtype=D)
    ours = occlusion(net, x, target=2, window=window, stride=stride, baseline=0.3)
    theirs = Occlusion(net).attribute(
        x,
        sliding_window_shapes=window,
        strides=stride,
        baselines=torch.full_like(x, 0.3),
        target=2,
        perturbations_per_eval=50,
    )
    # captum hands occlusion back in float32 whatever the input dtype (its window counts)
    torch.testing.assert_close(ours.attributions, theirs.to(D), rtol=1e-6, atol=1e-7)


@pytest.mark.peer
def test_feature_ablation_equals_captum_shared_and_per_example_masks():
    from captum.attr import FeatureAblation

    net = _cnn()
    torch.manual_seed(2)
    x = torch.randn(3, 2, 6, 6, dtype=D)
    shared = torch.arange(36).view(6, 6) // 9 % 4
    shared = shared.expand(2, 6, 6).clone()
    shared[1] += 4  # channel 2 has its own groups: 8 groups
    ours = feature_ablation(net, x, target=0, feature_mask=shared, baseline=-0.5)
    theirs = FeatureAblation(net).attribute(
        x, target=0, feature_mask=shared.unsqueeze(0), baselines=-0.5, perturbations_per_eval=20
    )
    torch.testing.assert_close(ours.attributions, theirs, rtol=1e-10, atol=1e-12)
    assert ours.extras["values"].shape == (3, 8)
    per = torch.stack([shared, (7 - shared), shared.flip(-1)])
    ours = feature_ablation(net, x, target=1, feature_mask=per)
    theirs = FeatureAblation(net).attribute(x, target=1, feature_mask=per)
    torch.testing.assert_close(ours.attributions, theirs, rtol=1e-10, atol=1e-12)


def test_groups_share_their_value_and_grid_mask():
    net = _cnn()
    x = torch.randn(2, 2, 6, 6, dtype=D)
    e = feature_ablation(net, x, target=1, feature_mask="grid", n_segments=4)
    assert e.extras["n_players"] == 4
    block = e.attributions[:, :, :3, :3]
    assert torch.equal(block, block[:, :1, :1, :1].expand_as(block))


def test_memory_bounded_by_batch_size_and_same_result():
    net = _Counting(_cnn())
    x = torch.randn(3, 2, 6, 6, dtype=D)
    whole = occlusion(net, x, target=0, window=(2, 2, 2))
    net.largest = 0
    small = occlusion(net, x, target=0, window=(2, 2, 2), batch_size=7)
    assert net.largest == 7
    torch.testing.assert_close(whole.attributions, small.attributions)
    net.largest = 0
    feature_ablation(net, x, target=0, batch_size=5)
    assert net.largest == 5


def test_bad_input_messages():
    net, x, _ = _linear()
    with pytest.raises(
        ValueError, match=r"`window` \(7,\) must fit in one example of shape \(6,\)"
    ):
        occlusion(net, x, window=7)
    with pytest.raises(ValueError, match="one entry per dimension"):
        occlusion(net, x, window=(1, 1))
    with pytest.raises(ValueError, match="`stride` must be an integer >= 1"):
        occlusion(net, x, stride=0)
    with pytest.raises(ValueError, match="shape of one example"):
        feature_ablation(net, x, feature_mask=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"no gaps\); ids \[1\] are missing"):
        feature_ablation(net, x, feature_mask=torch.tensor([0, 0, 2, 2, 3, 3]))
    with pytest.raises(TypeError, match="integer group ids"):
        feature_ablation(net, x, feature_mask=torch.zeros(6))
    with pytest.raises(ValueError, match="'grid', 'slic' or None"):
        feature_ablation(net, x, feature_mask="squares")
    with pytest.raises(ValueError, match="does not broadcast"):
        occlusion(net, x, baseline=torch.zeros(3, dtype=D))


def test_batch_aligned_forward_args_follow_their_example():
    class Scaled(nn.Module):
        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return (scale * x.sum(1)).unsqueeze(1)

    x, scale = torch.randn(3, 4, dtype=D), torch.tensor([1.0, -2.0, 3.0], dtype=D)
    for fn in (occlusion, feature_ablation):
        e = fn(Scaled(), x, forward_args=(scale,), batch_size=5)
        torch.testing.assert_close(e.attributions, scale[:, None] * x)


def test_occlusion_skips_windows_that_change_nothing():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(5, 12, dtype=torch.float64)
    x[:, :4] = 0.0  # equal to the baseline: those windows leave the input unchanged
    x[2, 6:9] = 0.0
    e = occlusion(net, x, target=1, window=3, stride=2)
    expected = torch.zeros_like(x)
    covered = torch.zeros(12, dtype=torch.float64)
    for start in range(0, 12, 2):  # captum's positions: the last window is clipped
        m = torch.zeros(12, dtype=torch.float64)
        m[start : start + 3] = 1.0
        drop = net(x)[:, 1] - net(x * (1 - m))[:, 1]
        expected += drop.detach().unsqueeze(1) * m
        covered += m
    torch.testing.assert_close(e.attributions, expected / covered)
    assert e.extras["n_evaluations"] == 5 * 6 - 5 - 1  # window 0 for all, window 6 for #2
    assert e.attributions[:, :2].abs().max() == 0  # only window 0 covers them
