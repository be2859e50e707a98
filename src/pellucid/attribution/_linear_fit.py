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
    "constrained_design",
    "constrained_fit",
    "efficient_wls",
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


def _r2(y: torch.Tensor, resid: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted R^2 from the responses ``y`` (N, S), the weighted residual sum of squares
    ``resid`` (N,) and normalized weights ``w`` (S,) summing to 1 (1 where ``y`` is constant)."""
    total = (y - (y @ w).unsqueeze(1)).square_() @ w
    r2 = 1.0 - resid / total
    return r2 if bool((total > 0).all()) else torch.where(total > 0, r2, torch.ones_like(r2))


def weighted_ridge(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    *,
    alpha: float = 0.0,
    fit_intercept: bool = True,
) -> LinearFit:
    """Minimize ``sum_s w_s (y[n, s] - b[n] - x[s] . c[n])**2 + alpha ||c[n]||**2`` for all n.

    The same objective as scikit-learn's ``Ridge(alpha).fit(x, y[n], sample_weight=w)``.

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
    x, y, w = (t.to(torch.float64) for t in (x, y, w))
    s, p = x.shape
    if fit_intercept:
        xm = (w @ x) / w.sum()
        ym = (y @ w) / w.sum()
        xc, yc = x - xm, y - ym.unsqueeze(1)
    else:
        xm = torch.zeros(p, dtype=x.dtype, device=x.device)
        ym = torch.zeros(y.shape[0], dtype=x.dtype, device=x.device)
        xc, yc = x, y
    xw = xc * w.unsqueeze(1)
    a = xc.T @ xw + alpha * torch.eye(p, dtype=x.dtype, device=x.device)
    coef, inv = solve_normal(a, xw.T @ yc.T)
    coef = coef.T  # (N, P)
    intercept = ym - coef @ xm
    err = y - intercept.unsqueeze(1) - coef @ x.T
    wn = w / w.sum()
    resid = (err * err) @ wn
    dof = max(s - p - int(fit_intercept), 1)
    var = resid.unsqueeze(1) * (s / dof) * (torch.diagonal(inv) * w.sum() / s).unsqueeze(0)
    return LinearFit(coef, intercept, _r2(y, resid, wn), var.clamp_min(0).sqrt())


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
    f64 = torch.float64
    y, total = y.to(f64), total.to(f64)
    s, p = design.xr.shape[0], design.xr.shape[1] + 1
    yr = torch.addcmul(y, total.unsqueeze(1), design.last, value=-1.0)
    # Per-example products (batched matmuls of one row each): an example's coefficients are
    # then bit-identical whatever else is in the batch (a plain matmul's rounding depends on
    # the number of rows), so batch sizes and ranks do not change the result.
    head = _rowwise(_rowwise(yr, design.xw), design.inv)  # (N, P-1)
    # phi = [head; total - sum(head)], so the fitted values are yr's fit plus last * total
    resid = (yr - _rowwise(head, design.xr.T)).square_().mul_(design.w).sum(1)
    coef = torch.cat([head, (total - head.sum(1)).unsqueeze(1)], dim=1)
    if exact:
        stderr = torch.zeros_like(coef)
    else:
        stderr = torch.outer(resid / max(s - (p - 1), 1), design.var).clamp_min_(0).sqrt_()
    return LinearFit(coef, torch.zeros_like(total), _r2(y, resid, design.w), stderr)


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
