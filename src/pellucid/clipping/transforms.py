"""Composable gradient transformations (optax style) and the in-place applier.

A transform is a value with ``__call__(grads, params, norms=None) -> TransformResult``: it
reads a list of gradient tensors (and their parameters, for AGC) and returns *new*
gradient tensors plus :class:`~pellucid.clipping.stats.ClipStats`; it never changes its
inputs. :func:`chain` composes transforms; :func:`apply_` is the thin in-place step that
runs one on a model's gradients, with a non-finite policy decided first. A transform that
multiplies every gradient by one coefficient (global-norm clipping, AutoClip, ZClip)
subclasses :class:`Scaling`: :func:`apply_` then scales the gradients in place instead of
building new ones and copying them back.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(4, 2)
    >>> net(torch.ones(8, 4)).pow(2).sum().mul(100).backward()
    >>> clip = chain(adaptive_clip(0.1), clip_by_global_norm(1.0))
    >>> stats = apply_(clip, net)
    >>> bool(stats.clipped), float(stats.norm_after) <= 1.0
    (True, True)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from pellucid._validation import check_float
from pellucid.clipping.agc import _check_agc_args, agc_coefficients
from pellucid.clipping.functional import (
    GradNorms,
    Parameters,
    _check_max_norm,
    as_tensor_list,
    check_norm_type,
)
from pellucid.clipping.guard import check_policy, guard_
from pellucid.clipping.reduce import all_reduce_norm
from pellucid.clipping.stats import ClipStats

__all__ = [
    "AdaptiveClip",
    "Chain",
    "ClipByGlobalNorm",
    "ClipByNorm",
    "ClipByValue",
    "Scaling",
    "Transform",
    "TransformResult",
    "adaptive_clip",
    "apply_",
    "chain",
    "clip_by_global_norm",
    "clip_by_norm",
    "clip_by_value",
]


@dataclass(frozen=True)
class TransformResult:
    """New gradient tensors (same order and shapes) and what happened."""

    grads: list[torch.Tensor]
    stats: ClipStats


@runtime_checkable
class Transform(Protocol):
    """Anything that maps gradients to new gradients plus stats, without changing inputs."""

    def __call__(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], norms: GradNorms | None = None
    ) -> TransformResult: ...


def _norms(grads: list[torch.Tensor], norms: GradNorms | None) -> GradNorms:
    return norms if norms is not None and norms.matches(grads) else GradNorms(grads)


def _scaled(grads: list[torch.Tensor], coef: torch.Tensor) -> list[torch.Tensor]:
    if not grads:
        return []
    if all(g.device == grads[0].device for g in grads):
        return list(torch._foreach_mul(grads, coef.to(grads[0].device)))
    return [g * coef.to(g.device) for g in grads]


def _scale_(grads: list[torch.Tensor], coef: torch.Tensor) -> None:
    """``g *= coef`` for every gradient, in place (the same values as :func:`_scaled`)."""
    if grads and all(g.device == grads[0].device for g in grads):
        torch._foreach_mul_(grads, coef.to(grads[0].device))
        return
    for g in grads:
        g.mul_(coef.to(g.device))


class Scaling(ABC):
    """A transform whose new gradients are the old ones times one coefficient: ``scale``
    returns that coefficient and the stats, and :func:`apply_` multiplies the gradients in
    place with it (building new gradients and copying them back would take about five
    times as long on a CPU, twice on a GPU). ``__call__`` stays pure."""

    @abstractmethod
    def scale(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], norms: GradNorms | None = None
    ) -> tuple[torch.Tensor, ClipStats]:
        """The coefficient every gradient is multiplied by, and the stats."""

    def __call__(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], norms: GradNorms | None = None
    ) -> TransformResult:
        coef, stats = self.scale(grads, params, norms)
        return TransformResult(_scaled(grads, coef), stats)


def _stats(
    before: torch.Tensor,
    after: torch.Tensor,
    threshold: Any,
    clipped: torch.Tensor,
    nonfinite: torch.Tensor | None = None,
) -> ClipStats:
    coef = torch.where(before > 0, after / before, torch.ones_like(before))
    threshold = torch.as_tensor(threshold, dtype=before.dtype, device=before.device)
    return ClipStats(
        norm_before=before,
        norm_after=after,
        clip_coef=coef,
        threshold=threshold,
        clipped=clipped,
        nonfinite=~torch.isfinite(before) if nonfinite is None else nonfinite,
        skipped=torch.zeros((), dtype=torch.bool, device=before.device),
    )


@dataclass(frozen=True)
class ClipByGlobalNorm(Scaling):
    """Scale all gradients by ``min(1, max_norm / (total + 1e-6))`` (torch's rule)."""

    max_norm: float
    norm_type: float = 2.0
    process_group: Any = None

    def scale(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], norms: GradNorms | None = None
    ) -> tuple[torch.Tensor, ClipStats]:
        """The coefficient all gradients are multiplied by, and the stats."""
        total = _norms(grads, norms).total(self.norm_type)
        if self.process_group is not None:
            total = all_reduce_norm(
                total, norm_type=self.norm_type, process_group=self.process_group
            )
        coef = torch.clamp(self.max_norm / (total + 1e-6), max=1.0)
        stats = _stats(total, total * coef, self.max_norm, coef < 1.0)
        return coef, stats.replace(clip_coef=coef)


