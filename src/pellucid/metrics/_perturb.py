"""Fill values and user-given perturbations shared by the perturbation metrics."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from pellucid._evaluate import broadcast_baseline
from pellucid._validation import check_float, check_tensor, describe_value

__all__ = ["fill_values", "gaussian_blur", "per_example"]


def gaussian_blur(inputs: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur every channel of ``(N, C, L)`` or ``(N, C, H, W)`` inputs with a Gaussian.

    Example:
        >>> import torch
        >>> gaussian_blur(torch.ones(1, 1, 5, 5), 1.0).allclose(torch.ones(1, 1, 5, 5))
        True
    """
    if inputs.ndim not in (3, 4):
        raise ValueError(
            "`baseline='blur'` needs image-like inputs of shape (N, C, L) or (N, C, H, W); "
            f"got shape {tuple(inputs.shape)}. Use a number or a tensor as baseline for "
            "tabular data."
        )
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=inputs.dtype, device=inputs.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = inputs.shape[1]
    out = inputs
    spatial = inputs.ndim - 2
    for dim in range(spatial):
        shape = [channels, 1] + [1] * spatial
        shape[2 + dim] = kernel.numel()
        weight = kernel.reshape(shape)
        pad = [0, 0] * spatial
        pad[2 * (spatial - 1 - dim)] = radius
        pad[2 * (spatial - 1 - dim) + 1] = radius
        padded = F.pad(out, pad, mode="replicate")
        conv = F.conv1d if spatial == 1 else F.conv2d
        out = conv(padded, weight, groups=channels)
    return out


def fill_values(baseline: Any, inputs: torch.Tensor, *, blur_sigma: float) -> torch.Tensor:
    """What a removed feature is replaced with: zeros, a number, a tensor or a blurred copy."""
    if isinstance(baseline, str):
        if baseline != "blur":
            raise ValueError(
                f"`baseline` must be None, a number, a tensor or 'blur'; got {baseline!r}."
            )
        sigma = check_float("blur_sigma", blur_sigma, min_value=0.0, min_inclusive=False)
        return gaussian_blur(inputs, sigma)
    return broadcast_baseline(baseline, inputs)


def per_example(
    value: Any,
    inputs: torch.Tensor,
    *,
    name: str,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``(S, *features)`` (shared) or ``(N, S, *features)`` -> ``(N, S, *features)``."""
    value = check_tensor(name, value, min_ndim=1)
    features = tuple(inputs.shape[1:])
    n = inputs.shape[0]
    if tuple(value.shape[1:]) == features:
        value = value.unsqueeze(0).expand(n, *value.shape)
    elif not (
        value.ndim == len(features) + 2
        and value.shape[0] == n
        and tuple(value.shape[2:]) == features
    ):
        raise ValueError(
            f"`{name}` must have shape (n_samples, {', '.join(map(str, features))}) (shared by "
            f"all examples) or ({n}, n_samples, {', '.join(map(str, features))}); got "
            f"{describe_value(value)}."
        )
    return value.to(device=inputs.device, dtype=dtype if dtype is not None else value.dtype)
