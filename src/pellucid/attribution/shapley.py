"""Shapley values: exact enumeration, antithetic permutation sampling and KernelSHAP.

All three share one value function (:class:`~pellucid.attribution._coalitions.
CoalitionValues`): players absent from a coalition take a fixed ``baseline`` or, with a
``background`` set, every background row in turn (the expectation shap's KernelExplainer
uses; :func:`summarize_background` shrinks a large set with k-means). The coalitions are
shared by all examples, so every example x coalition is one row of one batched forward and
KernelSHAP's regression is one factorization solved for all examples. Efficiency
(``sum(values) == v(full) - v(empty)``) holds exactly for all three.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from pellucid._evaluate import resolve_batch_size
from pellucid._registry import register
from pellucid._shell import Run, explaining
from pellucid._targets import Target
from pellucid._validation import check_generator, check_int
from pellucid.attribution._background import build_game, summarize_background
from pellucid.attribution._coalitions import CoalitionValues, FeatureMask, all_coalitions
from pellucid.attribution._kernel_design import kernel_design
from pellucid.attribution._linear_fit import (
    LinearFit,
    StreamingFit,
    add_constrained,
    constrained_result,
    efficient_wls,
)
from pellucid.attribution._tokens import check_token_call, token_run
from pellucid.explanation import Explanation

__all__ = ["exact_shapley", "kernel_shap", "sampling_shapley", "summarize_background"]

#: The most players ``exact_shapley`` enumerates (2**20 coalitions per example).
MAX_EXACT_PLAYERS = 20


def _with_ends(
    game: CoalitionValues, z: torch.Tensor, full: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(v(z), v(empty), v(full))`` in float64 from one batched evaluation.

    ``full``, the scores of the unperturbed inputs when already known (every player keeps
    its input value, so the model sees exactly the inputs), spares those rows.
    """
    ends = torch.zeros(1 if full is not None else 2, z.shape[1], dtype=z.dtype, device=z.device)
    if full is None:
        ends[1] = 1
    v = game(torch.cat([z, ends])).to(torch.float64)
    if full is None:
        return v[:, :-2], v[:, -2], v[:, -1]
    return v[:, :-1], v[:, -1], full.to(torch.float64)


def _game(run: Run, call: dict[str, Any]) -> tuple[Any, FeatureMask, Any]:
    """The coalition game of the call's players and references (see ``build_game``)."""
    keys = ("feature_mask", "n_segments", "baseline", "background", "background_weights")
    return build_game(run.prep, batch_size=run.batch_size, **{k: call[k] for k in keys})


def _result(
    run: Run,
    fmask: FeatureMask,
    values: torch.Tensor,
    base: Any,
    params: dict[str, Any],
    extras: dict[str, Any],
) -> None:
    x = run.inputs
    values = values.to(x.dtype)
    run.result(
        fmask.spread(values).view_as(x),
        baseline=base,
        params=params,
        extras={"values": values, "n_players": fmask.n_players, **extras},
    )


_SHARED_DOC = """
        target: which output to explain.
        feature_mask: integer group ids ``0..P-1`` (shape of one example, shared, or of
            ``inputs``), ``"grid"``/``"slic"`` superpixels, or None (every feature a player).
            Every feature of a group gets the group's value; ``extras["values"]`` is (N, P).
        n_segments: number of superpixels for ``"grid"``/``"slic"``.
        baseline: the fixed reference absent players take (scalar or tensor; default 0).
        background: reference rows (B, ...) instead of a baseline: the value of a coalition
            is the mean score over the background (weighted by ``background_weights``).
        batch_size: rows per forward pass (memory bound).
        max_memory: a budget for the call's peak memory, in bytes or as a size such as
            ``"2GB"`` or ``"512MiB"``: picks ``batch_size`` from the method's per-row cost
            and the model's activations measured on one row (``params["batch_size"]``).
            Pass it or ``batch_size``, not both."""


