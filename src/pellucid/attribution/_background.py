"""The reference of a Shapley game: a fixed baseline, or the expectation over a background.

:func:`build_game` validates the players and the reference once for every Shapley method
and returns the value function; :func:`summarize_background` shrinks a large background set
with k-means (centers weighted by cluster share), as shap's ``kmeans`` does.
"""

from __future__ import annotations

import torch

from pellucid._evaluate import Prepared, broadcast_baseline
from pellucid._validation import check_finite_tensor, check_int, check_tensor
from pellucid.attribution._coalitions import CoalitionValues, FeatureMask, resolve_feature_mask

__all__ = ["build_game", "summarize_background"]


def summarize_background(
    data: torch.Tensor,
    n_clusters: int,
    *,
    generator: torch.Generator | None = None,
    n_iter: int = 25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summarize a background set by k-means: ``(centers, weights)``, weights = cluster shares.

    Pass the result as ``background=centers, background_weights=weights``; the expectation
    over the background then costs ``n_clusters`` rows instead of ``len(data)``.

    Raises:
        TypeError: `data` is not a floating-point tensor, or a count is not an integer.
        ValueError: `data` is empty or holds NaN/inf, or a count is < 1.

    Example:
        >>> import torch
        >>> data = torch.cat([torch.zeros(30, 2), torch.ones(10, 2)])
        >>> centers, weights = summarize_background(data, 2, generator=torch.Generator().manual_seed(0))
        >>> sorted(weights.tolist())
        [0.25, 0.75]
    """
    data = check_tensor("data", data, min_ndim=1, floating=True, finite=True)
    n_clusters = check_int("n_clusters", n_clusters, min_value=1)
    n_iter = check_int("n_iter", n_iter, min_value=1)
    flat = data.detach().reshape(data.shape[0], -1).to(torch.float64)
    if n_clusters >= flat.shape[0]:
        weights = torch.full((flat.shape[0],), 1.0 / flat.shape[0], device=data.device)
        return data.detach().clone(), weights.to(data.dtype)
    # k-means++ seeding, then Lloyd iterations, all in torch
    first = torch.randint(flat.shape[0], (1,), generator=generator).item()
    centers = flat[first : first + 1]
    for _ in range(1, n_clusters):
        d2 = torch.cdist(flat, centers).min(1).values.pow(2)
        probs = (d2 / d2.sum()).cpu() if float(d2.sum()) > 0 else None
        pick = (
            torch.multinomial(probs, 1, generator=generator)
            if probs is not None
            else torch.randint(flat.shape[0], (1,), generator=generator)
        )
        centers = torch.cat([centers, flat[pick.to(flat.device)]])
    for _ in range(n_iter):
        labels = torch.cdist(flat, centers).argmin(1)
        onehot = torch.nn.functional.one_hot(labels, n_clusters).to(flat.dtype)
        counts = onehot.sum(0)
        moved = (onehot.T @ flat) / counts.clamp_min(1).unsqueeze(1)
        centers = torch.where(counts.unsqueeze(1) > 0, moved, centers)
    labels = torch.cdist(flat, centers).argmin(1)
    counts = torch.bincount(labels, minlength=n_clusters).to(torch.float64)
    keep = counts > 0
    centers, counts = centers[keep], counts[keep]
    shape = (centers.shape[0], *data.shape[1:])
    return centers.to(data.dtype).reshape(shape), (counts / counts.sum()).to(data.dtype)


def build_game(
    prep: Prepared,
    *,
    feature_mask: torch.Tensor | str | None,
    n_segments: int,
    baseline: float | torch.Tensor | None,
    background: torch.Tensor | None,
    background_weights: torch.Tensor | None,
    batch_size: int | None,
) -> tuple[CoalitionValues, FeatureMask, torch.Tensor | None]:
    """Validate the players and the reference once: ``(value function, players, baseline)``.

    The baseline is None when a ``background`` set is used instead.
    """
    x = prep.inputs
    check_int("n_segments", n_segments, min_value=1)
    fmask = resolve_feature_mask(feature_mask, x, n_segments=n_segments)
    if background is None:
        if background_weights is not None:
            raise ValueError("`background_weights` needs a `background` set; got no background.")
        base = broadcast_baseline(baseline, x)
        game = CoalitionValues(
            prep.forward, prep.target, x, fmask, baseline=base, batch_size=batch_size
        )
        return game, fmask, base
    if baseline is not None:
        raise ValueError(
            "Pass either `baseline` (a fixed reference) or `background` (an expectation over "
            "reference rows), not both."
        )
    bg = check_tensor("background", background, min_ndim=1, nonempty=False)
    if bg.shape[0] == 0 or bg.numel() == 0:
        raise ValueError(
            "`background` must hold at least one row; got an empty set. Pass training rows, "
            "or `summarize_background(train, k)`."
        )
    if tuple(bg.shape[1:]) != tuple(x.shape[1:]):
        raise ValueError(
            f"`background` rows must have the shape of one example {tuple(x.shape[1:])}; got "
            f"{tuple(bg.shape[1:])}."
        )
    check_finite_tensor("background", bg)
    bg = bg.detach().to(device=x.device, dtype=x.dtype)
    weights = None
    if background_weights is not None:
        weights = check_tensor(
            "background_weights", background_weights, ndim=1, floating=True, finite=True
        ).to(device=x.device, dtype=x.dtype)
        if (
            weights.shape[0] != bg.shape[0]
            or bool((weights < 0).any())
            or float(weights.sum()) <= 0
        ):
            raise ValueError(
                f"`background_weights` must be {bg.shape[0]} non-negative weights with a "
                f"positive sum; got shape {tuple(weights.shape)}."
            )
    game = CoalitionValues(
        prep.forward,
        prep.target,
        x,
        fmask,
        background=bg,
        background_weights=weights,
        batch_size=batch_size,
    )
    return game, fmask, None
