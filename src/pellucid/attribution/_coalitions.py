"""Players, coalitions and the value function shared by every perturbation method.

A *player* is a group of input features (``feature_mask``); a *coalition* is a boolean row
over the players (True = the player keeps its input value, False = it takes the reference
value). :class:`CoalitionValues` turns coalitions into model scores for every example, as
large batched forwards through :func:`pellucid._evaluate.map_chunks`: only one chunk of
perturbed rows exists at a time, so memory is bounded by ``batch_size`` however many
coalitions are asked for. Masks are built on the inputs' device.
:func:`kernel_coalitions` draws KernelSHAP's stratified, balanced coalitions.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch

from pellucid._evaluate import Evaluates, block_scores, chunk_rows, map_chunks
from pellucid._targets import ResolvedTarget
from pellucid._validation import describe_value
from pellucid.attribution._linear_fit import ConstrainedDesign, constrained_design
from pellucid.attribution.segmentation import grid_segments, slic_segments

__all__ = [
    "MASK_CACHE_ELEMENTS",
    "CoalitionValues",
    "FeatureMask",
    "all_coalitions",
    "chunk_rows",
    "kernel_coalitions",
    "kernel_design",
    "mix",
    "resolve_feature_mask",
    "shapley_kernel_weights",
]


@dataclass(frozen=True)
class FeatureMask:
    """Feature -> player ids, flattened: ``ids`` is (1, D) when shared or (N, D) per example."""

    ids: torch.Tensor
    n_players: int
    identity: bool = False  # known to be every feature its own player, in order

    @property
    def shared(self) -> bool:
        return self.ids.shape[0] == 1

    def spread(self, values: torch.Tensor) -> torch.Tensor:
        """Player values (N, P) -> feature values (N, D): each feature gets its group's value."""
        ids = self.ids.expand(values.shape[0], -1)
        return values.gather(1, ids)

    def expand(self, z: torch.Tensor, example_index: torch.Tensor) -> torch.Tensor:
        """Coalitions (k, P) of the examples ``example_index`` -> feature masks (k, D)."""
        if self.shared:
            return z.index_select(1, self.ids[0])
        return z.gather(1, self.ids.index_select(0, example_index))


def resolve_feature_mask(
    feature_mask: torch.Tensor | str | None, inputs: torch.Tensor, *, n_segments: int = 16
) -> FeatureMask:
    """Validate a ``feature_mask`` (or build one: None, ``"grid"``, ``"slic"``) for ``inputs``.

    A tensor must hold integer ids ``0..P-1`` without gaps, of shape ``inputs.shape[1:]``
    (shared by all examples) or ``inputs.shape`` (one mask per example).
    """
    shape = tuple(inputs.shape[1:])
    d = math.prod(shape)
    if feature_mask is None:
        return FeatureMask(torch.arange(d, device=inputs.device).unsqueeze(0), d, identity=True)
    if isinstance(feature_mask, str):
        if feature_mask == "grid":
            return _from_tensor(grid_segments(inputs, n_segments), inputs, "feature_mask")
        if feature_mask == "slic":
            return _from_tensor(slic_segments(inputs, n_segments), inputs, "feature_mask")
        raise ValueError(
            f"`feature_mask` must be a tensor of group ids, 'grid', 'slic' or None; "
            f"got {feature_mask!r}."
        )
    if not isinstance(feature_mask, torch.Tensor):
        raise TypeError(
            f"`feature_mask` must be a tensor of group ids, 'grid', 'slic' or None; "
            f"got {describe_value(feature_mask)}."
        )
    return _from_tensor(feature_mask, inputs, "feature_mask", check=True)


def _from_tensor(
    mask: torch.Tensor, inputs: torch.Tensor, name: str, check: bool = False
) -> FeatureMask:
    shape = tuple(inputs.shape[1:])
    if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
        raise TypeError(f"`{name}` must hold integer group ids; got dtype {mask.dtype}.")
    if tuple(mask.shape) == shape:
        ids = mask.reshape(1, -1)
    elif tuple(mask.shape) == tuple(inputs.shape):
        ids = mask.reshape(inputs.shape[0], -1)
    else:
        raise ValueError(
            f"`{name}` must have the shape of one example {shape} (shared) or of the inputs "
            f"{tuple(inputs.shape)} (one per example); got {tuple(mask.shape)}."
        )
    ids = ids.to(device=inputs.device, dtype=torch.long)
    low, high = int(ids.min()), int(ids.max())
    if low < 0:
        raise ValueError(f"`{name}` must hold group ids >= 0; got {low}.")
    n_players = high + 1
    if check:
        used = torch.zeros(n_players, dtype=torch.bool, device=ids.device)
        used[ids.reshape(-1)] = True
        if not bool(used.all()):
            missing = torch.nonzero(~used).reshape(-1)[:5].tolist()
            raise ValueError(
                f"`{name}` must use every group id 0..{high} (no gaps); ids {missing} are "
                "missing. Renumber the groups, e.g. with `torch.unique(mask, "
                "return_inverse=True)[1]`."
            )
    return FeatureMask(ids.contiguous(), n_players)


