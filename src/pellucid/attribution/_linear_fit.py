"""Batched weighted least squares and ridge in torch: one design, every example at once.

KernelSHAP and LIME evaluate the same coalitions (or perturbations) for every example, so
the design matrix and the weights are shared and only the responses differ: one (P, P)
system is factored once and solved for all N right-hand sides. Everything runs in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LinearFit", "efficient_wls", "solve_normal", "weighted_ridge"]


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
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        inv = torch.cholesky_solve(eye, chol)
        x = torch.cholesky_solve(b, chol)
        if bool(torch.isfinite(x).all()):
            return x, inv
    inv = torch.linalg.pinv(a, hermitian=True)
    return inv @ b, inv


def _r2(y: torch.Tensor, fitted: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    mean = (y * w).sum(1, keepdim=True) / w.sum()
    total = ((y - mean) ** 2 * w).sum(1)
    resid = ((y - fitted) ** 2 * w).sum(1)
    return torch.where(total > 0, 1.0 - resid / total.clamp_min(1e-300), torch.ones_like(total))


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
    fitted = intercept.unsqueeze(1) + coef @ x.T
    resid = ((y - fitted) ** 2 * w).sum(1) / w.sum()
    dof = max(s - p - int(fit_intercept), 1)
    var = resid.unsqueeze(1) * (s / dof) * (torch.diagonal(inv) * w.sum() / s).unsqueeze(0)
    return LinearFit(coef, intercept, _r2(y, fitted, w), var.clamp_min(0).sqrt())


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
    z, y, w, total = (t.to(torch.float64) for t in (z, y, w, total))
    s, p = z.shape
    w = w / w.sum()
    if p == 1:
        coef = total.unsqueeze(1)
        zero = torch.zeros_like(coef)
        return LinearFit(coef, torch.zeros_like(total), torch.ones_like(total), zero)
    last = z[:, -1:]
    xr = z[:, :-1] - last
    yr = y - last.T * total.unsqueeze(1)
    xw = xr * w.unsqueeze(1)
    head, inv = solve_normal(xr.T @ xw, xw.T @ yr.T)
    head = head.T
    coef = torch.cat([head, (total - head.sum(1)).unsqueeze(1)], dim=1)
    fitted = coef @ z.T
    if exact:
        stderr = torch.zeros_like(coef)
    else:
        resid = ((y - fitted) ** 2 * w).sum(1)
        sigma2 = resid / max(s - (p - 1), 1)
        var_head = torch.diagonal(inv)
        var_last = inv.sum()
        var = torch.cat([var_head, var_last.reshape(1)])
        stderr = (sigma2.unsqueeze(1) * var.unsqueeze(0)).clamp_min(0).sqrt()
    zero = torch.zeros_like(total)
    return LinearFit(coef, zero, _r2(y, fitted, w), stderr)
