"""Batched weighted least squares and ridge in torch: one design, every example at once.

KernelSHAP and LIME evaluate the same coalitions (or perturbations) for every example, so
the design matrix and the weights are shared and only the responses differ: one (P, P)
system is factored once and solved for all N right-hand sides. Everything runs in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "ConstrainedDesign",
    "LinearFit",
    "Solution",
    "StreamingFit",
    "add_constrained",
    "constrained_design",
    "constrained_fit",
    "constrained_result",
    "efficient_wls",
    "ridge_result",
    "solve_normal",
    "weighted_ridge",
]


@dataclass(frozen=True)
class LinearFit:
    """A batched linear fit: ``y[n] ~ intercept[n] + X @ coef[n]``.

    Attributes:
        coef: (N, P) coefficients.
        intercept: (N,) intercepts.
        r2: (N,) weighted coefficient of determination of the fit.
        stderr: (N, P) standard errors of the coefficients (zeros when the fit is exact by
            construction, e.g. a full enumeration).
    """

    coef: torch.Tensor
    intercept: torch.Tensor
    r2: torch.Tensor
    stderr: torch.Tensor


def solve_normal(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``a @ x = b`` for a symmetric PSD ``a``; returns ``(x, a_inverse)``.

    Uses a Cholesky factorization and falls back to the pseudo-inverse when ``a`` is
    singular (e.g. too few distinct samples), so the minimum-norm solution comes back.
    """
    inv = _inverse_psd(a)
    return inv @ b, inv


def weighted_ridge(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    *,
    alpha: float = 0.0,
    fit_intercept: bool = True,
) -> LinearFit:
    """Minimize ``sum_s w_s (y[n, s] - b[n] - x[s] . c[n])**2 + alpha ||c[n]||**2`` for all n.

    The same objective as scikit-learn's ``Ridge(alpha).fit(x, y[n], sample_weight=w)``; one
    block of :class:`StreamingFit` (add the samples block by block to bound memory).

    Args:
        x: (S, P) design shared by every example.
        y: (N, S) responses.
        w: (S,) non-negative sample weights.
        alpha: ridge strength (0 for ordinary weighted least squares).
        fit_intercept: fit an unpenalized intercept.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [1.0], [2.0]])
        >>> fit = weighted_ridge(x, torch.tensor([[1.0, 3.0, 5.0]]), torch.ones(3))
        >>> round(fit.coef.item(), 9), round(fit.intercept.item(), 9)
        (2.0, 1.0)
    """
    acc = StreamingFit(intercept=fit_intercept, alpha=alpha)
    acc.add(x, y, w)
    return ridge_result(acc.solve(), fit_intercept=fit_intercept)


def ridge_result(sol: Solution, *, fit_intercept: bool) -> LinearFit:
    """A ridge :class:`Solution` as a :class:`LinearFit`, with the coefficients' standard
    errors ``sqrt(rss / dof * diag((X^T W X + alpha I)^-1) * sum(w))``."""
    dof = max(sol.count - sol.coef.shape[1] - int(fit_intercept), 1)
    s = sol.count
    var = sol.resid.unsqueeze(1) * (s / dof) * (torch.diagonal(sol.inv) * sol.sw / s).unsqueeze(0)
    return LinearFit(sol.coef, sol.intercept, sol.r2, var.clamp_min(0).sqrt())


@dataclass(frozen=True)
class Solution:
    """What :meth:`StreamingFit.solve` returns.

    Attributes:
        coef: (N, P) coefficients.
        intercept: (N,) intercepts (zeros without one).
        resid: (N,) weighted mean squared residual (weights normalized to sum 1).
        r2: (N,) weighted coefficient of determination.
        inv: (P, P) inverse of the (centered, ridge-shifted) weighted Gram matrix.
        sw: the sum of the weights (a 0-d tensor).
        count: the number of samples.
    """

    coef: torch.Tensor
    intercept: torch.Tensor
    resid: torch.Tensor
    r2: torch.Tensor
    inv: torch.Tensor
    sw: torch.Tensor
    count: int