@dataclass(frozen=True)
class ClipByValue:
    """Clamp every entry to ``[-clip_value, clip_value]``."""

    clip_value: float

    def __call__(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], norms: GradNorms | None = None
    ) -> TransformResult:
        cache = _norms(grads, norms)
        before = cache.total(2.0)
        new = list(torch._foreach_clamp_min(grads, -self.clip_value)) if grads else []
        if new:
            torch._foreach_clamp_max_(new, self.clip_value)
        after = GradNorms(new).total(2.0)
        return TransformResult(
            new, _stats(before, after, self.clip_value, cache.total(math.inf) > self.clip_value)
        )


@dataclass(frozen=True)
class ClipByNorm:
    """Clip each tensor to its own norm bound (TensorFlow's ``clip_by_norm``)."""

    max_norm: float
    norm_type: float = 2.0

    def __call__(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], norms: GradNorms | None = None
    ) -> TransformResult:
        cache = _norms(grads, norms)
        before = cache.total(2.0)
        coefs = [
            self.max_norm / torch.clamp(n, min=self.max_norm) for n in cache.norms(self.norm_type)
        ]
        new = list(torch._foreach_mul(grads, coefs)) if grads else []
        after = GradNorms(new).total(2.0)
        clipped = torch.stack([c < 1.0 for c in coefs]).any() if coefs else before > math.inf
        return TransformResult(new, _stats(before, after, self.max_norm, clipped))


@dataclass(frozen=True)
class AdaptiveClip:
    """Unit-wise adaptive clipping (AGC); ``exclude`` holds parameters left unclipped."""

    clip_factor: float = 0.01
    eps: float = 1e-3
    norm_type: float = 2.0
    exclude: tuple[torch.Tensor, ...] = field(default=(), repr=False)

    def __call__(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], norms: GradNorms | None = None
    ) -> TransformResult:
        if len(params) != len(grads):
            raise ValueError(
                "`params` must match `grads` one to one for AGC; "
                f"got {len(params)} parameters and {len(grads)} gradients."
            )
        before = _norms(grads, norms).total(2.0)
        skip = {id(t) for t in self.exclude}
        keep = [i for i, p in enumerate(params) if id(p) not in skip]
        new = list(grads)
        if keep:
            mults, _, _ = agc_coefficients(
                [grads[i] for i in keep],
                [params[i] for i in keep],
                clip_factor=self.clip_factor,
                eps=self.eps,
                norm_type=self.norm_type,
            )
            scaled = torch._foreach_mul([grads[i] for i in keep], mults)
            for i, g in zip(keep, scaled, strict=True):
                new[i] = g
            clipped = torch.stack([(m < 1.0).any() for m in mults]).any()
        else:
            clipped = before > math.inf
        after = GradNorms(new).total(2.0)
        return TransformResult(new, _stats(before, after, math.nan, clipped))


