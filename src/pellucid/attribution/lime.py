"""LIME (Ribeiro et al. 2016): a weighted ridge fit around each example, all examples at once.

Two samplers, one fit:

* **tabular** (``train_data`` given): Gaussian samples around each example scaled by the
  training standard deviations, weighted by an exponential kernel on the standardized
  distance (the lime package's ``LimeTabularExplainer`` with ``discretize_continuous=False``
  and ``sample_around_instance=True``, not its defaults: see :func:`lime`);
* **interpretable** (otherwise): random on/off coalitions of the players of a
  ``feature_mask`` (superpixels for images: a tensor, ``"grid"`` or ``"slic"``), off players
  set to the baseline, weighted by an exponential kernel on the cosine distance to the
  all-on coalition (lime's image explainer).

The perturbations are shared by every example, so the design matrix and weights are shared
and one factorization solves every example. They are drawn, evaluated and added to the
fit's sufficient statistics block by block
(:class:`~pellucid.attribution._linear_fit.StreamingFit`), so memory does not grow with
``n_samples``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from pellucid._evaluate import Prepared, block_scores, broadcast_baseline
from pellucid._registry import register
from pellucid._shell import Run, explaining
from pellucid._targets import Target
from pellucid._validation import check_float, check_generator, check_int, check_tensor
from pellucid.attribution._coalitions import (
    CoalitionValues,
    chunk_rows,
    resolve_feature_mask,
)
from pellucid.attribution._kernel_design import block_rows
from pellucid.attribution._linear_fit import Solution, StreamingFit, ridge_result
from pellucid.attribution._tokens import check_token_call, token_run
from pellucid.attribution.segmentation import grid_segments, slic_segments
from pellucid.explanation import Explanation

__all__ = ["grid_segments", "lime", "slic_segments"]


def _kernel(distance: torch.Tensor, width: float) -> torch.Tensor:
    """lime's exponential kernel ``sqrt(exp(-d**2 / width**2))``."""
    return torch.exp(-(distance.to(torch.float64) ** 2) / (2 * width**2))


def _sample_blocks(n_samples: int, rows: int, d: int) -> list[tuple[int, int]]:
    """Blocks of ``rows`` samples; a last block of fewer than 16 values joins the one before,
    so blocks of Gaussian draws reproduce one draw of all samples (torch's CPU normal
    sampler works on groups of 16 values and treats a tail of fewer than 16 apart)."""
    bounds = [(lo, min(n_samples, lo + rows)) for lo in range(0, n_samples, rows)]
    if len(bounds) > 1 and (bounds[-1][1] - bounds[-1][0]) * d < 16:
        bounds[-2:] = [(bounds[-2][0], n_samples)]
    return bounds


def _tabular(
    prep: Prepared,
    train_data: torch.Tensor,
    n_samples: int,
    width: float | None,
    generator: torch.Generator | None,
    batch_size: int | None,
    alpha: float,
) -> tuple[Solution, torch.Tensor, float, torch.Tensor]:
    """Gaussian samples around each example, evaluated and fitted block by block (see
    :class:`~pellucid.attribution._linear_fit.StreamingFit`): ``(solution, training mean,
    width, training std)``."""
    x = prep.inputs
    n, shape = x.shape[0], tuple(x.shape[1:])
    train = check_tensor("train_data", train_data, min_ndim=1, floating=True, finite=True)
    if tuple(train.shape[1:]) != shape:
        raise ValueError(
            f"`train_data` rows must have the shape of one example {shape}; got "
            f"{tuple(train.shape[1:])}."
        )
    flat_train = train.detach().reshape(train.shape[0], -1).to(device=x.device, dtype=x.dtype)
    mean = flat_train.mean(0)
    std = flat_train.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    d = mean.shape[0]
    width = 0.75 * math.sqrt(d) if width is None else width
    flat_x = x.reshape(n, -1)
    prep.forward.expect(n * n_samples)
    acc = StreamingFit(intercept=True, alpha=alpha)
    for lo, hi in _sample_blocks(n_samples, block_rows(d), d):
        eps = torch.randn(hi - lo, d, generator=generator).to(device=x.device, dtype=x.dtype)
        if lo == 0:
            eps[0] = 0  # the example itself, as lime does
        step = eps * std
        size = chunk_rows(batch_size, shape, total=n * (hi - lo), device=x.device)

        def block(e0: int, e1: int, j0: int, j1: int, step: torch.Tensor = step) -> torch.Tensor:
            return (flat_x[e0:e1].unsqueeze(1) + step[j0:j1].unsqueeze(0)).view(-1, *shape)

        y = block_scores(
            prep.forward,
            prep.target,
            block,
            n,
            hi - lo,
            size,
            device=x.device,
            balance=batch_size is None,
        ).view(n, hi - lo)
        acc.add(eps, y, _kernel(eps.norm(dim=1), width))
    return acc.solve(), mean, width, std


