"""Superpixels for images (and blocks for rows): a shared grid, or SLIC-style k-means; words
for token ids.

Perturbation methods use them as a ``feature_mask`` (``"grid"`` or ``"slic"``): the pixels of
a superpixel are switched on and off together, so an 8x8 or 224x224 image becomes a game of a
few dozen players. :func:`token_groups` groups word pieces into words the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from pellucid._validation import check_float, check_int, check_tensor, describe_value

__all__ = ["grid_segments", "slic_segments", "token_groups"]


def _word_runs(word_ids: Sequence[Any], row: int | None) -> list[int]:
    groups: list[int] = []
    previous: Any = object()
    for position, word in enumerate(word_ids):
        if word is not None and (isinstance(word, bool) or not isinstance(word, int)):
            where = f"[{row}][{position}]" if row is not None else f"[{position}]"
            raise TypeError(
                f"`word_ids` must hold integer word indices or None; got {word!r} at {where}."
            )
        if word is None or word != previous or not groups:
            groups.append(len(groups) and groups[-1] + 1)
        else:
            groups.append(groups[-1])
        previous = word
    return groups


def token_groups(word_ids: Sequence[Any], *, device: Any = None) -> torch.Tensor:
    """A ``feature_mask`` for token ids: the pieces of one word form one player.

    ``word_ids`` gives, per token, the index of the word it belongs to, or None for a
    special token (a Hugging Face fast tokenizer's ``encoding.word_ids()``). Consecutive
    tokens of the same word share a group; every other token (special tokens, a repeated
    word index after a break) starts a new one. A list of such lists (one per example, all
    of one length) gives one mask per example.

    Returns:
        A long tensor of group ids ``0..P-1`` without gaps: shape ``(L,)`` or ``(N, L)``.

    Raises:
        TypeError: `word_ids` is not a sequence of integers/None (or of such sequences).
        ValueError: `word_ids` is empty, or its rows differ in length.

    Example:
        >>> token_groups([None, 0, 0, 1, 2, 2, None]).tolist()
        [0, 1, 1, 2, 3, 3, 4]
    """
    if isinstance(word_ids, torch.Tensor):
        word_ids = word_ids.tolist()
    if isinstance(word_ids, str | bytes) or not isinstance(word_ids, Sequence) or not word_ids:
        raise (ValueError if isinstance(word_ids, Sequence) and not word_ids else TypeError)(
            "`word_ids` must be a non-empty list of word indices (None for special tokens), "
            f"or a list of such lists; got {describe_value(word_ids)}."
        )
    if all(isinstance(row, Sequence) and not isinstance(row, str) for row in word_ids):
        rows = [_word_runs(list(row), i) for i, row in enumerate(word_ids)]
        if len({len(r) for r in rows}) != 1:
            raise ValueError(
                f"`word_ids` rows must all have one length (padded); got lengths "
                f"{sorted({len(r) for r in rows})}."
            )
        return torch.tensor(rows, dtype=torch.long, device=device)
    return torch.tensor(_word_runs(list(word_ids), None), dtype=torch.long, device=device)


def grid_segments(inputs: torch.Tensor, n_segments: int = 16) -> torch.Tensor:
    """A shared grid of about ``n_segments`` rectangular superpixels (or blocks of features).

    Images ``(N, C, H, W)`` (or any ``(N, ..., H, W)``) are cut into cells over the last two
    dimensions, shared by all channels; ``(N, D)`` rows into contiguous blocks.

    Returns:
        A long tensor of ids ``0..P-1`` of shape ``inputs.shape[1:]``.

    Raises:
        TypeError: `inputs` is not a tensor, or `n_segments` is not an integer.
        ValueError: `inputs` has fewer than 2 dimensions or is empty, or `n_segments` < 1.

    Example:
        >>> import torch
        >>> grid_segments(torch.zeros(1, 1, 4, 4), n_segments=4)[0]
        tensor([[0, 0, 1, 1],
                [0, 0, 1, 1],
                [2, 2, 3, 3],
                [2, 2, 3, 3]])
    """
    inputs = check_tensor("inputs", inputs, min_ndim=2)
    n_segments = check_int("n_segments", n_segments, min_value=1)
    shape, device = inputs.shape[1:], inputs.device
    if len(shape) == 1:
        d = shape[0]
        n = min(n_segments, d)
        return torch.arange(d, device=device) * n // d
    h, w = shape[-2], shape[-1]
    gh = max(1, min(h, round(math.sqrt(n_segments * h / w))))
    gw = max(1, min(w, math.ceil(n_segments / gh)))
    rows = torch.arange(h, device=device) * gh // h
    cols = torch.arange(w, device=device) * gw // w
    cells = rows[:, None] * gw + cols[None, :]
    return cells.expand(shape).clone()


def slic_segments(
    inputs: torch.Tensor, n_segments: int = 16, *, compactness: float = 1.0, n_iter: int = 10
) -> torch.Tensor:
    """SLIC-style superpixels: k-means over intensity and position, all images at once.

    Pixels are clustered on their channel values (scaled by each image's spread) and their
    coordinates (in units of the initial grid step, times ``compactness``), starting from
    :func:`grid_segments`. Labels are compacted per image, so image ``n`` uses ids
    ``0..P_n-1``. Connectivity is not enforced.

    Returns:
        A long tensor of shape ``inputs.shape`` (ids repeated across channels).

    Raises:
        TypeError: `inputs` is not a floating-point tensor, or an option has the wrong type.
        ValueError: `inputs` is not batch-first images, holds NaN/inf, or an option is out of range.

    Example:
        >>> import torch
        >>> img = torch.zeros(1, 1, 6, 6); img[..., 3:] = 1.0
        >>> seg = slic_segments(img, n_segments=2)
        >>> bool((seg[0, 0, :, :3] == seg[0, 0, 0, 0]).all()), int(seg.max())
        (True, 1)
    """
    inputs = check_tensor("inputs", inputs, min_ndim=3, floating=True, finite=True)
    n_segments = check_int("n_segments", n_segments, min_value=1)
    compactness = check_float("compactness", compactness, min_value=0.0)
    n_iter = check_int("n_iter", n_iter, min_value=1)
    x = inputs.detach().to(torch.float64)
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    color = x.reshape(n, -1, h * w).transpose(1, 2)  # (N, HW, C)
    scale = color.std(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    grid = grid_segments(x.reshape(n, -1, h, w)[:, :1], n_segments)[0].reshape(-1)
    k = int(grid.max()) + 1
    step = math.sqrt(h * w / k)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=x.dtype),
        torch.arange(w, device=x.device, dtype=x.dtype),
        indexing="ij",
    )
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1) * (compactness / step)
    feats = torch.cat([color / scale, pos.expand(n, -1, -1)], dim=2)  # (N, HW, F)
    labels = grid.expand(n, -1)
    for _ in range(n_iter + 1):
        onehot = torch.nn.functional.one_hot(labels, k).to(x.dtype)  # (N, HW, K)
        counts = onehot.sum(1)  # (N, K)
        sums = onehot.transpose(1, 2) @ feats
        centers = sums / counts.clamp_min(1.0).unsqueeze(2)
        dist = torch.cdist(feats, centers).masked_fill(counts.unsqueeze(1) == 0, float("inf"))
        labels = dist.argmin(2)
    present = torch.nn.functional.one_hot(labels, k).amax(1)  # (N, K)
    compact = present.cumsum(1) - 1
    labels = compact.gather(1, labels).reshape(n, 1, h, w)
    return labels.expand(n, *inputs.shape[1:-2], h, w).reshape(inputs.shape).clone()
