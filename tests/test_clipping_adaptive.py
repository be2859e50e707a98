"""AutoClip and ZClip against straightforward reference implementations; checkpoints."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from pellucid.clipping import AutoClip, GradientClipper, ZClip, apply_, chain, clip_by_value
from pellucid.training import fit

# A norm sequence with a slow trend and a few spikes.
NORMS = [
    1.0 + 0.05 * i + (40.0 if i in (30, 31, 45) else 0.0) + 0.3 * math.sin(i) for i in range(60)
]


def _param(norm: float) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    p.grad = torch.tensor([norm, 0.0, 0.0, 0.0], dtype=torch.float64)
    return p


def _autoclip_reference(norms, percentile):
    history, out = [], []
    for n in norms:
        history.append(n)
        bound = np.percentile(history, percentile)
        out.append(n * min(1.0, bound / (n + 1e-6)))
    return out


def _zclip_reference(norms, alpha=0.97, z_thresh=2.5, warmup=25, eps=1e-6):
    """The algorithm of Kumar et al. (2025) in plain Python floats."""
    buffer, mean, var, out = [], None, None, []
    for n in norms:
        if mean is None:
            buffer.append(n)
            if len(buffer) == warmup:
                mean = sum(buffer) / len(buffer)
                var = sum((x - mean) ** 2 for x in buffer) / len(buffer)
            out.append(n)
            continue
        std = var**0.5
        z = (n - mean) / (std + eps)
        clip_val = None
        if z > z_thresh:
            clip_val = mean + (z_thresh * std) / (z / z_thresh)
        coef = clip_val / (n + 1e-6) if clip_val is not None and n > clip_val else 1.0
        out.append(n * coef)
        x = clip_val if clip_val is not None else n
        mean = alpha * mean + (1 - alpha) * x
        var = alpha * var + (1 - alpha) * (x - mean) ** 2
    return out


@pytest.mark.parametrize("percentile", [10.0, 50.0, 90.0, 100.0])
def test_autoclip_matches_reference(percentile):
    clip = AutoClip(percentile)
    expected = _autoclip_reference(NORMS, percentile)
    for n, e in zip(NORMS, expected, strict=True):
        p = _param(n)
        stats = clip.clip_(p)
        assert float(p.grad[0]) == pytest.approx(e, rel=1e-9)
        assert float(stats.norm_before) == pytest.approx(n)


def test_autoclip_history_window():
    clip = AutoClip(50, history_size=5)
    for n in NORMS[:12]:
        clip.clip_(_param(n))
    assert sorted(clip.history.tolist()) == pytest.approx(sorted(NORMS[7:12]))


def test_zclip_matches_reference():
    clip = ZClip()
    expected = _zclip_reference(NORMS)
    clipped = []
    for n, e in zip(NORMS, expected, strict=True):
        p = _param(n)
        stats = clip.clip_(p)
        clipped.append(bool(stats.clipped))
        assert float(p.grad[0]) == pytest.approx(e, rel=1e-9)
    assert clipped[30] and clipped[45] and not any(clipped[:25])


def test_zclip_mean_option_and_max_norm():
    clip = ZClip(warmup_steps=3, clip_option="mean", max_norm=5.0)
    out = []
    for n in [1.0, 1.1, 0.9, 1.0, 50.0]:
        p = _param(n)
        clip.clip_(p)
        out.append(float(p.grad[0]))
    assert out[:4] == pytest.approx([1.0, 1.1, 0.9, 1.0])
    assert out[4] == pytest.approx(1.0, rel=1e-3)  # clipped to the EMA mean


def _roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(
    "make",
    [lambda: AutoClip(25), lambda: AutoClip(25, history_size=8), lambda: ZClip(warmup_steps=10)],
)
def test_state_survives_a_checkpoint(make):
    a = make()
    for n in NORMS[:20]:
        a.clip_(_param(n))
    b = make()
    b.load_state_dict(_roundtrip(a.state_dict()))
    for n in NORMS[20:]:
        pa, pb = _param(n), _param(n)
        a.clip_(pa)
        b.clip_(pb)
        assert torch.equal(pa.grad, pb.grad)


def test_nonfinite_norms_stay_out_of_the_statistics():
    z = ZClip(warmup_steps=3)
    a = AutoClip(50)
    for n in [1.0, math.nan, 1.2, 0.8, math.inf, 1.1]:
        z.clip_(_param(n))
        a.clip_(_param(n))
    assert math.isfinite(float(z.mean)) and math.isfinite(float(z.var))
    p = _param(1.0)
    a.clip_(p)
    assert math.isfinite(float(p.grad[0]))


def test_adaptive_clippers_compose_and_train():
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    clipper = GradientClipper(chain(clip_by_value(10.0), ZClip(warmup_steps=2)))
    fit(net, (x, y), epochs=2, batch_size=16, clipper=clipper, progress=False)
    assert clipper.summary()["steps"] == 8
    assert apply_(AutoClip(), net).norm_before.numel() == 1


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda: AutoClip(0), ValueError, r"`percentile` must be > 0"),
        (lambda: AutoClip(101), ValueError, r"`percentile` must be <= 100"),
        (lambda: AutoClip(math.nan), ValueError, "not NaN"),
        (lambda: AutoClip(10, history_size=0), ValueError, "`history_size` must be an integer"),
        (lambda: ZClip(alpha=0.0), ValueError, r"`alpha` must be > 0"),
        (lambda: ZClip(alpha=1.0), ValueError, r"`alpha` must be < 1"),
        (lambda: ZClip(z_thresh=-1), ValueError, r"`z_thresh` must be > 0"),
        (lambda: ZClip(warmup_steps=0), ValueError, r"`warmup_steps` must be an integer >= 1"),
        (lambda: ZClip(clip_option="median"), ValueError, "`clip_option` must be one of"),
    ],
)
def test_bad_settings(factory, error, match):
    with pytest.raises(error, match=match):
        factory()


def test_load_state_dict_checks_its_input():
    with pytest.raises(TypeError, match="`state` must be a dict"):
        AutoClip().load_state_dict([1, 2])
    with pytest.raises(ValueError, match="missing"):
        ZClip().load_state_dict({"alpha": 0.9})
    with pytest.raises(ValueError, match="same settings"):
        AutoClip(10).load_state_dict(AutoClip(20).state_dict())


@pytest.mark.parametrize("make", [lambda: AutoClip(percentile=10.0), lambda: ZClip()])
def test_steps_without_gradients_are_not_part_of_the_history(make):
    """They used to record a norm of 0 and then clip every later step to 0."""
    from pellucid.clipping import apply_

    clipper = make()
    w = torch.nn.Parameter(torch.zeros(2))
    for _ in range(3):
        stats = apply_(clipper, [w])  # no .grad yet: e.g. a frozen phase
        assert float(stats.norm_before) == 0.0 and not bool(stats.clipped)
    w.grad = torch.tensor([3.0, 4.0])
    stats = apply_(clipper, [w])
    assert float(stats.norm_before) == 5.0
    # not 0: the threshold comes from this step's own norm (AutoClip divides by norm + 1e-6)
    assert float(stats.clip_coef) == pytest.approx(1.0, rel=1e-6)
    torch.testing.assert_close(w.grad, torch.tensor([3.0, 4.0]), rtol=1e-6, atol=0)
    if isinstance(clipper, AutoClip):
        torch.testing.assert_close(clipper.history, torch.tensor([5.0], dtype=torch.float64))
