"""Superpixels for images (and blocks for rows): a shared grid, or SLIC-style k-means.

Perturbation methods use them as a ``feature_mask`` (``"grid"`` or ``"slic"``): the pixels of
a superpixel are switched on and off together, so an 8x8 or 224x224 image becomes a game of a
few dozen players.
"""

from __future__ import annotations

import math

import torch

from pellucid._validation import check_float, check_int, check_tensor

__all__ = ["grid_segments", "slic_segments"]


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