@register(
    kind="surrogate",
    stochastic=True,
    input_kinds=("tabular", "image", "text"),
    contract_kwargs={"n_samples": 64},
)
def lime(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    n_samples: int = 1000,
    train_data: torch.Tensor | None = None,
    feature_mask: torch.Tensor | str | None = None,
    n_segments: int = 16,
    baseline: float | torch.Tensor | None = None,
    mask_token: int | torch.Tensor | None = None,
    kernel_width: float | None = None,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """LIME: explain each example by a kernel-weighted ridge regression on perturbations.

    With ``train_data`` (tabular): samples ``x + N(0, 1) * std`` (training standard
    deviations), kernel on the standardized distance (default width ``0.75 * sqrt(D)``).
    ``extras["coefficients"]`` are the local slopes per standard deviation; the
    attributions are ``slope * (x - training mean)``, the local model's account of
    ``f(x) - f(mean)``.

    How this relates to the lime package: the coefficients are the weights of
    ``LimeTabularExplainer(train, discretize_continuous=False, sample_around_instance=True,
    feature_selection="none")`` (same sampler, kernel, width and ridge; they agree up to
    sampling noise, about 3% on a tanh network with 4000 samples). They are **not**
    the weights of lime's defaults, which differ in two ways: ``sample_around_instance=False``
    draws the samples around the *training mean* instead of around ``x`` (so the fit
    describes the model over the whole data distribution, weighted towards ``x``; on the
    same network the weights then differ by 20-40%, and can change sign), and
    ``discretize_continuous=True`` replaces each feature by quartile-bin indicators, whose
    weights are per-bin effects, not slopes. pellucid explains the neighbourhood of ``x``.

    Without ``train_data``: on/off coalitions of the ``feature_mask`` players (each on with
    probability 1/2; the first sample is the example itself), off players take the
    ``baseline``, kernel on the cosine distance to the all-on coalition (default width
    0.25). The attribution of every feature of a player is the player's coefficient; with
    ``alpha=0`` on a linear model it is exactly ``w * (x - baseline)``.

    ``extras`` holds ``coefficients`` (N, P), ``intercept``, the weighted ``r2`` of the local
    fit and the coefficients' ``stderr``. Memory does not grow with ``n_samples``: the
    perturbations are drawn, evaluated and added to the ridge fit's sufficient statistics
    in blocks of about ``2**18 / P`` samples (the rows of one forward pass are bounded by
    ``batch_size``).

    Args:
        model: a callable ``Tensor -> Tensor``.
        inputs: a batch-first float tensor, or integer token ids with ``mask_token``.
        target: which output to explain.
        n_samples: perturbations per example (the first is the example itself).
        train_data: training rows for the tabular sampler (their mean and std are used).
        feature_mask: players for the interpretable sampler: group ids ``0..P-1``,
            ``"grid"``/``"slic"`` superpixels, or None (every feature a player).
        n_segments: number of superpixels for ``"grid"``/``"slic"``.
        baseline: the value of an "off" player (interpretable sampler; default 0).
        mask_token: for token-id inputs (an integer tensor): the id an "off" token takes
            (interpretable sampler; one id or a tensor of ids per position).
        kernel_width: the kernel's width (see above for defaults).
        alpha: ridge strength (lime's default 1.0; 0 for plain weighted least squares).
        generator: the random source (same state, same result).
        batch_size: rows per forward pass (memory bound).
        max_memory: a budget for the call's peak memory, in bytes or as a size such as
            ``"2GB"`` or ``"512MiB"``: picks ``batch_size`` from the method's per-row cost
            and the model's activations measured on one row (``params["batch_size"]``).
            Pass it or ``batch_size``, not both.

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            `feature_mask` does not match `inputs`, `n_samples` is too small for the fit (the
            message says how many), or `alpha`, `kernel_width` or `n_segments` is out of range;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1, bias=False)
        >>> e = lime(net, torch.ones(2, 3), alpha=0.0, n_samples=50,
        ...          generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(e.attributions, net.weight.detach().expand(2, 3), atol=1e-5)
        True
    """
    alpha = check_float("alpha", alpha, min_value=0.0)
    width = (
        None
        if kernel_width is None
        else check_float("kernel_width", kernel_width, min_value=0.0, min_inclusive=False)
    )
    check_int("n_segments", n_segments, min_value=1)
    check_generator("generator", generator)
    if train_data is not None and (
        feature_mask is not None or baseline is not None or mask_token is not None
    ):
        raise ValueError(
            "`train_data` selects the tabular sampler, which perturbs every feature around "
            "the example; `feature_mask`, `baseline` and `mask_token` belong to the "
            "interpretable (on/off) sampler. Pass one or the other."
        )
    tokens = check_token_call("lime", model, inputs, mask_token, baseline=baseline)
    with explaining("lime", locals(), floating=not tokens) as outer:
        run, baseline = token_run(outer, mask_token) if tokens else (outer, baseline)
        x = run.inputs
        if train_data is not None:
            fit, attr, base, n_samples, width = _lime_tabular(
                run, train_data, n_samples, width, alpha, generator
            )
            mode = "tabular"
        else:
            fit, attr, base, n_samples, width = _lime_interpretable(
                run, feature_mask, n_segments, baseline, n_samples, width, alpha, generator
            )
            mode = "interpretable"
        params = {"n_samples": n_samples, "mode": mode, "kernel_width": width, "alpha": alpha}
        run.result(
            attr.to(x.dtype),
            baseline=base,
            params={**params, "feature_mask": feature_mask, "n_segments": n_segments},
            extras={
                "coefficients": fit.coef.to(x.dtype),
                "intercept": fit.intercept,
                "r2": fit.r2,
                "stderr": fit.stderr.to(x.dtype),
            },
        )
    return run.explanation


def _lime_tabular(
    run: Run, train_data: Any, n_samples: int, width: float | None, alpha: float, generator: Any
) -> tuple[Any, torch.Tensor, torch.Tensor, int, float]:
    """The tabular sampler: Gaussian perturbations of every feature, scaled by the training
    data; the fit's slopes times the example's distance from the training mean."""
    x = run.inputs
    d = x[0].numel()
    n_samples = check_int(
        "n_samples",
        n_samples,
        min_value=d + 2,
        hint=(f" A ridge fit over {d} features needs at least {d + 2} samples."),
    )
    sol, mean, width, std = _tabular(
        run.prep, train_data, n_samples, width, generator, run.batch_size, alpha
    )
    fit = ridge_result(sol, fit_intercept=True)
    slope = fit.coef / std.to(torch.float64)
    attr = (slope * (x.reshape(x.shape[0], -1) - mean).to(torch.float64)).view_as(x)
    return fit, attr, mean.view(x.shape[1:]), n_samples, width


def _lime_interpretable(
    run: Run,
    feature_mask: Any,
    n_segments: int,
    baseline: Any,
    n_samples: int,
    width: float | None,
    alpha: float,
    generator: Any,
) -> tuple[Any, torch.Tensor, torch.Tensor, int, float]:
    """The interpretable sampler: players on or off, off ones at the baseline."""
    x = run.inputs
    fmask = resolve_feature_mask(feature_mask, x, n_segments=n_segments)
    p = fmask.n_players
    n_samples = check_int(
        "n_samples",
        n_samples,
        min_value=p + 2,
        hint=(f" A ridge fit over {p} players needs at least {p + 2} samples."),
    )
    width = 0.25 if width is None else width
    base = broadcast_baseline(baseline, x)
    game = CoalitionValues(
        run.prep.forward, run.prep.target, x, fmask, baseline=base, batch_size=run.batch_size
    )
    game.forward.expect(game.rows_per_eval(n_samples))
    acc = StreamingFit(intercept=True, alpha=alpha)
    for lo in range(0, n_samples, block_rows(p)):  # drawn, evaluated and fitted block by block
        z = torch.rand(min(n_samples - lo, block_rows(p)), p, generator=generator) < 0.5
        z = z.to(x.device)
        if lo == 0:
            z[0] = True
        on = z.sum(1).to(torch.float64)
        cosine = 1.0 - on.sqrt() / math.sqrt(p)  # cos(z, 1) = |z| / sqrt(|z| P)
        acc.add(z, game(z), _kernel(cosine, width))
    fit = ridge_result(acc.solve(), fit_intercept=True)
    return fit, fmask.spread(fit.coef).view_as(x), base, n_samples, width
