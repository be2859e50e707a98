"""Transforms, chain, the in-place applier, the non-finite guard, GradScaler and fit()."""

from __future__ import annotations

import math

import pytest
import torch

from pellucid.clipping import (
    AutoClip,
    ClipStats,
    GradientClipper,
    NonFiniteGradientError,
    Scaling,
    ZClip,
    adaptive_clip,
    adaptive_clip_grad_,
    apply_,
    chain,
    clip_by_global_norm,
    clip_by_norm,
    clip_by_value,
    clip_grad_norm_,
    nonfinite_flags,
)
from pellucid.models import MLP
from pellucid.training import fit


def _net(scale: float = 100.0, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    net.double()
    net(torch.randn(9, 5, dtype=torch.float64)).pow(2).sum().mul(scale).backward()
    return net


def _grads(net):
    return [p.grad.clone() for p in net.parameters()]


def test_transforms_are_pure():
    net = _net()
    params = list(net.parameters())
    grads = [p.grad for p in params]
    copies = _grads(net)
    for t in (
        clip_by_global_norm(0.1),
        clip_by_value(0.01),
        clip_by_norm(0.1),
        adaptive_clip(0.01),
        chain(adaptive_clip(0.01), clip_by_global_norm(0.1)),
    ):
        out = t(grads, params)
        assert len(out.grads) == len(grads)
        for g, c in zip(grads, copies, strict=True):
            assert torch.equal(g, c)
        assert isinstance(out.stats, ClipStats)


@pytest.mark.parametrize(
    "make",
    [lambda: clip_by_global_norm(0.1), AutoClip, lambda: ZClip(warmup_steps=2)],
    ids=["global_norm", "autoclip", "zclip"],
)
def test_scaling_in_place_equals_the_pure_transform_bitwise(make):
    """apply_ multiplies a Scaling transform's gradients in place: the same numbers and stats
    as building the new gradients with the pure call and copying them back."""
    fast, pure = make(), make()
    assert isinstance(fast, Scaling)
    for seed in range(4):
        a, b = _net(scale=10.0**seed, seed=seed), _net(scale=10.0**seed, seed=seed)
        grads_a = [p.grad for p in a.parameters()]
        stats_a = apply_(fast, a)
        assert all(p.grad is g for p, g in zip(a.parameters(), grads_a, strict=True))
        params = list(b.parameters())
        out = pure([p.grad for p in params], params)
        for p, new in zip(params, out.grads, strict=True):
            p.grad.copy_(new)
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p.grad, q.grad)
        for field in ("norm_before", "norm_after", "clip_coef", "threshold", "clipped"):
            got, want = getattr(stats_a, field), getattr(out.stats, field)
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=field)


def test_apply_global_norm_equals_torch_bitwise():
    a, b = _net(), _net()
    stats = apply_(clip_by_global_norm(0.3), a)
    norm = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.3)
    assert torch.equal(stats.norm_before, norm)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    row = stats.to_dict()
    assert row["clipped"] and not row["nonfinite"] and not row["skipped"]
    assert row["norm_after"] == pytest.approx(0.3, rel=1e-5)
    assert row["threshold"] == 0.3


def test_apply_value_and_agc_equal_the_functional_forms():
    a, b = _net(), _net()
    apply_(clip_by_value(0.05), a)
    torch.nn.utils.clip_grad_value_(b.parameters(), 0.05)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    a, b = _net(), _net()
    stats = apply_(adaptive_clip(0.01), a)
    adaptive_clip_grad_(b, 0.01)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=0)
    assert bool(stats.clipped)
    after = torch.cat([p.grad.flatten() for p in a.parameters()]).norm()
    torch.testing.assert_close(stats.norm_after, after)


def test_chain_agc_then_global_norm():
    a, b = _net(), _net()
    stats = apply_(chain(adaptive_clip(0.5), clip_by_global_norm(0.2)), a)
    adaptive_clip_grad_(b, 0.5)
    clip_grad_norm_(b, 0.2)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=0)
    first = torch.cat([g.flatten() for g in _grads(_net())]).norm()
    torch.testing.assert_close(stats.norm_before, first)
    assert float(stats.norm_after) <= 0.2 * (1 + 1e-6)
    torch.testing.assert_close(stats.clip_coef, stats.norm_after / stats.norm_before)


def test_stats_fields_stay_on_device_as_tensors():
    stats = apply_(clip_by_global_norm(1e9), _net())
    for name in ("norm_before", "norm_after", "clip_coef", "clipped", "nonfinite", "skipped"):
        assert isinstance(getattr(stats, name), torch.Tensor)
    assert not stats.to_dict()["clipped"]
    assert "ClipStats(" in repr(stats)


def _poisoned(value: float = math.nan):
    net = _net()
    net[2].weight.grad[0, 0] = value
    return net


def _raw(net):
    return [p.grad.clone().view(torch.int64) for p in net.parameters()]


def test_nonfinite_flags_per_tensor():
    flags = nonfinite_flags([torch.ones(2), torch.tensor([math.inf]), torch.zeros(0)])
    assert flags.tolist() == [False, True, False]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_raise_names_the_parameter_and_leaves_gradients_bit_identical(value):
    net = _poisoned(value)
    before = _raw(net)
    with pytest.raises(NonFiniteGradientError, match=r"2\.weight \(shape \(3, 7\)"):
        apply_(clip_by_global_norm(1.0), net, nonfinite="raise")
    for raw, p in zip(before, net.parameters(), strict=True):
        assert torch.equal(raw, p.grad.view(torch.int64))


