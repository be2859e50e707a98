"""Functional clipping: exact agreement with torch, AGC against its formula, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pellucid.clipping import (
    adaptive_clip_grad_,
    classifier_parameters,
    clip_grad_norm_,
    clip_grad_norm_per_layer_,
    clip_grad_norm_per_tensor_,
    clip_grad_value_,
    clip_grads_with_norm_,
    layer_groups,
    tensor_norms,
    total_norm,
    unitwise_norm,
)
from pellucid.models import TinyResNet

NORM_TYPES = [1.0, 2.0, 3.0, 0.5, math.inf]


def _params(seed: int = 0, scale: float = 10.0, half: bool = True) -> list[torch.nn.Parameter]:
    """Mixed shapes and dtypes (bf16/fp16 too when ``half``), one parameter without a grad."""
    g = torch.Generator().manual_seed(seed)
    specs = [
        ((5, 3), torch.float32),
        ((7,), torch.float64),
        ((2, 2, 3), torch.float32),
        ((3,), torch.float32),
        ((4, 1, 2, 2), torch.float64),
        ((6,), torch.bfloat16),
        ((2, 3), torch.float16),
    ][: None if half else 5]
    params = []
    for i, (shape, dtype) in enumerate(specs):
        p = torch.nn.Parameter(torch.randn(shape, generator=g).to(dtype))
        if i != 3:
            p.grad = (torch.randn(shape, generator=g) * scale).to(dtype)
        params.append(p)
    return params


def _copy(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = None if p.grad is None else p.grad.clone()
        out.append(q)
    return out


def _same_grads(a, b) -> None:
    for p, q in zip(a, b, strict=True):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad)  # bitwise


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
@pytest.mark.parametrize("foreach", [None, False, True])
def test_clip_grad_norm_bitwise_equal_to_torch(norm_type, max_norm, foreach):
    ours, theirs = _params(), None
    theirs = _copy(ours)
    got = clip_grad_norm_(ours, max_norm, norm_type=norm_type, foreach=foreach)
    expected = torch.nn.utils.clip_grad_norm_(
        theirs, max_norm, norm_type=norm_type, foreach=foreach
    )
    assert torch.equal(got, expected)
    assert got.dtype == expected.dtype
    _same_grads(ours, theirs)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_total_norm_equals_torch_get_total_norm(norm_type):
    grads = [p.grad for p in _params() if p.grad is not None]
    assert torch.equal(
        total_norm(grads, norm_type=norm_type), torch.nn.utils.get_total_norm(grads, norm_type)
    )


def test_tensor_norms_in_input_order():
    grads = [p.grad for p in _params() if p.grad is not None]
    for got, g in zip(tensor_norms(grads), grads, strict=True):
        torch.testing.assert_close(got, torch.linalg.vector_norm(g), rtol=0, atol=0)


def test_clip_grads_with_norm_matches_torch():
    ours = _params()
    theirs = _copy(ours)
    norm = total_norm([p.grad for p in ours if p.grad is not None])
    clip_grads_with_norm_(ours, 1.0, norm)
    torch.nn.utils.clip_grads_with_norm_(theirs, 1.0, norm)
    _same_grads(ours, theirs)


def test_empty_and_none_grads_match_torch():
    assert torch.equal(clip_grad_norm_([], 1.0), torch.nn.utils.clip_grad_norm_([], 1.0))
    p = torch.nn.Parameter(torch.ones(3))
    assert torch.equal(clip_grad_norm_([p], 1.0), torch.nn.utils.clip_grad_norm_([p], 1.0))
    assert p.grad is None


def test_single_tensor_and_module_are_accepted():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert float(clip_grad_norm_(p, 1.0)) == 5.0
    net = torch.nn.Linear(2, 1)
    net(torch.ones(1, 2)).sum().backward()
    torch.testing.assert_close(
        clip_grad_norm_(net, 10.0), total_norm([q.grad for q in net.parameters()])
    )


@pytest.mark.parametrize("foreach", [None, False])
def test_clip_grad_value_equals_torch(foreach):
    ours = _params()
    theirs = _copy(ours)
    assert clip_grad_value_(ours, 3.0, foreach=foreach) is None
    torch.nn.utils.clip_grad_value_(theirs, 3.0, foreach=foreach)
    _same_grads(ours, theirs)


def test_non_finite_error_like_torch():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([float("nan"), 1.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    assert torch.isnan(p.grad[0]) and p.grad[1] == 1.0  # untouched


@settings(max_examples=40, deadline=None)
@given(
    scale=st.floats(1e-3, 1e3),
    max_norm=st.floats(1e-2, 1e2),
    norm_type=st.sampled_from(NORM_TYPES),
    seed=st.integers(0, 1000),
)
def test_clipped_norm_never_exceeds_bound(scale, max_norm, norm_type, seed):
    params = _params(seed, scale, half=False)  # a 1e-5 bound needs single precision or better
    before = clip_grad_norm_(params, max_norm, norm_type=norm_type)
    after = total_norm([p.grad for p in params if p.grad is not None], norm_type=norm_type)
    # the coefficient uses total + 1e-6, so the result is at most max_norm (plus rounding)
    assert float(after) <= max_norm * (1 + 1e-5)
    if float(before) <= max_norm:
        torch.testing.assert_close(after, before)


def test_per_tensor_clipping_is_tensorflow_clip_by_norm():
    params = _params()
    grads = [p.grad.clone() for p in params if p.grad is not None]
    norms = clip_grad_norm_per_tensor_(params, 1.0)
    for g0, p, n in zip(grads, [p for p in params if p.grad is not None], norms, strict=True):
        expected = g0 * 1.0 / max(float(g0.norm()), 1.0)
        torch.testing.assert_close(p.grad, expected)
        torch.testing.assert_close(n, g0.norm().double())


def test_per_layer_clipping_bounds_each_layer():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    net(torch.randn(16, 4)).pow(2).sum().mul(100).backward()
    assert list(layer_groups(net)) == ["0", "2"]
    before = clip_grad_norm_per_layer_(net, 0.5)
    assert set(before) == {"0", "2"}
    for layer in (net[0], net[2]):
        norm = torch.cat([p.grad.flatten() for p in layer.parameters()]).norm()
        assert float(norm) == pytest.approx(0.5, rel=1e-5)


def _agc_reference(params, clip_factor, eps, exclude=()):
    """The straightforward per-parameter loop (timm's formulation)."""
    skip = {id(p) for p in exclude}
    for p in params:
        if p.grad is None or id(p) in skip:
            continue
        bound = unitwise_norm(p.detach()).clamp(min=eps) * clip_factor
        g_norm = unitwise_norm(p.grad)
        clipped = p.grad * (bound / g_norm.clamp(min=1e-6))
        p.grad.copy_(torch.where(g_norm < bound, p.grad, clipped))


@pytest.mark.parametrize("clip_factor", [0.01, 0.1, 10.0])
def test_agc_matches_the_formula(clip_factor):
    torch.manual_seed(0)
    net = TinyResNet().double()
    net(torch.randn(4, 1, 8, 8, dtype=torch.float64)).pow(2).sum().backward()
    ref = [torch.nn.Parameter(p.detach().clone()) for p in net.parameters()]
    for r, p in zip(ref, net.parameters(), strict=True):
        r.grad = p.grad.clone()
    expected_before = total_norm([r.grad for r in ref])
    before = adaptive_clip_grad_(net, clip_factor)
    _agc_reference(ref, clip_factor, 1e-3)
    for r, p in zip(ref, net.parameters(), strict=True):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(before, expected_before)


def test_agc_bounds_every_unit_and_excludes_the_classifier():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    net.double()
    net(torch.randn(8, 6, dtype=torch.float64)).pow(2).sum().mul(1e3).backward()
    head_before = [p.grad.clone() for p in net[2].parameters()]
    adaptive_clip_grad_(net, 0.02, exclude=classifier_parameters(net))
    for g, p in zip(head_before, net[2].parameters(), strict=True):
        assert torch.equal(g, p.grad)
    for p in net[0].parameters():
        ratio = unitwise_norm(p.grad) / unitwise_norm(p.detach()).clamp(min=1e-3)
        assert float(ratio.max()) <= 0.02 * (1 + 1e-9)


def test_agc_general_norm_types():
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    w.grad = torch.randn(4, 3, dtype=torch.float64) * 10
    for p in (1.0, 3.0, math.inf):
        v = torch.nn.Parameter(w.detach().clone())
        v.grad = w.grad.clone()
        adaptive_clip_grad_([v], 0.1, norm_type=p)
        bound = unitwise_norm(w.detach(), p).clamp(min=1e-3) * 0.1
        g = unitwise_norm(w.grad, p)
        expected = w.grad * (bound / g.clamp(min=1e-6)).clamp(max=1)
        torch.testing.assert_close(v.grad, expected)


def _grad_param(value: float = 1.0) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.full((3,), value)
    return p


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_norm": 0.0}, ValueError, "`max_norm` must be > 0"),
        ({"max_norm": -1.0}, ValueError, "`max_norm` must be > 0"),
        ({"max_norm": math.nan}, ValueError, "`max_norm` must be a number, not NaN"),
        ({"max_norm": math.inf}, ValueError, "`max_norm` must be finite"),
        ({"max_norm": "1"}, TypeError, "`max_norm` must be a real number"),
        ({"max_norm": 1.0, "norm_type": 0.0}, ValueError, "`norm_type` must be > 0"),
        ({"max_norm": 1.0, "norm_type": -2.0}, ValueError, "`norm_type` must be > 0"),
        ({"max_norm": 1.0, "norm_type": "two"}, TypeError, "`norm_type` must be a positive"),
        ({"max_norm": 1.0, "norm_type": True}, TypeError, "`norm_type` must be a positive"),
        ({"max_norm": 1.0, "norm_type": math.nan}, ValueError, "not NaN"),
    ],
)
def test_bad_input_raises_before_changing_anything(kwargs, error, match):
    p = _grad_param(10.0)
    with pytest.raises(error, match=match):
        clip_grad_norm_([p], **kwargs)
    assert torch.equal(p.grad, torch.full((3,), 10.0))


