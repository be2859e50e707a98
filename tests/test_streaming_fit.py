"""The block-by-block fit and designs of KernelSHAP and LIME equal the whole ones.

``StreamingFit`` merges per-block sufficient statistics; KernelSHAP's design and LIME's
samples come in blocks whose size depends on the number of players only. Splitting
differently must change nothing but rounding (float64: ~1e-16 relative).
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

import pellucid
from pellucid.attribution import _kernel_design
from pellucid.attribution._kernel_design import unrank_subsets
from pellucid.attribution._linear_fit import StreamingFit, ridge_result, weighted_ridge

D = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _closed_form(x, y, w, alpha, intercept):
    """sum_s w_s (y - b - x c)^2 + alpha |c|^2 by explicit normal equations (augmented)."""
    s, p = x.shape
    a = torch.cat([x, torch.ones(s, 1, dtype=D)], 1) if intercept else x
    pen = alpha * torch.eye(a.shape[1], dtype=D)
    if intercept:
        pen[-1, -1] = 0.0
    sol = torch.linalg.solve(a.T @ (a * w.unsqueeze(1)) + pen, (a * w.unsqueeze(1)).T @ y.T).T
    return (sol[:, :p], sol[:, p]) if intercept else (sol, torch.zeros(y.shape[0], dtype=D))


@pytest.mark.parametrize("intercept", [True, False])
@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_blocks_merge_to_the_whole_fit(intercept, alpha):
    g = _gen(0)
    x = torch.randn(500, 6, generator=g, dtype=D) + 3.0  # off-center: centering matters
    y = torch.randn(3, 500, generator=g, dtype=D) + 10.0
    w = torch.rand(500, generator=g, dtype=D)
    acc = StreamingFit(intercept=intercept, alpha=alpha)
    for lo, hi in ((0, 7), (7, 200), (200, 500)):
        acc.add(x[lo:hi], y[:, lo:hi], w[lo:hi])
    blocks = ridge_result(acc.solve(), fit_intercept=intercept)
    whole = weighted_ridge(x, y, w, alpha=alpha, fit_intercept=intercept)
    coef, b = _closed_form(x, y, w, alpha, intercept)
    torch.testing.assert_close(blocks.coef, coef, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(blocks.intercept, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(whole.coef, coef, rtol=1e-10, atol=1e-12)
    for name in ("r2", "stderr", "intercept"):
        torch.testing.assert_close(getattr(blocks, name), getattr(whole, name), rtol=1e-10, atol=0)


def test_an_exact_fit_has_no_residual_across_blocks():
    # y = 7 + x @ c exactly, with a large offset: a residual taken as the difference of
    # accumulated sums would cancel to ~1e-16 * 50**2 and give stderr ~1e-7; the pilot
    # solution of the first block keeps the residual at rounding level.
    g = _gen(1)
    x = torch.randn(3000, 5, generator=g, dtype=D)
    c = torch.tensor([[1.0, -2.0, 0.5, 3.0, 40.0]], dtype=D)
    y = 7.0 + c @ x.T
    acc = StreamingFit(intercept=True)
    for lo in range(0, 3000, 256):
        acc.add(x[lo : lo + 256], y[:, lo : lo + 256], torch.ones(x[lo : lo + 256].shape[0]))
    fit = ridge_result(acc.solve(), fit_intercept=True)
    torch.testing.assert_close(fit.coef, c, rtol=0, atol=1e-12)
    assert float(fit.stderr.max()) < 1e-12
    assert float(fit.r2) == pytest.approx(1.0, abs=1e-14)


def test_unranked_subsets_are_torch_combinations_in_order():
    for p, k in ((7, 3), (10, 5), (9, 1), (12, 6)):
        combos = torch.combinations(torch.arange(p), r=k)
        z = torch.zeros(combos.shape[0], p, dtype=torch.bool).scatter_(1, combos, True)
        assert torch.equal(unrank_subsets(p, k, 0, math.comb(p, k)), z)
        assert torch.equal(unrank_subsets(p, k, 5, 9), z[5:9])


@pytest.fixture
def streamed(monkeypatch):
    """Every KernelSHAP design streamed in blocks of 64 coalitions (none built whole)."""

    def use(balance: bool = True) -> None:
        monkeypatch.setattr(_kernel_design, "CACHED_DESIGN_ELEMENTS", 0)
        monkeypatch.setattr(_kernel_design, "BLOCK_ELEMENTS", 64 * 12)
        if not balance:
            monkeypatch.setattr(_kernel_design, "BALANCE_MAX_COALITIONS", 0)

    yield use
    _kernel_design._cached_design.cache_clear()
    _kernel_design._balanced_design.cache_clear()


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


@pytest.mark.parametrize(
    ("n_samples", "balance"), [(400, True), (400, False), (4094, True), (2000, True)]
)
def test_streamed_kernel_design_equals_the_whole_one(streamed, n_samples, balance):
    net, x = _net().double(), torch.randn(3, 12, dtype=D)

    def run() -> pellucid.Explanation:
        return pellucid.kernel_shap(net, x, target=1, n_samples=n_samples, generator=_gen(2))

    if not balance:  # the same unbalanced design, built whole (in one piece) vs in blocks
        streamed(balance=False)
        _kernel_design.CACHED_DESIGN_ELEMENTS = 1 << 20
        _kernel_design._cached_design.cache_clear()
    whole = run()
    streamed(balance=balance)
    _kernel_design._cached_design.cache_clear()
    blocks = run()
    # 400: enumerated sizes 1 and 11, then balanced pairs; 4094: every coalition (exact);
    # 2000: sizes 1, 2, 10, 11 enumerated by unranking; unbalanced: the permutation stream
    assert blocks.extras["exact"] is (n_samples == 4094)
    assert blocks.extras["n_evaluations"] == whole.extras["n_evaluations"]
    for a, b in ((blocks.attributions, whole.attributions),) + tuple(
        (blocks.extras[k], whole.extras[k]) for k in ("stderr", "r2")
    ):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize(("rows", "n_samples", "d"), [(48, 1000, 5), (992, 995, 3)])
@pytest.mark.parametrize("sampler", ["interpretable", "tabular"])
def test_lime_in_blocks_equals_lime_in_one_block(monkeypatch, rows, n_samples, d, sampler):
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(d, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    net, x = net.double(), torch.randn(4, d, dtype=D)
    kw = {"train_data": torch.randn(40, d, dtype=D)} if sampler == "tabular" else {}

    def run() -> pellucid.Explanation:
        return pellucid.lime(net, x, target=0, n_samples=n_samples, generator=_gen(4), **kw)

    whole = run()  # n_samples <= block_rows(d): one block
    lime_module = importlib.import_module("pellucid.attribution.lime")  # (the function shadows it)
    monkeypatch.setattr(lime_module, "block_rows", lambda p: rows)
    blocks = run()  # (992, 995, 3): a 3-sample tail joins the block before (Gaussian groups)
    for name in ("coefficients", "intercept", "r2", "stderr"):
        torch.testing.assert_close(blocks.extras[name], whole.extras[name], rtol=1e-11, atol=1e-14)
    torch.testing.assert_close(blocks.attributions, whole.attributions, rtol=1e-11, atol=1e-14)