class StreamingFit:
    """A weighted least-squares / ridge fit accumulated block by block of samples.

    Every block adds its samples' sufficient statistics (weighted means, the (P, P) scatter
    of the design, its cross products with every example's responses, the responses'
    scatter), merged with Chan, Golub and LeVeque's pairwise update, so nothing is held for
    all samples: memory is ``O(P**2 + N * P)`` plus one block, whatever the number of
    samples. The first block also gives a pilot solution ``c0``; every statistic is then of
    the residuals ``y - x @ c0``, so the final residual sum of squares (``r2``, ``stderr``)
    does not cancel catastrophically when the fit is nearly exact. Every product that
    touches an example's responses is computed one example at a time (batched matmuls of
    one row), so an example's result does not depend on the other examples. Float64.

    Args:
        intercept: fit an unpenalized intercept (the design is centered by its weighted mean).
        alpha: ridge strength on the coefficients.

    Example:
        >>> import torch
        >>> x = torch.arange(6.0).unsqueeze(1)
        >>> acc = StreamingFit(intercept=True)
        >>> for lo in (0, 4):  # two blocks of samples
        ...     acc.add(x[lo : lo + 4], 2 * x[lo : lo + 4].T + 1, torch.ones(len(x[lo : lo + 4])))
        >>> sol = acc.solve()
        >>> round(sol.coef.item(), 9), round(sol.intercept.item(), 9), sol.count
        (2.0, 1.0, 6)
    """

    def __init__(self, *, intercept: bool, alpha: float = 0.0) -> None:
        self.intercept, self.alpha = intercept, float(alpha)
        self.count, self.whole = 0, False
        self.sw = torch.zeros((), dtype=torch.float64)
        self.inverse: torch.Tensor | None = None
        self.pilot: torch.Tensor | None = None
        self.gram: torch.Tensor | None = None
        # weighted means and (co)scatters: design, pilot residuals, r2's responses
        self.stats: dict[str, torch.Tensor] = {}

    def add(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        *,
        response: torch.Tensor | None = None,
        inverse: torch.Tensor | None = None,
        xw: torch.Tensor | None = None,
    ) -> None:
        """Add a block: design ``x`` (C, P), responses ``y`` (N, C), weights ``w`` (C,).

        ``response`` (N, C): the responses whose weighted variance is the denominator of
        ``r2``, when it is not ``y``. ``inverse``: the inverse of the (ridge-shifted) Gram
        matrix when the block is the whole design and its factorization is known (a cached
        design, no intercept): the fit is then solved directly, and no block may follow;
        ``xw``: ``x * w`` when known too.
        """
        if self.whole:
            raise ValueError("StreamingFit: a block given with `inverse` must be the only one.")
        f64 = torch.float64
        x, y, w = x.to(f64), y.to(f64), w.to(f64)
        r = y if response is None else response.to(f64)
        sw = w.sum()
        if inverse is not None and self.count == 0 and not self.intercept:
            self._add_whole(x, y, w, r, sw, inverse, x * w.unsqueeze(1) if xw is None else xw)
            return
        xbar = (w @ x) / sw if self.intercept else torch.zeros_like(x[0])
        xc = x - xbar if self.intercept else x
        xw = xc * w.unsqueeze(1)
        gram = xc.T @ xw
        if self.pilot is None:  # the first block: a pilot solution from this block alone
            yc = y - ((y * w).sum(1) / sw).unsqueeze(1) if self.intercept else y
            self.pilot = _rowwise(_rowwise(yc, xw), _inverse_psd(self._ridge(gram)))
        e = y - _rowwise(self.pilot, x.T)
        ebar = (e * w).sum(1) / sw if self.intercept else torch.zeros_like(e[:, 0])
        ec = e - ebar.unsqueeze(1) if self.intercept else e
        rbar = (r * w).sum(1) / sw
        block = {
            "xbar": xbar,
            "ebar": ebar,
            "cross": _rowwise(ec, xw),
            "scatter": (ec * ec).mul_(w).sum(1),
            "rbar": rbar,
            "rscatter": (r - rbar.unsqueeze(1)).square_().mul_(w).sum(1),
        }
        if self.count == 0:
            self.stats, self.gram, self.sw = block, gram, sw
        else:
            self._merge(block, gram, sw)
        self.count += x.shape[0]

    def _add_whole(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        r: torch.Tensor,
        sw: torch.Tensor,
        inverse: torch.Tensor,
        xw: torch.Tensor,
    ) -> None:
        """The whole design with its factorization: solve now (the fixed cost of a call)."""
        self.pilot = _rowwise(_rowwise(y, xw), inverse)
        e = y - _rowwise(self.pilot, x.T)
        rbar = (r @ w) / sw
        self.stats = {"scatter": e.square_() @ w, "rscatter": (r - rbar.unsqueeze(1)).square_() @ w}
        self.whole, self.inverse, self.sw, self.count = True, inverse, sw, x.shape[0]

    def _merge(self, block: dict[str, torch.Tensor], gram: torch.Tensor, sw: torch.Tensor) -> None:
        """Chan et al.'s pairwise update of weighted means and (co)scatters."""
        old, total = self.stats, self.sw + sw
        f, share = self.sw * sw / total, sw / total
        dx, de = block["xbar"] - old["xbar"], block["ebar"] - old["ebar"]
        dr = block["rbar"] - old["rbar"]
        if self.gram is not None:
            self.gram = self.gram + gram + f * torch.outer(dx, dx)
        self.stats = {
            "xbar": old["xbar"] + share * dx,
            "ebar": old["ebar"] + share * de,
            "cross": old["cross"] + block["cross"] + f * de.unsqueeze(1) * dx.unsqueeze(0),
            "scatter": old["scatter"] + block["scatter"] + f * de * de,
            "rbar": old["rbar"] + share * dr,
            "rscatter": old["rscatter"] + block["rscatter"] + f * dr * dr,
        }
        self.sw = total

    def _ridge(self, gram: torch.Tensor) -> torch.Tensor:
        if self.alpha == 0:
            return gram
        return gram + self.alpha * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)

    def solve(self) -> Solution:
        """The fit over every block added."""
        if self.pilot is None:
            raise ValueError("StreamingFit.solve needs at least one block of samples; got none.")
        st = self.stats
        if self.whole and self.inverse is not None:
            inv, coef, rss = self.inverse, self.pilot, st["scatter"]
            intercept = torch.zeros_like(rss)
        else:
            if self.gram is None:
                raise ValueError("StreamingFit: no Gram matrix was accumulated.")
            inv = _inverse_psd(self._ridge(self.gram))
            cross = st["cross"]
            d = _rowwise(cross - self.alpha * self.pilot if self.alpha else cross, inv)
            coef = self.pilot + d
            rss = st["scatter"] - (d * cross).sum(1)
            if self.alpha:
                rss = rss - self.alpha * (d * coef).sum(1)
            intercept = st["ebar"] - _rowwise(d, st["xbar"].unsqueeze(1)).squeeze(1)
        resid = rss.clamp_min(0) / self.sw
        total = st["rscatter"] / self.sw
        r2 = torch.where(total > 0, 1.0 - resid / total, 1.0)  # 1 where y is constant
        return Solution(coef, intercept, resid, r2, inv, self.sw, self.count)