@register(kind="shapley", input_kinds=("tabular",))
def exact_shapley(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    feature_mask: torch.Tensor | str | None = None,
    n_segments: int = 16,
    baseline: float | torch.Tensor | None = None,
    background: torch.Tensor | None = None,
    background_weights: torch.Tensor | None = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Exact Shapley values by enumerating all ``2**P`` coalitions (up to 20 players).

    Args:
        model: a callable ``Tensor -> Tensor``.
        inputs: a batch-first float tensor.{shared}

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            `feature_mask` does not match `inputs`, or there are too many players to enumerate;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1, bias=False)
        >>> e = exact_shapley(net, torch.ones(1, 3))
        >>> torch.allclose(e.attributions, net.weight.detach())
        True
    """
    with explaining("exact_shapley", locals()) as run:
        prep = run.prep
        game, fmask, base = _game(run, locals())
        p, device = fmask.n_players, prep.inputs.device
        if p > MAX_EXACT_PLAYERS:
            raise ValueError(
                f"exact_shapley enumerates 2**P coalitions and is limited to "
                f"{MAX_EXACT_PLAYERS} players; got {p} (2**{p} = {2.0**p:.2g} model "
                "evaluations per example). Use kernel_shap or sampling_shapley, or group the "
                "features into at most 20 players with `feature_mask` (e.g. 'grid')."
            )
        # phi = V @ C with C[S, i] = w(|S|-1) if i in S else -w(|S|), w(s) = s!(P-s-1)!/P!
        s = torch.arange(p, dtype=torch.float64)
        w = torch.exp(torch.lgamma(s + 1) + torch.lgamma(p - s) - math.lgamma(p + 1)).to(device)
        w_in = torch.cat([w.new_zeros(1), w])  # indexed by |S|: w(|S|-1)
        w_out = torch.cat([w, w.new_zeros(1)])  # indexed by |S|: w(|S|)
        z_all = all_coalitions(p, device)
        values = torch.zeros(prep.inputs.shape[0], p, dtype=torch.float64, device=device)
        block = 1 << min(p, 16)
        for lo in range(0, z_all.shape[0], block):
            z = z_all[lo : lo + block]
            size = z.sum(1)
            coef = torch.where(z, w_in[size].unsqueeze(1), -w_out[size].unsqueeze(1))
            values += game(z).to(torch.float64) @ coef
        _, empty, full = _with_ends(game, z_all[:0])
        _result(
            run,
            fmask,
            values,
            base,
            {
                "feature_mask": feature_mask,
                "n_segments": n_segments,
                "batch_size": batch_size,
                "background": background is not None,
            },
            {
                "expected_value": empty,
                "efficiency_gap": values.sum(1) - (full - empty),
                "n_evaluations": game.rows_per_eval(1 << p),
            },
        )
    return run.explanation


@register(
    kind="shapley",
    stochastic=True,
    input_kinds=("tabular", "image"),
    contract_kwargs={"n_samples": 4},
)
def sampling_shapley(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    n_samples: int = 32,
    antithetic: bool = True,
    feature_mask: torch.Tensor | str | None = None,
    n_segments: int = 16,
    baseline: float | torch.Tensor | None = None,
    background: torch.Tensor | None = None,
    background_weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Shapley value sampling (Castro et al. 2009) over random permutations of the players.

    Each permutation adds the players one at a time; a player's value is its mean marginal
    contribution. With ``antithetic`` every permutation is paired with its reverse (an odd
    ``n_samples`` is rounded up), which cancels much of the variance; ``extras["stderr"]``
    is the standard error per player over the (pairs of) permutations. Efficiency is exact.
    The same permutations serve every example. Cost: ``n_samples * (P - 1) + 2`` rows per
    example.

    Memory does not grow with ``n_samples``: the permutations are drawn and evaluated in
    blocks whose prefix coalitions fill about ``batch_size`` model rows (at least one
    permutation, with its reverse), and each block is folded into running sums; the result
    is the same (up to float rounding) whatever the block size.

    Args:
        model: a callable ``Tensor -> Tensor``.
        inputs: a batch-first float tensor.
        n_samples: number of permutations (>= 2).
        antithetic: pair every permutation with its reverse.
        generator: the random source (same state, same result).{shared}

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            `feature_mask` does not match `inputs`, or `n_samples` < 2;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1, bias=False)
        >>> e = sampling_shapley(net, torch.ones(2, 3), n_samples=2)
        >>> torch.allclose(e.attributions, net.weight.detach().expand(2, 3))
        True
    """
    n_samples = check_int(
        "n_samples", n_samples, min_value=2, hint=" Standard errors need at least two permutations."
    )
    if not isinstance(antithetic, bool):
        raise TypeError(f"`antithetic` must be True or False; got {antithetic!r}.")
    check_generator("generator", generator)
    with explaining("sampling_shapley", locals()) as run:
        prep = run.prep
        game, fmask, base = _game(run, locals())
        p, n, device = fmask.n_players, prep.inputs.shape[0], prep.inputs.device
        values, stderr, empty, full, n_perm = _permutation_values(
            run, game, p, n_samples, antithetic, generator
        )
        _result(
            run,
            fmask,
            values,
            base,
            {
                "n_samples": n_perm,
                "antithetic": antithetic,
                "feature_mask": feature_mask,
                "n_segments": n_segments,
                "batch_size": batch_size,
                "background": background is not None,
            },
            {
                "stderr": stderr.to(prep.inputs.dtype),
                "expected_value": empty,
                "efficiency_gap": values.sum(1) - (full - empty),
                "n_evaluations": game.rows_per_eval(n_perm * (p - 1) + 1),
            },
        )
    return run.explanation


