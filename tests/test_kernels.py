"""The evaluator's memory-layout policy: channels-last only where it measurably wins."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pellucid
import pellucid._kernels as kernels
from pellucid._evaluate import Forward
from pellucid._kernels import Layout, channels_last_pool, hooks_set_aside
from pellucid.models import TinyResNet


def _tied(n: int = 6, c: int = 16, hw: int = 8) -> torch.Tensor:
    torch.manual_seed(0)  # ReLU zeros and repeated values: many ties inside the windows
    return torch.randn(n, c, hw, hw).relu().mul(4).round()


@pytest.mark.parametrize("kwargs", [{}, {"stride": 1}, {"padding": 1}, {"ceil_mode": True}])
def test_channels_last_pooling_is_identical_also_on_ties(kwargs):
    x = _tied(hw=7)
    pool = torch.nn.functional.max_pool2d_with_indices
    fast_y, fast_i = channels_last_pool(pool, x, 3, **kwargs)
    y, i = pool(x, 3, **kwargs)
    assert torch.equal(fast_y, y) and torch.equal(fast_i, i)
    assert fast_y.is_contiguous() and fast_i.is_contiguous()


class _ViewNet(nn.Module):
    """Flattens an activation with ``.view``, which refuses channels-last memory."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 16 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.head(h.view(h.shape[0], -1))


def test_small_workloads_run_as_given_without_a_trial():
    torch.manual_seed(0)
    net, x = TinyResNet(in_channels=3, n_classes=4).eval(), torch.randn(3, 3, 32, 32)
    fwd = Forward(net, n_examples=3)
    fwd.expect(3)
    fwd(x)
    assert fwd.layout.channels_last is None and fwd.layout.trial == {}
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(net(leaf)[:, 1].sum(), leaf)
    ours = pellucid.saliency(net, x, target=1, absolute=False).attributions
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)  # the same kernels exactly


def test_large_workloads_measure_once_and_keep_no_state(monkeypatch):
    torch.manual_seed(0)
    net, x = TinyResNet(in_channels=3, n_classes=4).eval(), torch.randn(8, 3, 32, 32)
    fwd = Forward(net, n_examples=8)
    fwd.expect(kernels.MIN_EXPECTED_ROWS)
    with torch.no_grad():
        out = fwd(x)
    assert set(fwd.layout.trial) == {"given", "channels_last"}
    assert fwd.layout.channels_last in (True, False)
    assert out.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-5)
    assert Forward(net, n_examples=8).layout.channels_last is None  # nothing remembered
    assert not any("forward" in m.__dict__ for m in net.modules())


def test_a_model_that_refuses_channels_last_runs_as_given_unseen_by_its_hooks(monkeypatch):
    torch.manual_seed(0)
    net, x = _ViewNet(), torch.randn(2, 3, 16, 16)
    calls: list[int] = []
    net.conv.register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    monkeypatch.setattr(kernels, "MIN_EXPECTED_ROWS", 0)
    monkeypatch.setattr(kernels, "MIN_GAIN", 0.0)  # channels-last would be chosen if it ran
    ours = pellucid.integrated_gradients(net, x, target=0, n_steps=4)
    assert calls == [2, 8, 2]  # prepare, the path points, the baselines: no failed call seen
    monkeypatch.setattr(kernels, "MIN_EXPECTED_ROWS", 1 << 40)
    plain = pellucid.integrated_gradients(net, x, target=0, n_steps=4)
    torch.testing.assert_close(ours.attributions, plain.attributions, rtol=0, atol=0)
    with pytest.raises(ValueError, match="could not run on `inputs`"):
        pellucid.saliency(net, torch.randn(2, 5, 16, 16), target=0)


def test_forced_channels_last_agrees_and_returns_the_usual_layout():
    torch.manual_seed(0)
    net, x = TinyResNet(in_channels=3, n_classes=4).eval(), torch.randn(3, 3, 32, 32)
    leaf = x.clone().requires_grad_(True)
    fwd = Forward(net, n_examples=3, kernels="channels_last")
    out = fwd(leaf)
    (grad,) = torch.autograd.grad(out[:, 2].sum(), leaf)
    assert grad.is_contiguous() and out.is_contiguous()
    ref_leaf = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(net(ref_leaf)[:, 2].sum(), ref_leaf)
    torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-6)
    assert Forward(lambda t: t, n_examples=3, kernels="channels_last").layout.channels_last is False
    with pytest.raises(ValueError, match="`kernels` must be one of"):
        Layout(net, "fast")


def test_hooks_set_aside_come_back_also_on_errors():
    net = nn.Sequential(nn.Linear(2, 2))
    seen: list[int] = []
    handle = net[0].register_forward_hook(lambda m, a, out: seen.append(1))
    with pytest.raises(RuntimeError), hooks_set_aside(net):
        net(torch.zeros(1, 2))
        raise RuntimeError("inside")
    assert seen == [] and list(net[0]._forward_hooks) == [handle.id]
    net(torch.zeros(1, 2))
    assert seen == [1]


def test_one_channel_images_can_run_channels_last():
    # a (N, 1, H, W) image passes is_contiguous(channels_last) in the usual layout, yet a
    # convolution runs it, and every layer after it, in the usual layout: the policy must
    # look at the strides, or grayscale networks (digits, MNIST) never get the choice
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    x = torch.randn(4, 1, 8, 8)
    assert Layout.eligible(x)
    leaf = x.clone().requires_grad_(True)
    fwd = Forward(net, n_examples=4, kernels="channels_last")
    seen: list[bool] = []
    net[0].register_forward_hook(
        lambda m, a, out: seen.append(out.is_contiguous(memory_format=torch.channels_last))
    )
    out = fwd(leaf)
    assert seen == [True] and out.is_contiguous()
    (grad,) = torch.autograd.grad(out.sum(), leaf)
    ref_leaf = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(net(ref_leaf).sum(), ref_leaf)
    assert grad.is_contiguous()
    torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6)
    assert not Layout.eligible(torch.empty_like(x, memory_format=torch.channels_last))