@dataclass(frozen=True)
class Chain:
    """Run transforms one after the other; stats span the whole chain."""

    transforms: tuple[Transform, ...]

    def __call__(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], norms: GradNorms | None = None
    ) -> TransformResult:
        results = []
        current = grads
        for i, transform in enumerate(self.transforms):
            result = transform(current, params, norms if i == 0 else None)
            results.append(result)
            current = result.grads
        if not results:
            before = _norms(grads, norms).total(2.0)
            return TransformResult(list(grads), ClipStats.unclipped(before))
        first, last = results[0].stats, results[-1].stats
        clipped = torch.stack([r.stats.clipped for r in results]).any()
        stats = _stats(first.norm_before, last.norm_after, last.threshold, clipped, first.nonfinite)
        return TransformResult(current, stats)


def clip_by_global_norm(
    max_norm: float, *, norm_type: float = 2.0, process_group: Any = None
) -> ClipByGlobalNorm:
    """Transform: the global-norm bound of ``torch.nn.utils.clip_grad_norm_``.

    Raises:
        TypeError: `max_norm` or `norm_type` is not a real number.
        ValueError: `max_norm` or `norm_type` is not > 0.

    Example:
        >>> import torch
        >>> out = clip_by_global_norm(1.0)([torch.tensor([3.0, 4.0])], [])
        >>> out.grads[0]
        tensor([0.6000, 0.8000])
    """
    return ClipByGlobalNorm(_check_max_norm(max_norm), check_norm_type(norm_type), process_group)


def clip_by_value(clip_value: float) -> ClipByValue:
    """Transform: clamp entries to ``[-clip_value, clip_value]``.

    Raises:
        TypeError: `clip_value` is not a real number.
        ValueError: `clip_value` is negative or NaN.

    Example:
        >>> clip_by_value(1.0)([torch.tensor([-3.0, 0.5])], []).grads[0]
        tensor([-1.0000,  0.5000])
    """
    return ClipByValue(check_float("clip_value", clip_value, min_value=0.0, allow_inf=True))


def clip_by_norm(max_norm: float, *, norm_type: float = 2.0) -> ClipByNorm:
    """Transform: each tensor clipped to its own norm ``max_norm``.

    Raises:
        TypeError: `max_norm` or `norm_type` is not a real number.
        ValueError: `max_norm` or `norm_type` is not > 0.

    Example:
        >>> clip_by_norm(1.0)([torch.tensor([3.0, 4.0]), torch.tensor([0.5])], []).grads
        [tensor([0.6000, 0.8000]), tensor([0.5000])]
    """
    return ClipByNorm(_check_max_norm(max_norm), check_norm_type(norm_type))


def adaptive_clip(
    clip_factor: float = 0.01,
    *,
    eps: float = 1e-3,
    norm_type: float = 2.0,
    exclude: Iterable[torch.Tensor] = (),
) -> AdaptiveClip:
    """Transform: unit-wise adaptive gradient clipping (see :func:`adaptive_clip_grad_`).

    Raises:
        TypeError: a number argument is not a real number.
        ValueError: `clip_factor` is not > 0, `eps` is negative, or `norm_type` is not > 0.

    Example:
        >>> w = torch.ones(1, 4)
        >>> adaptive_clip(0.1)([torch.full((1, 4), 10.0)], [w]).grads[0]
        tensor([[0.1000, 0.1000, 0.1000, 0.1000]])
    """
    clip_factor, eps, norm_type = _check_agc_args(clip_factor, eps, norm_type)
    return AdaptiveClip(clip_factor, eps, norm_type, tuple(as_tensor_list(exclude, "exclude")))


