"""Agreement between two explanations of the same inputs: rank correlation and top-k overlap.

Used to ask whether a pruned or clipped model is explained like the dense one, and by the
randomization check. Rankings use ``|attribution|`` by default (which features matter).
"""

from __future__ import annotations

from typing import Any

import torch

from pellucid._evaluate import DEFAULT_ELEMENT_BUDGET
from pellucid._validation import check_choice, check_int
from pellucid.metrics._common import as_attributions, flat_features

__all__ = [
    "MEASURES",
    "agreement",
    "kendall",
    "pearson_rows",
    "rank",
    "spearman",
    "top_k_overlap",
]

MEASURES = ("spearman", "kendall", "top_k")


def _pair(a: Any, b: Any, absolute: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(absolute, bool):
        raise TypeError(f"`absolute` must be True or False; got {absolute!r}.")
    ta, ea = as_attributions(a, name="a")
    tb, eb = as_attributions(b, name="b")
    if ta.shape != tb.shape:
        raise ValueError(
            f"`a` and `b` must explain the same inputs: got shapes {tuple(ta.shape)} and "
            f"{tuple(tb.shape)}."
        )
    if ea is not None and eb is not None:
        xa, xb = ea.inputs, eb.inputs
        if xa.shape != xb.shape or not torch.allclose(
            xa.to(xb.device, xb.dtype), xb, rtol=1e-5, atol=1e-6
        ):
            raise ValueError(
                "`a` and `b` are explanations of different inputs; agreement compares two "
                "explanations of the same inputs (check `a.inputs` and `b.inputs`)."
            )
    ta, tb = flat_features(ta), flat_features(tb).to(ta.device, ta.dtype)
    return (ta.abs(), tb.abs()) if absolute else (ta, tb)


def rank(values: torch.Tensor) -> torch.Tensor:
    """Row-wise ranks starting at 1, ties given their average rank (as ``scipy.stats.rankdata``).

    Example:
        >>> import torch
        >>> rank(torch.tensor([[3.0, 1.0, 3.0, 2.0]]))
        tensor([[3.5000, 1.0000, 3.5000, 2.0000]])
    """
    sorted_values = values.sort(dim=1).values.contiguous()
    values = values.contiguous()
    left = torch.searchsorted(sorted_values, values, side="left")
    right = torch.searchsorted(sorted_values, values, side="right")
    dtype = values.dtype if values.is_floating_point() else torch.get_default_dtype()
    return (left + right + 1).to(dtype) / 2


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation; NaN where a row is constant."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    corr = (a * b).sum(dim=1) / denom
    return torch.where(denom > 0, corr, torch.full_like(corr, float("nan")))


def spearman(a: Any, b: Any, *, absolute: bool = True) -> torch.Tensor:
    """Spearman rank correlation between two explanations, one value per example.

    NaN for an example where either explanation is constant.

    Example:
        >>> import torch
        >>> spearman(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 20.0, 30.0]])).round()
        tensor([1.])
    """
    ta, tb = _pair(a, b, absolute)
    return pearson_rows(rank(ta), rank(tb))


def kendall(a: Any, b: Any, *, absolute: bool = True) -> torch.Tensor:
    """Kendall's tau-b between two explanations, one value per example (as scipy's default).

    Costs ``O(d^2)`` per example (computed in memory-bounded chunks).

    Example:
        >>> import torch
        >>> kendall(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]]))
        tensor([-1.])
    """
    ta, tb = _pair(a, b, absolute)
    n, d = ta.shape
    pairs = d * (d - 1) / 2
    rows = max(1, DEFAULT_ELEMENT_BUDGET // max(1, d * d))
    out = []
    for start in range(0, n, rows):
        xa, xb = ta[start : start + rows], tb[start : start + rows]
        sa = torch.sign(xa.unsqueeze(2) - xa.unsqueeze(1))
        sb = torch.sign(xb.unsqueeze(2) - xb.unsqueeze(1))
        concordance = (sa * sb).sum(dim=(1, 2)) / 2
        ties_a = (sa == 0).sum(dim=(1, 2)).to(ta.dtype).sub(d) / 2
        ties_b = (sb == 0).sum(dim=(1, 2)).to(ta.dtype).sub(d) / 2
        denom = torch.sqrt((pairs - ties_a) * (pairs - ties_b))
        tau = concordance / denom
        out.append(torch.where(denom > 0, tau, torch.full_like(tau, float("nan"))))
    return torch.cat(out)


def top_k_overlap(a: Any, b: Any, *, k: int | float = 0.1, absolute: bool = True) -> torch.Tensor:
    """Fraction of the ``k`` top-ranked features that two explanations share, per example.

    Args:
        k: a number of features (int >= 1) or a fraction of them (float in (0, 1]).

    Raises:
        TypeError: `a` or `b` is not an Explanation or a tensor, or `absolute` is not a bool.
        ValueError: `a` and `b` explain different inputs (or shapes), or `k` is out of range.

    Example:
        >>> import torch
        >>> a = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
        >>> top_k_overlap(a, torch.tensor([[4.0, 1.0, 3.0, 2.0]]), k=2)
        tensor([0.5000])
    """
    ta, tb = _pair(a, b, absolute)
    d = ta.shape[1]
    if isinstance(k, float):
        if not 0.0 < k <= 1.0:
            raise ValueError(f"`k` as a fraction must be in (0, 1]; got {k}.")
        count = max(1, round(k * d))
    else:
        count = check_int(
            "k",
            k,
            min_value=1,
            max_value=d,
            hint=f" The explanations have {d} features per example.",
        )
    top_a = torch.zeros_like(ta, dtype=torch.bool).scatter_(1, ta.topk(count, dim=1).indices, True)
    top_b = torch.zeros_like(tb, dtype=torch.bool).scatter_(1, tb.topk(count, dim=1).indices, True)
    return (top_a & top_b).sum(dim=1).to(ta.dtype) / count


def agreement(
    a: Any,
    b: Any,
    *,
    measure: str = "spearman",
    k: int | float = 0.1,
    absolute: bool = True,
) -> torch.Tensor:
    """Agreement between two explanations of the same inputs, one value per example.

    Args:
        a, b: attribution tensors of the same shape, or ``Explanation`` objects of the same
            inputs.
        measure: ``"spearman"``, ``"kendall"`` or ``"top_k"`` (overlap of the top ``k``).
        k: for ``top_k``: a number of features or a fraction of them.
        absolute: compare rankings of ``|attribution|`` (True) or of the signed values.

    Raises:
        TypeError: `a` or `b` is not an Explanation or a tensor.
        ValueError: `a` and `b` explain different inputs (or shapes), or `measure` is unknown.

    Example:
        >>> import torch
        >>> a = torch.tensor([[0.1, 0.5, 0.2, 0.9]])
        >>> agreement(a, a * 2, measure="kendall")
        tensor([1.])
    """
    check_choice("measure", measure, MEASURES)
    if measure == "spearman":
        return spearman(a, b, absolute=absolute)
    if measure == "kendall":
        return kendall(a, b, absolute=absolute)
    return top_k_overlap(a, b, k=k, absolute=absolute)
