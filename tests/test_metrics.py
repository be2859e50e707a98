"""Explanation-quality metrics: hand-computed values on tiny cases, axioms, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pellucid
from pellucid import metrics
from pellucid._state import parameters_fingerprint
from pellucid.explanation import Explanation

DT = torch.float64


def linear4() -> nn.Linear:
    """f(x) = 4 x0 + 3 x1 + 2 x2 + 1 x3 (no bias): every curve below is known by hand."""
    net = nn.Linear(4, 1, bias=False).to(DT)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]], dtype=DT))
    return net


def mlp(seed: int = 0, d: int = 6, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, k)).to(DT)


ONES = torch.ones(1, 4, dtype=DT)


# --------------------------------------------------------------------------- deletion/insertion
def test_deletion_curve_of_a_linear_model_by_hand():
    net = linear4()
    curve = metrics.deletion_curve(net, ONES, ONES * net.weight.detach(), step=1)
    # Removing the features from the largest contribution down: 10, 10-4, 10-4-3, ...
    torch.testing.assert_close(curve.scores, torch.tensor([[10.0, 6.0, 3.0, 1.0, 0.0]], dtype=DT))
    torch.testing.assert_close(curve.fractions, torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=DT))
    # trapezoid: 0.25 * (8 + 4.5 + 2 + 0.5)
    torch.testing.assert_close(curve.auc, torch.tensor([3.75], dtype=DT))
    assert curve.kind == "deletion" and len(curve) == 1


def test_insertion_curve_and_worst_order_by_hand():
    net = linear4()
    attr = ONES * net.weight.detach()
    ins = metrics.insertion_curve(net, ONES, attr, step=1)
    torch.testing.assert_close(ins.scores, torch.tensor([[0.0, 4.0, 7.0, 9.0, 10.0]], dtype=DT))
    torch.testing.assert_close(ins.auc, torch.tensor([6.25], dtype=DT))
    # The reversed ranking deletes the least important first: a worse (larger) deletion AUC.
    worst = metrics.deletion_auc(net, ONES, -attr, step=1)
    torch.testing.assert_close(worst, torch.tensor([6.25], dtype=DT))
    # absolute=True ranks by magnitude: the sign flip no longer matters.
    best = metrics.deletion_auc(net, ONES, -attr, step=1, absolute=True)
    torch.testing.assert_close(best, torch.tensor([3.75], dtype=DT))


def test_step_sizes_and_default_step():
    net = linear4()
    attr = ONES * net.weight.detach()
    two = metrics.deletion_curve(net, ONES, attr, step=2)
    torch.testing.assert_close(two.scores, torch.tensor([[10.0, 3.0, 0.0]], dtype=DT))
    three = metrics.deletion_curve(net, ONES, attr, step=3)  # last step is partial
    torch.testing.assert_close(three.scores, torch.tensor([[10.0, 1.0, 0.0]], dtype=DT))
    torch.testing.assert_close(three.fractions, torch.tensor([0.0, 0.75, 1.0], dtype=DT))
    default = metrics.deletion_curve(net, ONES, attr)
    assert default.scores.shape == (1, 5)  # 4 features: one per point


def test_baseline_fill_number_and_tensor():
    net = linear4()
    attr = ONES * net.weight.detach()
    curve = metrics.deletion_curve(net, ONES, attr, step=1, baseline=1.0)
    torch.testing.assert_close(curve.scores, torch.full((1, 5), 10.0, dtype=DT))
    base = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=DT)
    curve = metrics.deletion_curve(net, ONES, attr, step=1, baseline=base)
    torch.testing.assert_close(curve.scores, torch.tensor([[10.0, 6.0, 6.0, 4.0, 4.0]], dtype=DT))


def test_blur_fill_on_images():
    conv = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).to(DT)
    x = torch.ones(3, 1, 4, 4, dtype=DT)
    attr = torch.randn(3, 1, 4, 4, dtype=DT)
    # A constant image blurs to itself, so deleting with blur changes nothing.
    curve = metrics.deletion_curve(conv, x, attr, target=1, baseline="blur", step=4)
    torch.testing.assert_close(curve.scores, curve.scores[:, :1].expand_as(curve.scores))
    with pytest.raises(ValueError, match="blur.*image-like"):
        metrics.deletion_curve(linear4(), ONES, ONES, baseline="blur")


def test_feature_mask_removes_groups_together():
    # Two channels x two pixels, f = sum(w * x); a pixel is both of its channels.
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False)).to(DT)
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 5.0, 2.0, 1.0]], dtype=DT))
    x = torch.ones(1, 2, 2, dtype=DT)  # (C=2, L=2): elements c0p0, c0p1, c1p0, c1p1
    attr = x * net[1].weight.detach().reshape(1, 2, 2)
    pixels = torch.tensor([[0, 1], [0, 1]])  # pixel 0 sums to 3, pixel 1 to 6
    curve = metrics.deletion_curve(net, x, attr, feature_mask=pixels, step=1)
    torch.testing.assert_close(curve.scores, torch.tensor([[9.0, 3.0, 0.0]], dtype=DT))
    torch.testing.assert_close(curve.fractions, torch.tensor([0.0, 0.5, 1.0], dtype=DT))
    with pytest.raises(ValueError, match=r"`feature_mask` must have the shape of one example"):
        metrics.deletion_curve(net, x, attr, feature_mask=torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="`feature_mask` must hold integer group ids"):
        metrics.deletion_curve(net, x, attr, feature_mask=torch.zeros(2, 2))


def test_batched_equals_unbatched_and_targets():
    net = mlp()
    x = torch.randn(5, 6, dtype=DT)
    attr = torch.randn(5, 6, dtype=DT)
    full = metrics.deletion_curve(net, x, attr, target="predicted", step=2)
    small = metrics.deletion_curve(net, x, attr, target="predicted", step=2, batch_size=3)
    torch.testing.assert_close(full.scores, small.scores)
    pred = net(x).argmax(1)
    torch.testing.assert_close(full.scores[:, 0], net(x).gather(1, pred[:, None])[:, 0].detach())
    # Per-example curves equal the curves of each example alone.
    one = metrics.deletion_curve(net, x[2:3], attr[2:3], target=pred[2:3], step=2)
    torch.testing.assert_close(one.scores[0], full.scores[2])


def test_explanation_target_is_reused():
    net = mlp()
    x = torch.randn(4, 6, dtype=DT)
    exp = pellucid.saliency(net, x, target=2)
    by_exp = metrics.insertion_auc(net, x, exp, step=3)
    explicit = metrics.insertion_auc(net, x, exp.attributions, target=2, step=3)
    torch.testing.assert_close(by_exp, explicit)


# --------------------------------------------------------------------------- correlation/infidelity
def test_faithfulness_correlation_linear_model():
    net = linear4()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, dtype=DT, generator=gen)
    attr = x * net.weight.detach()  # exact contributions of a linear model
    r = metrics.faithfulness_correlation(net, x, attr, n_samples=30, subset_size=2, generator=gen)
    torch.testing.assert_close(r, torch.ones(6, dtype=DT))
    r = metrics.faithfulness_correlation(net, x, -attr, n_samples=30, subset_size=2)
    torch.testing.assert_close(r, -torch.ones(6, dtype=DT))


def test_faithfulness_correlation_given_masks_by_hand():
    net = linear4()
    masks = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    attr = torch.tensor([[1.0, 0.0, 0.0, 3.0]], dtype=DT)
    # score drops: 4, 5, 1 ; attribution sums: 1, 0, 3
    expected = torch.corrcoef(torch.tensor([[4.0, 5.0, 1.0], [1.0, 0.0, 3.0]], dtype=DT))[0, 1]
    r = metrics.faithfulness_correlation(net, ONES, attr, masks=masks)
    torch.testing.assert_close(r, expected.reshape(1))
    # constant attribution sums: correlation undefined -> NaN, not a made-up number
    r = metrics.faithfulness_correlation(net, ONES, torch.zeros(1, 4, dtype=DT), masks=masks)
    assert torch.isnan(r).all()


def test_infidelity_by_hand():
    net = linear4()
    w = net.weight.detach()
    x = torch.randn(3, 4, dtype=DT)
    pert = torch.randn(7, 4, dtype=DT)
    # For a linear model f(x) - f(x - I) = w . I: the gradient is perfectly faithful.
    zero = metrics.infidelity(net, x, w.expand(3, 4), perturbations=pert)
    torch.testing.assert_close(zero, torch.zeros(3, dtype=DT))
    # Zero attributions: infidelity is the mean of (w . I)^2.
    none = metrics.infidelity(net, x, torch.zeros(3, 4, dtype=DT), perturbations=pert)
    torch.testing.assert_close(none, ((pert @ w.T) ** 2).mean().expand(3))
    # normalize=True rescales: half the gradient is as faithful as the gradient.
    half = metrics.infidelity(net, x, 0.5 * w.expand(3, 4), perturbations=pert, normalize=True)
    torch.testing.assert_close(half, torch.zeros(3, dtype=DT))


def test_infidelity_random_is_reproducible():
    net = mlp()
    x = torch.randn(4, 6, dtype=DT)
    attr = torch.randn(4, 6, dtype=DT)
    a = metrics.infidelity(net, x, attr, target=0, generator=torch.Generator().manual_seed(3))
    b = metrics.infidelity(net, x, attr, target=0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert a.shape == (4,) and (a >= 0).all()


def test_completeness_gap():
    torch.manual_seed(0)
    net = nn.Linear(4, 1).to(DT)
    x = torch.randn(3, 4, dtype=DT)
    exact = x * net.weight.detach()
    torch.testing.assert_close(metrics.completeness_gap(net, x, exact), torch.zeros(3, dtype=DT))
    gap = metrics.completeness_gap(net, x, torch.zeros(3, 4, dtype=DT))
    torch.testing.assert_close(gap, -(x @ net.weight.detach().T)[:, 0])
    base = torch.ones(4, dtype=DT)
    gap = metrics.completeness_gap(net, x, (x - base) * net.weight.detach(), baseline=base)
    torch.testing.assert_close(gap, torch.zeros(3, dtype=DT))


# --------------------------------------------------------------------------- complexity
def test_sparseness_gini_of_known_vectors():
    a = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 5.0], [1.0, 2.0, 3.0, 4.0]], dtype=DT)
    # uniform: 0 ; one-hot: 1 - 1/d ; [1,2,3,4]: sum((2k-5) a_k) / (4 * 10) = 10 / 40
    torch.testing.assert_close(metrics.sparseness(a), torch.tensor([0.0, 0.75, 0.25], dtype=DT))
    torch.testing.assert_close(metrics.sparseness(-a), metrics.sparseness(a))  # uses |a|
    assert torch.isnan(metrics.sparseness(torch.zeros(1, 3))).all()


def test_complexity_entropy_of_known_vectors():
    a = torch.tensor([[2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 7.0, 0.0], [1.0, 1.0, -2.0, 0.0]], dtype=DT)
    expected = torch.tensor([math.log(4), 0.0, 1.5 * math.log(2)], dtype=DT)
    torch.testing.assert_close(metrics.complexity(a), expected)
    images = torch.ones(2, 3, 5, 5, dtype=DT)
    torch.testing.assert_close(metrics.complexity(images), torch.full((2,), math.log(75), dtype=DT))


# --------------------------------------------------------------------------- robustness
def test_sensitivity_of_identity_explanation_by_hand():
    x = torch.ones(2, 4, dtype=DT)
    delta = torch.tensor([[0.1, 0.0, 0.0, 0.0], [0.0, 0.0, -0.3, 0.4]], dtype=DT)

    def identity(model, inputs, *, target=None):
        return inputs

    s = metrics.sensitivities(linear4(), x, identity, perturbations=delta)
    # ||delta|| / ||x|| = 0.1 / 2 and 0.5 / 2
    torch.testing.assert_close(s, torch.tensor([[0.05, 0.25], [0.05, 0.25]], dtype=DT))
    m = metrics.max_sensitivity(linear4(), x, identity, perturbations=delta)
    torch.testing.assert_close(m, torch.tensor([0.25, 0.25], dtype=DT))
    a = metrics.avg_sensitivity(linear4(), x, identity, perturbations=delta, normalize=False)
    torch.testing.assert_close(a, torch.tensor([0.3, 0.3], dtype=DT))


def test_sensitivity_of_gradients_of_a_linear_model_is_zero():
    net = mlp()
    lin = nn.Linear(6, 3).to(DT)
    x = torch.randn(3, 6, dtype=DT)
    torch.testing.assert_close(
        metrics.max_sensitivity(lin, x, "saliency", target=1), torch.zeros(3, dtype=DT)
    )
    s = metrics.avg_sensitivity(
        net,
        x,
        "input_x_gradient",
        target="predicted",
        radius=0.1,
        generator=torch.Generator().manual_seed(0),
        batch_size=4,
    )
    assert s.shape == (3,) and (s > 0).all()


# --------------------------------------------------------------------------- agreement
def test_agreement_matches_scipy_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(-3, 4, (5, 12), generator=gen).to(DT)
    b = torch.randint(-3, 4, (5, 12), generator=gen).to(DT)
    for absolute in (True, False):
        xa, xb = (a.abs(), b.abs()) if absolute else (a, b)
        rho = [scipy_stats.spearmanr(xa[i], xb[i]).statistic for i in range(5)]
        tau = [scipy_stats.kendalltau(xa[i], xb[i]).statistic for i in range(5)]
        got_rho = metrics.spearman(a, b, absolute=absolute)
        got_tau = metrics.agreement(a, b, measure="kendall", absolute=absolute)
        torch.testing.assert_close(got_rho, torch.tensor(rho, dtype=DT))
        torch.testing.assert_close(got_tau, torch.tensor(tau, dtype=DT))


def test_top_k_overlap():
    a = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    b = torch.tensor([[4.0, 1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(metrics.top_k_overlap(a, b, k=2), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(metrics.top_k_overlap(a, b, k=0.5), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(metrics.agreement(a, a, measure="top_k", k=1), torch.ones(2))


# --------------------------------------------------------------------------- model untouched
def test_metrics_leave_the_model_as_it_was():
    net = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 2)).to(DT).train()
    net[0].weight.requires_grad_(False)
    before = parameters_fingerprint(net)
    x = torch.randn(3, 6, dtype=DT)
    attr = torch.randn(3, 6, dtype=DT)
    kw = {"target": 0, "eval_mode": True}
    metrics.deletion_curve(net, x, attr, **kw)
    metrics.faithfulness_correlation(net, x, attr, n_samples=5, **kw)
    metrics.infidelity(net, x, attr, **kw)
    metrics.completeness_gap(net, x, attr, **kw)
    metrics.max_sensitivity(net, x, "saliency", n_samples=3, **kw)
    metrics.model_randomization_check(net, x, "saliency", **kw)
    assert net.training and not net[0].weight.requires_grad
    assert all(p.grad is None for p in net.parameters())
    for a, b in zip(before, parameters_fingerprint(net), strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- bad input
def test_bad_shapes_and_other_inputs():
    net = mlp()
    x = torch.randn(3, 6, dtype=DT)
    with pytest.raises(ValueError, match=r"`attributions` must have the shape of `inputs`"):
        metrics.deletion_curve(net, x, torch.zeros(3, 5, dtype=DT), target=0)
    exp = pellucid.saliency(net, torch.randn(3, 6, dtype=DT), target=0)
    with pytest.raises(ValueError, match="Explanation of other inputs.*differ"):
        metrics.deletion_auc(net, x, exp)
    exp = pellucid.saliency(net, torch.randn(2, 6, dtype=DT), target=0)
    with pytest.raises(ValueError, match=r"Explanation of other inputs.*shape \(2, 6\)"):
        metrics.infidelity(net, x, exp)
    with pytest.raises(TypeError, match="`attributions` must be a torch.Tensor or a pellucid"):
        metrics.sparseness([[1.0, 2.0]])
    with pytest.raises(ValueError, match="`a` and `b` must explain the same inputs"):
        metrics.spearman(torch.zeros(2, 3), torch.zeros(2, 4))


def test_explanation_from_another_model_is_named():
    big = mlp(k=5)
    small = mlp(k=3)
    x = torch.randn(2, 6, dtype=DT)
    exp = pellucid.saliency(big, x, target=4)
    with pytest.raises(ValueError, match="explanation's target does not fit this model"):
        metrics.deletion_auc(small, x, exp)


def test_bad_fill_step_masks_and_parameters():
    net = linear4()
    with pytest.raises(ValueError, match=r"`baseline` of shape \(3,\) does not broadcast"):
        metrics.deletion_curve(net, ONES, ONES, baseline=torch.zeros(3, dtype=DT))
    with pytest.raises(ValueError, match="`baseline` must be None, a number, a tensor or 'blur'"):
        metrics.deletion_curve(net, ONES, ONES, baseline="black")
    with pytest.raises(ValueError, match=r"`step` must be an integer <= 4; got 5\. The inputs"):
        metrics.deletion_curve(net, ONES, ONES, step=5)
    with pytest.raises(ValueError, match=r"`masks` must have shape \(n_samples, 4\)"):
        metrics.faithfulness_correlation(net, ONES, ONES, masks=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="`masks` must be a boolean tensor"):
        metrics.faithfulness_correlation(net, ONES, ONES, masks=torch.ones(2, 4))
    with pytest.raises(ValueError, match="`n_samples` must be an integer >= 2"):
        metrics.faithfulness_correlation(net, ONES, ONES, n_samples=1)
    with pytest.raises(ValueError, match="`noise` must be > 0"):
        metrics.infidelity(net, ONES, ONES, noise=0.0)
    with pytest.raises(ValueError, match="registered attribution method.*Did you mean.*'saliency'"):
        metrics.max_sensitivity(net, ONES, "saliancy")
    with pytest.raises(TypeError, match="`explain` must be a registered method name"):
        metrics.max_sensitivity(net, ONES, 3)
    with pytest.raises(ValueError, match="`measure` must be one of"):
        metrics.agreement(ONES, ONES, measure="pearson")
    with pytest.raises(ValueError, match="`inputs` must be finite"):
        metrics.deletion_curve(net, ONES * float("nan"), ONES)
    with pytest.raises(ValueError, match="`attributions` must be finite"):
        metrics.complexity(torch.tensor([[1.0, float("inf")]]))


def test_explanation_objects_are_accepted_everywhere():
    net = mlp()
    x = torch.randn(3, 6, dtype=DT)
    e = Explanation(torch.randn(3, 6, dtype=DT), x, "custom", target=torch.tensor([0, 1, 2]))
    assert metrics.sparseness(e).shape == (3,)
    assert metrics.complexity(e).shape == (3,)
    assert metrics.agreement(e, e).shape == (3,)
    assert metrics.completeness_gap(net, x, e).shape == (3,)


# --------------------------------------------------------------------------- properties
rows = st.integers(min_value=2, max_value=12).flatmap(
    lambda d: st.lists(
        st.lists(st.floats(-100, 100, allow_nan=False), min_size=d, max_size=d),
        min_size=1,
        max_size=4,
    )
)


@settings(max_examples=40, deadline=None)
@given(rows)
def test_property_complexity_and_sparseness_bounds(values):
    a = torch.tensor(values, dtype=DT)
    d = a.shape[1]
    nonzero = a.abs().sum(1) > 0
    s, c = metrics.sparseness(a), metrics.complexity(a)
    assert torch.isnan(s[~nonzero]).all() and torch.isnan(c[~nonzero]).all()
    assert (s[nonzero] >= -1e-12).all() and (s[nonzero] <= 1 - 1 / d + 1e-12).all()
    assert (c[nonzero] >= -1e-12).all() and (c[nonzero] <= math.log(d) + 1e-9).all()
    # scale invariance
    torch.testing.assert_close(metrics.sparseness(a * 3.5), s, equal_nan=True)


@settings(max_examples=40, deadline=None)
@given(rows, st.randoms(use_true_random=False))
def test_property_agreement_symmetric_and_bounded(values, rnd):
    a = torch.tensor(values, dtype=DT)
    b = a[:, torch.tensor(rnd.sample(range(a.shape[1]), a.shape[1]))]
    for measure in ("spearman", "kendall"):
        ab = metrics.agreement(a, b, measure=measure)
        torch.testing.assert_close(ab, metrics.agreement(b, a, measure=measure), equal_nan=True)
        finite = ab[~torch.isnan(ab)]
        assert (finite.abs() <= 1 + 1e-9).all()
        self_agree = metrics.agreement(a, a, measure=measure)
        assert torch.all(torch.isnan(self_agree) | (self_agree - 1).abs().lt(1e-9))


@settings(max_examples=25, deadline=None)
@given(rows)
def test_property_deletion_curve_endpoints(values):
    a = torch.tensor(values, dtype=DT)
    d = a.shape[1]
    torch.manual_seed(0)
    net = nn.Linear(d, 1).to(DT)
    x = torch.randn(a.shape[0], d, dtype=DT)
    curve = metrics.deletion_curve(net, x, a, step=1)
    torch.testing.assert_close(curve.scores[:, 0], net(x)[:, 0].detach())
    torch.testing.assert_close(curve.scores[:, -1], net(torch.zeros_like(x))[:, 0].detach())
    ins = metrics.insertion_curve(net, x, a, step=1)
    torch.testing.assert_close(ins.scores.flip(1)[:, 0], curve.scores[:, 0])


def test_results_are_ordinary_tensors():
    net = linear4()
    curve = metrics.deletion_curve(net, ONES, ONES, step=1)
    assert not curve.scores.is_inference() and not curve.auc.is_inference()
    curve.scores[:, 0] = 0.0  # usable like any tensor


def test_default_cpu_chunks_match_explicit_batches_and_leave_no_hooks():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4096, 3))
    net = net.to(DT)
    x, attr = torch.randn(40, 1, 8, 8, dtype=DT), torch.randn(40, 1, 8, 8, dtype=DT)
    pert = torch.randn(40, 30, 1, 8, 8, dtype=DT) * 0.1  # 1200 rows: several default chunks
    default = metrics.infidelity(net, x, attr, target=0, perturbations=pert)
    chunked = metrics.infidelity(net, x, attr, target=0, perturbations=pert, batch_size=100)
    torch.testing.assert_close(default, chunked)
    assert all(not m._forward_hooks for m in net.modules())


def test_keyed_infidelity_noise_does_not_depend_on_chunks_or_shards():
    """The GPU's noise source (per-example keyed streams), run here on the CPU."""
    from pellucid.metrics.infidelity import _KeyedNoise

    like = torch.zeros(1, dtype=torch.float64)
    whole = _KeyedNoise(7, 0, 5, 3, like)(0, 20)
    for size in (1, 3, 7, 20):
        source = _KeyedNoise(7, 0, 5, 3, like)
        parts = torch.cat([source(a, min(20, a + size)) for a in range(0, 20, size)])
        assert torch.equal(parts, whole), size
    shard = _KeyedNoise(7, 2, 5, 3, like)(0, 10)  # a rank whose shard starts at example 2
    assert torch.equal(shard, whole[10:20])
    assert whole.shape == (20, 3) and torch.isfinite(whole).all()
    assert not torch.equal(whole[:5], whole[5:10])  # examples draw from different streams