def chain(*transforms: Transform) -> Chain:
    """Compose transforms left to right, e.g. ``chain(adaptive_clip(0.01), clip_by_global_norm(1))``.

    Raises:
        TypeError: an item of `transforms` is not a gradient transform.

    Example:
        >>> c = chain(clip_by_value(2.0), clip_by_global_norm(1.0))
        >>> c([torch.tensor([3.0, 0.0])], []).grads[0]
        tensor([1.0000, 0.0000])
    """
    for i, t in enumerate(transforms):
        if not callable(t):
            raise TypeError(
                f"`transforms` must be gradient transforms (callables); item {i} is a "
                f"{type(t).__name__}. Build them with clip_by_global_norm(...), AutoClip(), ..."
            )
    return Chain(tuple(transforms))


def _named(parameters: Parameters) -> tuple[list[torch.Tensor], list[str]]:
    if isinstance(parameters, nn.Module):
        named = list(parameters.named_parameters())
        return [p for _, p in named], [n for n, _ in named]
    params = as_tensor_list(parameters)
    return params, [f"parameter {i}" for i in range(len(params))]


@torch.no_grad()
def apply_(
    transform: Transform,
    parameters: Parameters,
    *,
    nonfinite: str = "propagate",
    norms: GradNorms | None = None,
) -> ClipStats:
    """Run ``transform`` on the parameters' gradients and write the result back in place.

    Args:
        transform: a transform (``clip_by_global_norm(1.0)``, ``AutoClip()``, a chain...).
        parameters: an ``nn.Module`` (its parameter names appear in errors), tensors with
            ``.grad``, or an iterable of them. Parameters without a gradient are ignored.
        nonfinite: ``"raise"``, ``"skip"``, ``"zero"`` or ``"propagate"`` (see
            :mod:`pellucid.clipping.guard`), decided before any gradient changes.
        norms: per-tensor norms already computed for these gradients (the monitor's).

    Returns:
        :class:`ClipStats`; under ``"skip"`` with a NaN/inf gradient, ``skipped`` is True
        and the gradients are untouched.

    Raises:
        TypeError: `transform` is not callable, or `parameters` is not a tensor, an iterable of
            tensors or an nn.Module.
        ValueError: `nonfinite` is not a known policy.
        NonFiniteGradientError: `nonfinite="raise"` and a gradient holds NaN/inf (it names the first
            such parameter).

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(2)); w.grad = torch.tensor([3.0, 4.0])
        >>> float(apply_(clip_by_global_norm(1.0), [w]).norm_before)
        5.0
    """
    return _apply(transform, parameters, nonfinite=nonfinite, norms=norms)[0]


def _apply(
    transform: Transform,
    parameters: Parameters,
    *,
    nonfinite: str,
    norms: GradNorms | None,
) -> tuple[ClipStats, bool]:
    """:func:`apply_`, also returning the host-side skip decision (no extra sync)."""
    if not callable(transform):
        raise TypeError(
            f"`transform` must be a gradient transform; got {type(transform).__name__}."
        )
    policy = check_policy(nonfinite)
    params, names = _named(parameters)
    pairs = [(p, n) for p, n in zip(params, names, strict=True) if p.grad is not None]
    params = [p for p, _ in pairs]
    grads: list[torch.Tensor] = [p.grad for p in params]  # type: ignore[misc]
    cache = _norms(grads, norms)
    found, skip, cache = guard_(grads, [n for _, n in pairs], policy, cache)
    if skip:
        stats = ClipStats.unclipped(cache.total(2.0), nonfinite=found)
        return stats.replace(skipped=torch.ones((), dtype=torch.bool, device=found.device)), True
    if isinstance(transform, Scaling):  # one coefficient: multiply in place, nothing to copy
        coef, stats = transform.scale(grads, params, cache)
        _scale_(grads, coef)
        return stats.replace(nonfinite=found.to(stats.nonfinite.device)), False
    result = transform(grads, params, cache)
    changed = [(g, n) for g, n in zip(grads, result.grads, strict=True) if n is not g]
    if changed:
        torch._foreach_copy_([g for g, _ in changed], [n for _, n in changed])
    return result.stats.replace(nonfinite=found.to(result.stats.nonfinite.device)), False