def test_skip_leaves_gradients_and_flags_the_step():
    net = _poisoned()
    before = _raw(net)
    stats = apply_(clip_by_global_norm(1.0), net, nonfinite="skip")
    assert stats.to_dict()["skipped"] and stats.to_dict()["nonfinite"]
    for raw, p in zip(before, net.parameters(), strict=True):
        assert torch.equal(raw, p.grad.view(torch.int64))


def test_zero_replaces_only_the_bad_entries_then_clips():
    net = _poisoned(math.inf)
    clean = _net()
    clean[2].weight.grad[0, 0] = 0.0
    stats = apply_(clip_by_global_norm(0.5), net, nonfinite="zero")
    clip_grad_norm_(clean, 0.5)
    for p, q in zip(net.parameters(), clean.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    assert stats.to_dict()["nonfinite"] and not stats.to_dict()["skipped"]


def test_propagate_is_torchs_behaviour():
    a, b = _poisoned(), _poisoned()
    apply_(clip_by_global_norm(1.0), a, nonfinite="propagate")
    torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, equal_nan=True)


def test_bad_transform_arguments():
    with pytest.raises(ValueError, match="`nonfinite` must be one of"):
        apply_(clip_by_global_norm(1.0), _net(), nonfinite="ignore")
    with pytest.raises(TypeError, match="item 1 is a int"):
        chain(clip_by_value(1.0), 3)
    with pytest.raises(ValueError, match="`max_norm` must be > 0"):
        clip_by_global_norm(0)
    with pytest.raises(TypeError, match="`transform` must be a gradient transform"):
        GradientClipper("global")


def test_gradscaler_unscale_then_clip():
    """With GradScaler: unscale_, then clip; the result equals clipping unscaled grads."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    net_a = torch.nn.Linear(5, 3)
    net_b = torch.nn.Linear(5, 3)
    net_b.load_state_dict(net_a.state_dict())
    opt_a = torch.optim.SGD(net_a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(net_b.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    loss = torch.nn.functional.mse_loss(net_a(x), y) * 100
    scaler.scale(loss).backward()
    scaler.unscale_(opt_a)
    norm_a = clip_grad_norm_(net_a.parameters(), 0.5)
    scaler.step(opt_a)
    scaler.update()
    (torch.nn.functional.mse_loss(net_b(x), y) * 100).backward()
    norm_b = clip_grad_norm_(net_b.parameters(), 0.5)
    opt_b.step()
    torch.testing.assert_close(norm_a, norm_b)
    for p, q in zip(net_a.parameters(), net_b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_gradscaler_inf_step_is_skipped_by_the_scaler():
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale(net(torch.ones(1, 2)).sum() * math.inf).backward()
    scaler.unscale_(opt)
    stats = apply_(clip_by_global_norm(1.0), net, nonfinite="zero")
    assert stats.to_dict()["nonfinite"]
    scaler.step(opt)  # found inf during unscale_: the scaler itself skips the step
    scaler.update()
    for b, p in zip(before, net.parameters(), strict=True):
        assert torch.equal(b, p)
    assert scaler.get_scale() < 2.0**10


class _Poison(torch.nn.Module):
    """Identity whose backward injects NaN on chosen steps."""

    def __init__(self, bad_steps):
        super().__init__()
        self.bad_steps = set(bad_steps)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls - 1 in self.bad_steps and self.training:
            x.register_hook(lambda g: g * math.nan)
        return x


def test_fit_with_clipper_skips_nonfinite_steps_and_records_stats():
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 8), _Poison({2, 5}), torch.nn.ReLU(), torch.nn.Linear(8, 2)
    )
    clipper = GradientClipper(clip_by_global_norm(0.05), nonfinite="skip")
    history = fit(
        net,
        (x, y),
        epochs=2,
        batch_size=16,
        clipper=clipper,
        progress=False,
        optimizer="sgd",
        lr=0.1,
    )
    assert history.skipped_steps == 2  # steps 2 and 5 poison the first layer's gradient
    summary = clipper.summary()
    assert summary["steps"] == 8
    assert summary["skipped_steps"] == summary["nonfinite_steps"] == 2
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert 0 < summary["clipped_fraction"] <= 1


def test_clipper_reuses_monitor_norms():
    from pellucid.monitoring import GradientMonitor

    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    calls = {"n": 0}
    original = torch._foreach_norm

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    torch._foreach_norm = counting
    try:
        fit(
            MLP(4, 2),
            (x, y),
            epochs=1,
            batch_size=32,
            progress=False,
            monitor=GradientMonitor(log_every=100),
            clipper=GradientClipper(clip_by_global_norm(1.0), nonfinite="skip"),
        )
    finally:
        torch._foreach_norm = original
    # one step: the 2-norm and the max-norm, each once, shared by monitor, guard and clipper
    # (+1 weight-norm sample at step 0, +1 update-norm sample)
    assert calls["n"] == 4
