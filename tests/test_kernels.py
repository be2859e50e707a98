"""The faster equivalent CPU kernels pellucid uses while it evaluates a model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pellucid
from pellucid._kernels import channels_last_pool, fast_kernels, fast_pools
from pellucid.models import SmallCNN


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


class _Pools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.MaxPool2d(2)
        self.b = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, idx = self.b(self.a(x))
        return out.view(out.shape[0], -1) + idx.view(idx.shape[0], -1)  # .view needs NCHW


def test_fast_kernels_leave_outputs_hooks_and_the_model_as_without_them():
    net, x = _Pools(), _tied(hw=16)
    seen = []
    user = net.a.register_forward_hook(lambda m, a, out: seen.append(out.is_contiguous()))
    pools = fast_pools(net)
    assert pools == (net.a, net.b)
    with torch.no_grad():
        plain = net(x)
        with fast_kernels(pools):
            assert "forward" in net.a.__dict__
            fast = net(x)
    assert torch.equal(fast, plain)
    assert seen == [True, True]  # the user's hook saw a contiguous output both times
    assert "forward" not in net.a.__dict__ and "forward" not in net.b.__dict__
    assert list(net.a._forward_hooks) == [user.id] and not net.a._forward_pre_hooks
    with pytest.raises(RuntimeError), torch.no_grad(), fast_kernels(pools):
        net(torch.zeros(2, 16, 1, 1))  # too small to pool: the model raises
    assert "forward" not in net.a.__dict__ and "forward" not in net.b.__dict__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_through_the_fast_pooling_are_identical(dtype):
    torch.manual_seed(0)
    net = SmallCNN().to(dtype).eval()
    x = torch.randn(6, 1, 8, 8, dtype=dtype)

    def grad(fast: bool) -> torch.Tensor:
        leaf = x.clone().requires_grad_(True)
        with fast_kernels(fast_pools(net) if fast else ()):
            out = net(leaf)
        return torch.autograd.grad(out[:, 2].sum(), leaf)[0]

    assert torch.equal(grad(True), grad(False))


def test_saliency_and_occlusion_do_not_change(monkeypatch):
    import pellucid._targets as targets

    torch.manual_seed(0)
    cnn, x = SmallCNN().eval(), torch.randn(4, 1, 8, 8)
    fast = [
        pellucid.occlusion(cnn, x, target=3, window=(1, 2, 2)).attributions,
        pellucid.saliency(cnn, x, target=3).attributions,
    ]
    monkeypatch.setattr(targets, "fast_pools", lambda model: ())
    plain = [
        pellucid.occlusion(cnn, x, target=3, window=(1, 2, 2)).attributions,
        pellucid.saliency(cnn, x, target=3).attributions,
    ]
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- channels-last networks
class _ViewNet(nn.Module):
    """Flattens an activation with ``.view``, which refuses channels-last memory."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 16 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.head(h.view(h.shape[0], -1))


def test_convnets_run_channels_last_with_the_same_attributions(monkeypatch):
    import pellucid._kernels as kernels
    from pellucid.models import TinyResNet

    torch.manual_seed(0)
    net, x = TinyResNet(in_channels=3, n_classes=4).eval(), torch.randn(3, 3, 32, 32)
    fast = pellucid.integrated_gradients(net, x, target=1, n_steps=8)
    sal = pellucid.saliency(net, x, target=1).attributions
    assert kernels._CHANNELS_LAST.get(net) is True
    assert sal.is_contiguous() and fast.attributions.is_contiguous()
    monkeypatch.setattr(kernels, "MIN_CHANNELS_LAST_PIXELS", 1 << 30)
    plain = pellucid.integrated_gradients(net, x, target=1, n_steps=8)
    # other convolution kernels: equal to float32 rounding
    torch.testing.assert_close(fast.attributions, plain.attributions, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sal, pellucid.saliency(net, x, target=1).attributions)


def test_a_model_that_refuses_channels_last_runs_as_given_and_is_remembered():
    import pellucid._kernels as kernels

    torch.manual_seed(0)
    net, x = _ViewNet(), torch.randn(2, 3, 16, 16)
    calls = []
    net.conv.register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    ours = pellucid.saliency(net, x, target=0).attributions
    assert kernels._CHANNELS_LAST.get(net) is False
    assert len(calls) == 2  # the refused channels-last call, then the call as given
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(net(leaf)[:, 0].sum(), leaf)
    torch.testing.assert_close(ours, expected.abs(), rtol=0, atol=0)
    calls.clear()
    pellucid.occlusion(net, x, target=0, window=(3, 4, 4), stride=(3, 4, 4))
    assert all(n > 0 for n in calls) and len(calls) == 2  # prepare, one chunk: no retries
    with pytest.raises(ValueError, match="could not run on `inputs`"):
        pellucid.saliency(net, torch.randn(2, 5, 16, 16), target=0)


def test_layer_methods_count_the_layer_anew_when_a_refused_layout_reruns_the_model(monkeypatch):
    import pellucid._kernels as kernels

    torch.manual_seed(0)
    net, x = _ViewNet(), torch.randn(2, 3, 16, 16)  # refuses channels-last: runs twice
    first = pellucid.integrated_gradients(net, x, target=1, layer="conv", n_steps=4)
    assert kernels._CHANNELS_LAST.get(net) is False
    assert first.inputs.is_contiguous()  # the layer's activations, as methods expect them
    monkeypatch.setattr(kernels, "MIN_CHANNELS_LAST_PIXELS", 1 << 30)
    plain = pellucid.integrated_gradients(net, x, target=1, layer="conv", n_steps=4)
    torch.testing.assert_close(first.attributions, plain.attributions, rtol=0, atol=0)


def test_grad_cam_on_a_channels_last_resnet_equals_the_contiguous_run(monkeypatch):
    import pellucid._kernels as kernels
    from pellucid.models import TinyResNet

    torch.manual_seed(0)
    net, x = TinyResNet(in_channels=3, n_classes=4).eval(), torch.randn(3, 3, 32, 32)
    fast = pellucid.grad_cam(net, x, target=2, layer="layers.1").attributions
    monkeypatch.setattr(kernels, "MIN_CHANNELS_LAST_PIXELS", 1 << 30)
    plain = pellucid.grad_cam(net, x, target=2, layer="layers.1").attributions
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-6)