def _permutation_values(
    run: Run, game: Any, p: int, n_samples: int, antithetic: bool, generator: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Mean marginal contributions over random player orders (with their reverses when
    ``antithetic``), their standard error, v(empty), v(full) and the number of orders.

    The orders stream in blocks of *units* (an order, or an order and its reverse) whose
    prefix coalitions fill about ``batch_size`` model rows (:func:`_units_per_block`): each
    block is drawn, evaluated and folded into running sums (the contributions' sum, and the
    units' mean and squared deviations, combined by Chan's pairwise update), so memory does
    not grow with ``n_samples``. The draws are those of one ``(units, P)`` uniform draw
    (a CPU generator draws serially), so the result does not depend on the block size."""
    n, device = run.inputs.shape[0], run.inputs.device
    half = (n_samples + 1) // 2 if antithetic else n_samples
    n_perm = 2 * half if antithetic else n_samples
    per_block = _units_per_block(run, game, p, n * (2 if antithetic else 1), half)
    steps = torch.arange(1, p, device=device).view(1, p - 1, 1)
    total = torch.zeros(n, p, dtype=torch.float64, device=device)
    mean, sq_dev = torch.zeros_like(total), torch.zeros_like(total)
    ends: tuple[torch.Tensor, torch.Tensor] | None = None
    done = 0
    while done < half:
        k = min(per_block, half - done)
        ranks = torch.rand(k, p, generator=generator).argsort(1).argsort(1).to(device)
        if antithetic:
            ranks = torch.cat([ranks, p - 1 - ranks])
        z = (ranks.unsqueeze(1) < steps).reshape(-1, p)  # prefixes of size 1..P-1
        if ends is None:  # v(empty) comes with the first block
            inner, empty, full = _with_ends(game, z, run.scores())
            ends = (empty, full)
        else:
            inner = game(z).to(torch.float64)
        contrib = _contributions(inner, ranks, *ends)  # (N, orders of the block, P)
        total += contrib.sum(1)
        units = (contrib[:, :k] + contrib[:, k:]) / 2 if antithetic else contrib
        unit_mean = units.mean(1)
        delta = unit_mean - mean
        mean += delta * (k / (done + k))
        sq_dev += (units - unit_mean.unsqueeze(1)).square().sum(1) + delta.square() * (
            done * k / (done + k)
        )
        done += k
    if ends is None:
        raise RuntimeError(f"sampling_shapley drew no permutations for n_samples={n_samples}.")
    values = total / n_perm
    stderr = (
        (sq_dev / (half - 1)).sqrt() / math.sqrt(half) if half > 1 else torch.zeros_like(values)
    )
    return values, stderr, ends[0], ends[1], n_perm


def _units_per_block(run: Run, game: Any, p: int, rows_per_unit: int, units: int) -> int:
    """Units (orders, or order-and-reverse pairs) per block: their ``P - 1`` prefix rows
    per example fill ``batch_size`` model rows (at least one unit), or, without
    ``batch_size``, about 64 MB of input rows (:func:`~pellucid._evaluate.resolve_batch_size`)."""
    row_rows = rows_per_unit * (p - 1) * game.n_ref
    rows = resolve_batch_size(run.batch_size, max(1, run.inputs[0].numel()), total=units * row_rows)
    return max(1, min(units, rows // max(1, row_rows)))


def _contributions(
    inner: torch.Tensor, ranks: torch.Tensor, empty: torch.Tensor, full: torch.Tensor
) -> torch.Tensor:
    """(N, orders, P): each player's marginal contribution in each order, from the scores
    ``inner`` (N, orders * (P - 1)) of the orders' prefixes of size 1..P-1."""
    n, orders, p = inner.shape[0], ranks.shape[0], ranks.shape[1]
    chain = torch.cat(
        [
            empty.view(n, 1, 1).expand(n, orders, 1),
            inner.view(n, orders, p - 1),
            full.view(n, 1, 1).expand(n, orders, 1),
        ],
        dim=2,
    )
    marginal = chain.diff(dim=2)  # contribution of the player at rank k
    return marginal.gather(2, ranks.unsqueeze(0).expand(n, -1, -1))


@register(
    kind="shapley",
    stochastic=True,
    input_kinds=("tabular", "image", "text"),
    contract_kwargs={"n_samples": 128},
)
def kernel_shap(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    n_samples: int | None = None,
    feature_mask: torch.Tensor | str | None = None,
    n_segments: int = 16,
    baseline: float | torch.Tensor | None = None,
    background: torch.Tensor | None = None,
    background_weights: torch.Tensor | None = None,
    mask_token: int | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """KernelSHAP (Lundberg & Lee 2017): Shapley values as a weighted linear regression.

    Coalition sizes the budget covers completely are enumerated (from size 1 and P-1
    inward); the rest is sampled from the Shapley kernel as (coalition, complement) pairs,
    stratified by size, from a design whose weighted pairwise co-occurrences are balanced
    (so the regression's Gram matrix is nearly exact) under a random relabelling of players.
    When ``n_samples >= 2**P - 2`` every coalition is enumerated and the result is exact
    Shapley. Efficiency is enforced exactly by the constrained fit. ``extras`` holds the
    local fit's weighted ``r2``, the coefficients' ``stderr`` and ``exact``.

    Memory does not grow with ``n_samples``: the coalitions are drawn, evaluated and added
    to the regression's sufficient statistics in blocks of about ``2**18 / P`` (the rows of
    one forward pass are bounded by ``batch_size``), so a call holds one block, the (P, P)
    statistics and, for budgets of at most 16,384 sampled coalitions, their balanced design.

    Args:
        model: a callable ``Tensor -> Tensor``.
        inputs: a batch-first float tensor.
        n_samples: coalitions to evaluate per example (default ``2P + 2048``, capped at
            ``2**P - 2``); at least P, the number of players.
        mask_token: for token-id inputs (an integer tensor): the id an absent token takes
            (one id or a tensor of ids per position), or pass a ``background`` of ids.
        generator: the random source (same state, same result).{shared}

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            `feature_mask` does not match `inputs`, or `n_samples` is below the number of players;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1, bias=False)
        >>> e = kernel_shap(net, torch.ones(2, 3))
        >>> torch.allclose(e.attributions, net.weight.detach().expand(2, 3))
        True
    """
    check_generator("generator", generator)
    tokens = check_token_call(
        "kernel_shap", model, inputs, mask_token, baseline=baseline, background=background
    )
    with explaining("kernel_shap", locals(), floating=not tokens) as outer:
        run, baseline = token_run(outer, mask_token) if tokens else (outer, baseline)
        prep = run.prep
        game, fmask, base = _game(run, locals())
        p, device = fmask.n_players, prep.inputs.device
        budget = min((1 << min(p, 62)) - 2, 2 * p + 2048) if n_samples is None else n_samples
        if n_samples is not None:
            check_int(
                "n_samples",
                n_samples,
                min_value=min(p, max(1, (1 << min(p, 62)) - 2)),
                hint=f" The regression over {p} players needs at least {p} coalitions "
                f"(use {2 * p + 2048} or more for a reliable estimate).",
            )
        fit, n_coalitions, empty, full, exact = _kernel_fit(run, game, p, budget, generator)
        _result(
            run,
            fmask,
            fit.coef,
            base,
            {
                "n_samples": budget,
                "feature_mask": feature_mask,
                "n_segments": n_segments,
                "batch_size": batch_size,
                "background": background is not None,
            },
            {
                "stderr": fit.stderr.to(prep.inputs.dtype),
                "r2": fit.r2,
                "exact": exact,
                "expected_value": empty,
                "efficiency_gap": fit.coef.sum(1) - (full - empty),
                "n_evaluations": game.rows_per_eval(n_coalitions + 1),
            },
        )
    return run.explanation


def _kernel_fit(
    run: Run, game: Any, p: int, budget: int, generator: Any
) -> tuple[LinearFit, int, torch.Tensor, torch.Tensor, bool]:
    """The constrained weighted regression of KernelSHAP on ``budget`` coalitions: the fit,
    the number of coalitions, v(empty), v(full) and whether the design enumerated them all.

    The coalitions come block by block (:func:`kernel_design`): each block is evaluated
    (v(empty) with the first) and added to the fit's sufficient statistics, so memory does
    not grow with ``budget``."""
    device = run.inputs.device
    if p == 1:
        z = torch.zeros(0, 1, dtype=torch.bool, device=device)
        weights = torch.zeros(0, dtype=torch.float64, device=device)
        values, empty, full = _with_ends(game, z, run.scores())
        fit = efficient_wls(z, values - empty.unsqueeze(1), weights, full - empty)
        return fit, 0, empty, full, True
    design, perm = kernel_design(
        p, budget, generator=generator, device=device, dtype=run.inputs.dtype
    )
    game.forward.expect(game.rows_per_eval(design.n_coalitions))
    acc = StreamingFit(intercept=False)
    known, ends = run.scores(), None
    for block in design.blocks():
        z = block.z if perm is None else block.z.index_select(1, perm)
        if ends is None:  # v(empty) comes with the first block: one forward for small designs
            values, empty, full = _with_ends(game, z, known)
            ends = (empty, full, full - empty)
        else:
            values = game(z).to(torch.float64)
        y = values - ends[0].unsqueeze(1)
        f = block.factored
        inverse, xw, var = (f.inv, f.xw, f.var) if f is not None else (None, None, None)
        add_constrained(acc, block.xr, block.last, block.w, y, ends[2], inverse=inverse, xw=xw)
    if ends is None:
        raise RuntimeError(f"KernelSHAP's design of {budget} coalitions has no blocks.")
    empty, full, total = ends
    fit = constrained_result(acc.solve(), total, exact=design.exact, var=var)
    if perm is not None:  # the design's players in the evaluated coalitions' order
        fit = LinearFit(
            fit.coef.index_select(1, perm), fit.intercept, fit.r2, fit.stderr.index_select(1, perm)
        )
    return fit, design.n_coalitions, empty, full, design.exact


for _fn in (exact_shapley, sampling_shapley, kernel_shap):
    if _fn.__doc__:
        _fn.__doc__ = _fn.__doc__.replace("{shared}", _SHARED_DOC)