@dataclass(frozen=True)
class ConstrainedDesign:
    """KernelSHAP's regression design, factored once for every response and every call that
    shares the coalitions: ``y ~ z @ phi`` with ``sum(phi) == total``, the last player
    eliminated (``phi_P = total - sum(others)``).

    Attributes:
        xr: (S, P-1) coalitions minus the last player's column.
        xw: (S, P-1) ``xr`` times the weights.
        last: (1, S) the last player's column.
        w: (S,) the weights, normalized to sum 1.
        inv: (P-1, P-1) inverse of the weighted Gram matrix ``xr.T @ xw``.
        var: (P,) the coefficients' variance factors (the last: the sum of ``inv``).
    """

    xr: torch.Tensor
    xw: torch.Tensor
    last: torch.Tensor
    w: torch.Tensor
    inv: torch.Tensor
    var: torch.Tensor


def _inverse_psd(a: torch.Tensor) -> torch.Tensor:
    """The inverse of a symmetric PSD matrix: Cholesky, else the pseudo-inverse (singular
    designs, e.g. too few distinct coalitions, get the minimum-norm solution)."""
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        inv = torch.cholesky_inverse(chol)
        if math.isfinite(float(inv.sum())):
            return inv
    return torch.linalg.pinv(a, hermitian=True)


