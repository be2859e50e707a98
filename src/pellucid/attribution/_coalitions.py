"""Players, coalitions and the value function shared by every perturbation method.

A *player* is a group of input features (``feature_mask``); a *coalition* is a boolean row
over the players (True = the player keeps its input value, False = it takes the reference
value). :class:`CoalitionValues` turns coalitions into model scores for every example, as
large batched forwards through :func:`pellucid._evaluate.map_chunks`: only one chunk of
perturbed rows exists at a time, so memory is bounded by ``batch_size`` however many
coalitions are asked for. Masks are built on the inputs' device.
KernelSHAP's coalitions are drawn block by block in :mod:`._kernel_design`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from pellucid._evaluate import Evaluates, block_scores, chunk_rows, map_chunks
from pellucid._targets import ResolvedTarget
from pellucid._validation import describe_value
from pellucid.attribution.segmentation import grid_segments, slic_segments

__all__ = [
    "MASK_CACHE_ELEMENTS",
    "CoalitionValues",
    "FeatureMask",
    "all_coalitions",
    "chunk_rows",
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

    Raises:
        TypeError: `feature_mask` is neither a tensor, a segmentation name nor None, or it
            holds non-integer ids.
        ValueError: an unknown segmentation name, a mask of the wrong shape, negative ids or
            gaps in the ids.
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