def all_coalitions(n_players: int, device: Any = None) -> torch.Tensor:
    """Every coalition of ``n_players`` as a (2**P, P) bool tensor, row ``i`` = bits of ``i``."""
    codes = torch.arange(1 << n_players, device=device)
    bits = torch.arange(n_players, device=device)
    return (codes.unsqueeze(1) >> bits).bitwise_and(1).bool()


def shapley_kernel_weights(n_players: int, sizes: torch.Tensor) -> torch.Tensor:
    """The Shapley kernel ``(P-1) / (C(P, s) s (P-s))`` for coalition sizes ``0 < s < P``."""
    s = sizes.to(torch.float64)
    log_binom = math.lgamma(n_players + 1) - torch.lgamma(s + 1) - torch.lgamma(n_players - s + 1)
    return (n_players - 1) / (torch.exp(log_binom) * s * (n_players - s))


def _subsets_of_size(n_players: int, size: int, device: Any) -> torch.Tensor:
    """All C(P, size) coalitions of exactly ``size`` players, (C, P) bool."""
    combos = torch.combinations(torch.arange(n_players, device=device), r=size)
    z = torch.zeros(combos.shape[0], n_players, dtype=torch.bool, device=device)
    return z.scatter_(1, combos, True)


def kernel_coalitions(
    n_players: int, n_samples: int, *, generator: torch.Generator | None, device: Any = None
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """KernelSHAP's coalitions: enumerate what the budget covers, sample the rest, balanced.

    When ``n_samples >= 2**P - 2`` every non-trivial coalition is enumerated with its exact
    kernel weight (the fit is then exact Shapley). Otherwise the budget is split over the
    coalition sizes ``s`` (paired with ``P - s``) in proportion to the square root of the
    kernel's mass on each size; a size whose share covers all its coalitions is enumerated.
    The sampled sizes come as (coalition, complement) pairs from a design whose weighted
    co-occurrence counts are balanced over all pairs of players (:func:`_balanced_design`),
    so the regression's weighted Gram matrix equals its population value almost exactly and
    only the residual's Monte-Carlo error remains; a uniform random relabelling of the players
    makes every coalition uniform within its size, so each size's average stays unbiased.
    On a 30-feature MLP at 200 samples: 0.042 relative L2 error against exact Shapley (mean
    over 40 seeds), 0.063 with independent draws within each size, ~0.08 for shap.

    Returns:
        ``(coalitions (S, P) bool, weights (S,) float64 summing to 1, exact)``.
    """
    z, design, _, exact = kernel_design(n_players, n_samples, generator=generator, device=device)
    return z, design.w, exact


def kernel_design(
    n_players: int,
    n_samples: int,
    *,
    generator: torch.Generator | None,
    device: Any = None,
    dtype: torch.dtype = torch.bool,
) -> tuple[torch.Tensor, ConstrainedDesign, torch.Tensor | None, bool]:
    """:func:`kernel_coalitions` with the regression design factored once per ``(P, budget)``.

    Returns ``(z, design, perm, exact)``: the coalitions to evaluate (S, P), as ``dtype``
    (bool, or the inputs' float dtype for masks ready to multiply), relabelled at random; their factored design in the coordinates before the relabelling, cached; the
    relabelling (the fit's coefficients ``c`` belong to the players as ``c[:, perm]``), None
    when there is none; and whether the coalitions are a full enumeration.
    """
    key = (n_players, n_samples, str(torch.device(device if device is not None else "cpu")), dtype)
    size = min(n_samples, (1 << min(n_players, 62)) - 2) * n_players
    build = _factored_design if size <= _CACHED_DESIGN_ELEMENTS else _factored_design.__wrapped__
    z, design, sampled, exact = build(*key)
    if not sampled:
        return z, design, None, exact
    perm = torch.randperm(n_players, generator=generator).to(z.device)
    return z.index_select(1, perm), design, perm, False


#: Designs of up to this many coalition entries are cached with their factorization.
_CACHED_DESIGN_ELEMENTS = 1 << 20


@functools.lru_cache(maxsize=16)
def _factored_design(
    p: int, n_samples: int, device: str, dtype: torch.dtype
) -> tuple[torch.Tensor, ConstrainedDesign, bool, bool]:
    if n_samples >= (1 << p) - 2:
        z = all_coalitions(p, device)[1:-1]
        w = shapley_kernel_weights(p, z.sum(1))
        return z.to(dtype), constrained_design(z, w), False, True
    z, w, sampled = _kernel_design(p, n_samples)
    z, w = z.to(device), w.to(device)
    return z.to(dtype), constrained_design(z, w), sampled, False


@functools.lru_cache(maxsize=16)
def _kernel_design(p: int, n_samples: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The enumerated coalitions, then the balanced design and its complements, with their
    normalized weights (cached per ``(P, budget)``; callers relabel, never modify)."""
    enum_z, enum_w, drawn = _kernel_layout(p, n_samples)
    parts, weights = [enum_z], [enum_w]
    if drawn:
        design, w = _balanced_design(p, drawn)
        parts += [design, ~design]
        weights += [w, w]
    z, w = torch.cat(parts), torch.cat(weights)
    return z, w / w.sum(), bool(drawn)


@functools.lru_cache(maxsize=16)
def _kernel_layout(
    p: int, n_samples: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[tuple[int, int, float], ...]]:
    """The budget's split over coalition sizes (cached: it depends on ``(P, budget)`` only):
    ``(enumerated coalitions, their weights, (size, pairs drawn, kernel mass) per sampled size)``.
    """
    sizes = list(range(1, p // 2 + 1))
    mass = [(p - 1) / (s * (p - s)) * (2 if 2 * s < p else 1) for s in sizes]
    mass = [m / sum(mass) for m in mass]  # kernel mass per size (both sides of a pair)
    n_pairs = [math.comb(p, s) if 2 * s < p else math.comb(p, s) // 2 for s in sizes]
    enumerated: set[int] = set()
    pairs_left = n_samples // 2
    while True:
        open_ = [i for i in range(len(sizes)) if i not in enumerated]
        share = sum(math.sqrt(mass[i]) for i in open_)
        alloc = {i: math.sqrt(mass[i]) / share * pairs_left for i in open_}
        full = [i for i in open_ if alloc[i] >= n_pairs[i]]
        if not full:
            break
        enumerated.update(full)
        pairs_left -= sum(n_pairs[i] for i in full)
    counts = {i: math.floor(a) for i, a in alloc.items()}
    extra = pairs_left - sum(counts.values())
    for i in sorted(open_, key=lambda i: counts[i] - alloc[i])[: max(extra, 0)]:
        counts[i] += 1  # largest remainders: one design per (P, budget)
    parts, weights = [], []
    for i in sorted(enumerated):
        z = _subsets_of_size(p, sizes[i], None)
        z = torch.cat([z, ~z]) if 2 * sizes[i] < p else z
        parts.append(z)
        weights.append(torch.full((z.shape[0],), mass[i] / z.shape[0], dtype=torch.float64))
    drawn = tuple((sizes[i], counts[i], mass[i]) for i in open_ if counts[i] > 0)
    if not parts:
        return torch.zeros(0, p, dtype=torch.bool), torch.zeros(0, dtype=torch.float64), drawn
    return torch.cat(parts), torch.cat(weights), drawn


#: Balancing a design: at most this many greedy sweeps over its coalitions, this many swap
#: steps in all (a one-off cost per design, which is cached), and only designs of
#: up to this many coalitions and players (larger budgets gain little over random draws).
BALANCE_SWEEPS, BALANCE_STEPS = 4, 2048
BALANCE_MAX_COALITIONS, BALANCE_MAX_PLAYERS = 8192, 256


@functools.lru_cache(maxsize=16)
def _balanced_design(
    p: int, drawn: tuple[tuple[int, int, float], ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One coalition per sampled pair, ``(z (M, P) bool, w (M,) float64)``, balanced.

    ``drawn`` holds ``(size, count, kernel mass)`` per sampled size. The start is cut from
    random permutations into disjoint blocks (every player equally often within a size);
    greedy swaps (one player out of a coalition, one in, sizes unchanged) then equalize the
    off-diagonal entries of ``F = 2 M - diag(M) - diag(M)^T``, ``M = Z^T diag(w) Z``: with
    complements, the weighted co-occurrence of every pair of players ``i != j`` is a
    constant plus ``F_ij / 2``, so equal entries make the sampled Gram matrix the exact one.
    Deterministic (a fixed seed) and cached: the caller relabels the players at random.
    """
    gen = torch.Generator().manual_seed(p)
    size = torch.tensor([d[0] for d in drawn])
    count = torch.tensor([d[1] for d in drawn])
    # pair t of size s is block t % (P // s) of permutation t // (P // s) of that size
    per = p // size
    n_perms = (count + per - 1) // per
    first_perm = torch.cumsum(n_perms, 0) - n_perms
    first_pair = torch.cumsum(count, 0) - count
    owner = torch.repeat_interleave(torch.arange(len(drawn)), count)
    t = torch.arange(int(count.sum())) - first_pair[owner]
    low = (t % per[owner]) * size[owner]
    ranks = torch.rand(int(n_perms.sum()), p, generator=gen).argsort(1).argsort(1)
    r = ranks.index_select(0, first_perm[owner] + t // per[owner])
    z = (r >= low.unsqueeze(1)) & (r < (low + size[owner]).unsqueeze(1))
    w = torch.tensor([d[2] / (2 * d[1]) for d in drawn], dtype=torch.float64)[owner]
    m = z.shape[0]
    if m > BALANCE_MAX_COALITIONS or p > BALANCE_MAX_PLAYERS or p < 4:
        return z, w
    zf = z.to(torch.float64)
    co = zf.T @ (zf * w.unsqueeze(1))
    diag = co.diagonal()
    f = 2 * co - diag.unsqueeze(0) - diag.unsqueeze(1)
    f.fill_diagonal_(0.0)
    order = torch.randperm(m, generator=gen).tolist()
    weight = w.tolist()
    members = list(z.nonzero()[:, 1].split(z.sum(1).tolist()))  # sizes 1..P-1: not empty
    steps = min(BALANCE_SWEEPS * m, BALANCE_STEPS)
    for sweep in range(0, steps, m):
        moved = False
        for k in order[: steps - sweep]:
            wk, zk = weight[k], zf[k]
            inside, outside = members[k], (zk == 0).nonzero().view(-1)
            d = wk * (1 - 2 * zk)
            g = f @ d
            # half the change of sum_{i<j} F_ij**2 when player a leaves coalition k, b joins
            delta = g[inside].unsqueeze(1) - g[outside] - 2 * wk * f[inside.unsqueeze(1), outside]
            value, best = delta.view(-1).min(0)
            if float(value) + wk * wk * (p - 2) >= -1e-12 * wk * wk:
                continue
            best = int(best)
            a, b = int(inside[best // outside.numel()]), int(outside[best % outside.numel()])
            members[k] = torch.where(inside == a, b, inside)
            d[a] = d[b] = 0.0
            f[a] += d
            f[:, a] += d
            f[b] -= d
            f[:, b] -= d
            zk[a], zk[b] = 0.0, 1.0
            moved = True
        if not moved:
            break
    return zf.bool(), w


#: Feature masks of up to this many elements (S x D) are built once per call and reused by
#: every block of examples (16 MB in float32); larger ones are built block by block.
MASK_CACHE_ELEMENTS = 1 << 22


def mix(keep: torch.Tensor, inputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``inputs`` where ``keep`` is 1, ``reference`` where it is 0 (float 0/1 masks, exact)."""
    # reference - reference * keep is exactly reference (keep 0) or 0 (keep 1)
    return torch.addcmul(torch.addcmul(reference, reference, keep, value=-1), inputs, keep)


class CoalitionValues:
    """``v(z)``: the model score when the players in ``z`` keep their input values.

    The others take the ``baseline`` value (one reference per example) or, with a
    ``background`` set, every background row in turn, the scores averaged with
    ``background_weights`` (the expectation shap's KernelExplainer uses).
    """

    def __init__(
        self,
        forward: Evaluates,
        target: ResolvedTarget,
        inputs: torch.Tensor,
        fmask: FeatureMask,
        *,
        baseline: torch.Tensor | None = None,
        background: torch.Tensor | None = None,
        background_weights: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> None:
        n = inputs.shape[0]
        self.shape = tuple(inputs.shape[1:])
        self.forward, self.target, self.fmask = forward, target, fmask
        # contiguous: transposed or strided inputs (a DataFrame's column-major values) would
        # otherwise give perturbed rows that cannot be viewed in the example's shape
        self.x = inputs.reshape(n, -1).contiguous()
        self.n_examples = n
        if background is not None:
            self.ref = background.reshape(background.shape[0], -1).to(inputs.dtype).contiguous()
            w = (
                background_weights
                if background_weights is not None
                else torch.ones(background.shape[0], device=inputs.device, dtype=inputs.dtype)
            )
            self.weights: torch.Tensor | None = (w / w.sum()).to(inputs.device, inputs.dtype)
        else:
            ref = baseline if baseline is not None else torch.zeros_like(inputs)
            self.ref = ref.reshape(n, -1).contiguous()
            self.weights = None
        # one baseline shared by every example (the usual case) broadcasts instead of a gather
        self.shared_ref = self.weights is None and torch.equal(
            self.ref, self.ref[:1].expand_as(self.ref)
        )
        self.n_ref = self.ref.shape[0] if self.weights is not None else 1
        self.batch_size = batch_size

    @property
    def identity(self) -> bool:
        return self.fmask.identity or (
            self.fmask.shared
            and self.fmask.n_players == self.x.shape[1]
            and bool(
                (self.fmask.ids[0] == torch.arange(self.x.shape[1], device=self.x.device)).all()
            )
        )

    def rows_per_eval(self, n_coalitions: int) -> int:
        """How many model rows evaluating ``n_coalitions`` coalitions costs."""
        return self.n_examples * n_coalitions * self.n_ref

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Scores (N, S) for coalitions ``z`` (S, P) bool, shared by all examples.

        Coalitions become feature masks (rows x D) one block at a time, so memory is bounded
        by ``batch_size`` (plus the (S, P) coalitions themselves), not by S x D.
        """
        s = z.shape[0]
        total = self.n_examples * s
        size = chunk_rows(
            self.batch_size, self.shape, total=total * self.n_ref, device=self.x.device
        )
        pairs = max(1, size // self.n_ref)
        if self.weights is None and self.fmask.shared and total > 0:
            return self._blocks(z, pairs)
        identity = self.identity
        device, dtype = self.x.device, self.x.dtype

        def evaluate(start: int, stop: int) -> torch.Tensor:
            idx = torch.arange(start, stop, device=device)
            ex = idx // s
            # float masks: a multiply-add is much cheaper than torch.where
            zc = z.index_select(0, idx % s).to(dtype)
            keep = zc if identity else self.fmask.expand(zc, ex)
            xs = self.x.index_select(0, ex)
            if self.weights is None:
                ref = self.ref.index_select(0, ex)
                rows = mix(keep, xs, ref)
                return self.target.scores(self.forward(rows.view(-1, *self.shape), ex), ex)
            rows = mix(keep.unsqueeze(1), xs.unsqueeze(1), self.ref.unsqueeze(0))
            exi = ex.repeat_interleave(self.n_ref)
            scores = self.target.scores(self.forward(rows.view(-1, *self.shape), exi), exi)
            return scores.view(-1, self.n_ref) @ self.weights

        self.forward.expect(total * (1 if self.weights is None else self.n_ref))
        return map_chunks(evaluate, total, pairs).view(self.n_examples, s)

    def _blocks(self, z: torch.Tensor, rows: int) -> torch.Tensor:
        """A fixed reference and shared players: each chunk is a block of examples x
        coalitions, built by one broadcast multiply-add. The (S, D) feature masks (and, for
        a shared reference, their "off" halves) are built once when small
        (:data:`MASK_CACHE_ELEMENTS`), else for each block of coalitions as it is evaluated."""
        s, d, dtype = z.shape[0], self.x.shape[1], self.x.dtype
        ids = None if self.identity else self.fmask.ids[0]
        shared = self.ref[:1] if self.shared_ref else None

        def masks(j0: int, j1: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            zc = z[j0:j1].to(dtype)
            keep = zc if ids is None else zc.index_select(1, ids)  # (j1 - j0, D)
            off = torch.addcmul(shared, shared, keep, value=-1) if shared is not None else None
            return keep, off

        cached = masks(0, s) if s <= rows or s * d <= MASK_CACHE_ELEMENTS else None

        def block(e0: int, e1: int, j0: int, j1: int) -> torch.Tensor:
            keep, off = masks(j0, j1) if cached is None else cached
            if cached is not None:
                keep, off = keep[j0:j1], None if off is None else off[j0:j1]
            k = keep.unsqueeze(0)
            if off is None:
                ref = self.ref[e0:e1].unsqueeze(1)
                off = torch.addcmul(ref, ref, k, value=-1)
            else:
                off = off.unsqueeze(0)
            return torch.addcmul(off, self.x[e0:e1].unsqueeze(1), k).view(-1, *self.shape)

        return block_scores(
            self.forward,
            self.target,
            block,
            self.n_examples,
            s,
            rows,
            device=z.device,
            balance=self.batch_size is None,
        ).view(self.n_examples, -1)