def constrained_design(z: torch.Tensor, w: torch.Tensor) -> ConstrainedDesign:
    """Factor KernelSHAP's design: ``z`` (S, P) coalitions (0/1, P >= 2), ``w`` (S,) weights."""
    f64 = torch.float64
    z, w = z.to(f64), w.to(f64)
    w = w / w.sum()
    last = z[:, -1:]
    xr = z[:, :-1] - last
    xw = xr * w.unsqueeze(1)
    inv = _inverse_psd(xr.T @ xw)
    var = torch.cat([torch.diagonal(inv), inv.sum().reshape(1)])
    return ConstrainedDesign(xr, xw, last.T.contiguous(), w, inv, var)


def _rowwise(rows: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``rows @ matrix`` computed one row at a time (one batched matmul): each row's result
    does not depend on the other rows."""
    n = rows.shape[0]
    return torch.bmm(rows.unsqueeze(1), matrix.expand(n, *matrix.shape)).squeeze(1)


def constrained_fit(
    design: ConstrainedDesign, y: torch.Tensor, total: torch.Tensor, *, exact: bool = False
) -> LinearFit:
    """Solve a factored design for the responses ``y`` (N, S) (values minus the empty
    coalition's) and ``total`` (N,) (the full coalition's minus the empty one's);
    ``exact``: the coalitions are a full enumeration, standard errors are then zero."""
    acc = StreamingFit(intercept=False)
    last = design.last.T
    add_constrained(acc, design.xr, last, design.w, y, total, inverse=design.inv, xw=design.xw)
    return constrained_result(acc.solve(), total, exact=exact, var=design.var)


def add_constrained(
    acc: StreamingFit,
    xr: torch.Tensor,
    last: torch.Tensor,
    w: torch.Tensor,
    y: torch.Tensor,
    total: torch.Tensor,
    *,
    inverse: torch.Tensor | None = None,
    xw: torch.Tensor | None = None,
) -> None:
    """Add one block of KernelSHAP's constrained regression to ``acc``: ``xr`` (C, P-1) the
    coalitions minus the last player's column ``last`` (C, 1), ``w`` (C,) weights, ``y``
    (N, C) values minus the empty coalition's, ``total`` (N,) full minus empty; ``inverse``
    and ``xw`` as in :meth:`StreamingFit.add` (a whole, factored design)."""
    f64 = torch.float64
    y = y.to(f64)
    yr = torch.addcmul(y, total.to(f64).unsqueeze(1), last.to(f64).T, value=-1.0)
    acc.add(xr, yr, w, response=y, inverse=inverse, xw=xw)


def constrained_result(
    sol: Solution, total: torch.Tensor, *, exact: bool = False, var: torch.Tensor | None = None
) -> LinearFit:
    """KernelSHAP's coefficients from the solution over all players but the last: the last
    is ``total - sum(others)``; standard errors from the residual and the Gram inverse
    (zeros when ``exact``, a full enumeration; ``var``: the design's variance factors, when
    known, see :class:`ConstrainedDesign`)."""
    total = total.to(torch.float64)
    head = sol.coef
    coef = torch.cat([head, (total - head.sum(1)).unsqueeze(1)], dim=1)
    if exact:
        stderr = torch.zeros_like(coef)
    else:
        if var is None:
            inv = sol.inv * sol.sw  # the inverse for weights normalized to sum 1
            var = torch.cat([torch.diagonal(inv), inv.sum().reshape(1)])
        dof = max(sol.count - head.shape[1], 1)
        stderr = torch.outer(sol.resid / dof, var).clamp_min_(0).sqrt_()
    return LinearFit(coef, torch.zeros_like(total), sol.r2, stderr)


def efficient_wls(
    z: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    total: torch.Tensor,
    *,
    exact: bool = False,
) -> LinearFit:
    """KernelSHAP's regression: ``y ~ z @ phi`` with ``sum(phi) == total`` enforced exactly.

    The last player is eliminated (``phi_P = total - sum(others)``), the rest is a weighted
    least squares fit without intercept; the constraint then holds to rounding.

    Args:
        z: (S, P) coalitions (0/1), shared by all examples.
        y: (N, S) values minus the empty-coalition value.
        w: (S,) kernel weights.
        total: (N,) full-coalition value minus the empty-coalition value.
        exact: the coalitions are a full enumeration; standard errors are then zero.
    """
    if z.shape[1] == 1:
        total = total.to(torch.float64)
        coef = total.unsqueeze(1)
        zero = torch.zeros_like(coef)
        return LinearFit(coef, torch.zeros_like(total), torch.ones_like(total), zero)
    return constrained_fit(constrained_design(z, w), y, total, exact=exact)