def test_bad_parameters():
    p = _grad_param(10.0)
    with pytest.raises(TypeError, match="item 1 is a int"):
        clip_grad_norm_([p, 3], 1.0)
    assert torch.equal(p.grad, torch.full((3,), 10.0))
    with pytest.raises(TypeError, match="`parameters` must be a tensor"):
        clip_grad_norm_(3.0, 1.0)
    gen = (q for q in [p])
    list(gen)
    with pytest.raises(ValueError, match="generator that is already exhausted"):
        clip_grad_norm_(gen, 1.0)
    with pytest.raises(ValueError, match="`clip_value` must be >= 0"):
        clip_grad_value_([p], -1.0)
    with pytest.raises(ValueError, match="`clip_factor` must be > 0"):
        adaptive_clip_grad_([p], 0.0)
    assert torch.equal(p.grad, torch.full((3,), 10.0))


def test_fresh_model_parameters_generator_is_fine():
    net = torch.nn.Linear(2, 2)
    net(torch.ones(1, 2)).sum().backward()
    assert float(clip_grad_norm_(net.parameters(), 1e6)) > 0
    assert torch.isfinite(clip_grad_norm_([], 1.0))


def test_agc_mixed_dtypes_empty_and_noncontiguous_tensors():
    g = torch.Generator().manual_seed(3)
    shapes = [
        ((4, 3), torch.float64),
        ((4, 3), torch.float32),
        ((0, 5), torch.float64),
        ((5,), torch.float32),
        ((0,), torch.float64),
        ((3, 2, 2), torch.float64),
    ]
    params = []
    for shape, dtype in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype))
        p.grad = torch.randn(shape, generator=g, dtype=dtype) * 5
        params.append(p)
    params[5].grad = torch.randn(2, 2, 3, generator=g, dtype=torch.float64).permute(2, 0, 1) * 5
    assert not params[5].grad.is_contiguous()
    ref = []
    for p in params:
        r = torch.nn.Parameter(p.detach().clone())
        r.grad = p.grad.clone()
        ref.append(r)
    adaptive_clip_grad_(params, 0.05)
    _agc_reference([r for r in ref if r.numel()], 0.05, 1e-3)
    for p, r in zip(params, ref, strict=True):
        assert p.grad.dtype == r.grad.dtype and p.grad.shape == r.grad.shape
        torch.testing.assert_close(p.grad, r.grad)


@settings(max_examples=30, deadline=None)
@given(
    clip_factor=st.floats(1e-3, 1.0),
    scale=st.floats(1e-4, 1e4),
    seed=st.integers(0, 1000),
)
def test_agc_bounds_every_unit_property(clip_factor, scale, seed):
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in ((3, 4), (5,), (2, 3, 2)):
        p = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64))
        p.grad = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        params.append(p)
    before = [p.grad.clone() for p in params]
    adaptive_clip_grad_(params, clip_factor)
    for p, g0 in zip(params, before, strict=True):
        bound = unitwise_norm(p.detach()).clamp(min=1e-3) * clip_factor
        assert bool((unitwise_norm(p.grad) <= bound * (1 + 1e-9) + 1e-12).all())
        # units already within the bound are untouched; the others keep their direction
        inside = unitwise_norm(g0) < bound
        assert torch.equal(torch.where(inside, p.grad, g0), g0)
        cos = (p.grad * g0).sum() / (p.grad.norm() * g0.norm())
        assert float(cos) > 0
