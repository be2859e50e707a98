"""Baselines (reference inputs) for path and decomposition methods.

``resolve_baseline`` turns the user's ``baseline`` into a tensor of the explained inputs'
shape: None or ``"zeros"``, a number, a tensor (one example, shared, or one per example),
``"mean"`` (the mean of a ``background`` set), ``"blur"`` (a Gaussian blur of each image) or
``"uniform"`` (uniform noise within each example's value range, drawn with ``generator``).
With ``layer=``, baselines live in the layer's activation space; a tensor shaped like the
model's raw inputs (e.g. padding token ids) is mapped through the model to that layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from pellucid._evaluate import AtLayer, Prepared, broadcast_baseline
from pellucid._random import example_generators, per_example
from pellucid._validation import check_finite_tensor, check_tensor, describe_value, did_you_mean

__all__ = ["BASELINES", "gaussian_blur", "resolve_baseline"]

BASELINES = ("zeros", "mean", "blur", "uniform")


def gaussian_blur(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Blur the trailing spatial dimensions of ``x`` (N, C, *spatial) with a Gaussian.

    ``sigma`` defaults to an eighth of the smallest spatial side (at least 1 pixel).

    Example:
        >>> import torch
        >>> gaussian_blur(torch.ones(1, 1, 8, 8)).shape
        torch.Size([1, 1, 8, 8])
    """
    if x.ndim < 3:
        raise ValueError(
            "`baseline='blur'` needs image-like inputs (N, C, H[, W]); got shape "
            f"{tuple(x.shape)}. Use 'zeros', 'mean' or a tensor for tabular inputs."
        )
    spatial = x.shape[2:]
    if sigma is None:
        sigma = max(1.0, min(spatial) / 8.0)
    radius = max(1, int(math.ceil(3 * sigma)))
    grid = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (grid / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = x.reshape(-1, 1, *spatial)
    for dim in range(len(spatial)):
        shape = [1, 1] + [1] * len(spatial)
        shape[2 + dim] = kernel.numel()
        pad = [0, 0] * len(spatial)
        pad[2 * (len(spatial) - 1 - dim)] = radius
        pad[2 * (len(spatial) - 1 - dim) + 1] = radius
        padded = F.pad(out, pad, mode="replicate")
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(spatial) - 1]
        out = conv(padded, kernel.view(shape))
    return out.reshape(x.shape)


def resolve_baseline(
    baseline: Any,
    prep: Prepared,
    *,
    background: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The baseline as a tensor of ``prep.inputs``' shape (see the module docstring)."""
    inputs = prep.inputs
    if baseline is None:
        return torch.zeros_like(inputs)
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise ValueError(
                f"`baseline` must be a number, a tensor or one of {', '.join(map(repr, BASELINES))}"
                f"; got {baseline!r}." + did_you_mean(baseline, BASELINES)
            )
        if baseline == "zeros":
            return torch.zeros_like(inputs)
        if baseline == "mean":
            if background is None:
                raise ValueError(
                    "`baseline='mean'` needs `background=`: a tensor of reference examples."
                )
            return (
                to_explained_space(background, prep, name="background")
                .mean(dim=0, keepdim=True)
                .expand_as(inputs)
                .clone()
            )
        if baseline == "blur":
            return gaussian_blur(inputs)
        flat = inputs.reshape(inputs.shape[0], -1)
        low = flat.min(dim=1).values.view(-1, *[1] * (inputs.ndim - 1))
        high = flat.max(dim=1).values.view(-1, *[1] * (inputs.ndim - 1))
        # one stream per example: a row's baseline does not depend on its batch or rank
        noise = per_example(
            example_generators(generator, inputs.shape[0], device=inputs.device),
            lambda g: torch.rand(
                inputs.shape[1:], generator=g, dtype=inputs.dtype, device=inputs.device
            ),
            device=inputs.device,
        )
        return low + (high - low) * noise
    if isinstance(baseline, torch.Tensor) and prep.raw_inputs is not None:
        raw = prep.raw_inputs
        if baseline.shape in (raw.shape, raw.shape[1:]) and (
            not baseline.is_floating_point() or baseline.shape[-raw.ndim + 1 :] != inputs.shape[1:]
        ):
            return to_explained_space(baseline, prep, name="baseline", per_example=True)
    return broadcast_baseline(baseline, inputs)


def to_explained_space(
    value: Any, prep: Prepared, *, name: str, per_example: bool = False
) -> torch.Tensor:
    """Map reference rows to the explained space: themselves, or their ``layer`` activations.

    ``per_example``: ``value`` holds one row per example (or one shared example) and the
    result has the explained inputs' shape.
    """
    check_tensor(name, value, min_ndim=1)
    if value.is_floating_point():
        check_finite_tensor(name, value)
    value = value.detach()
    forward = prep.forward
    if not isinstance(forward, AtLayer):
        expected = prep.inputs.shape[1:]
        if value.shape[1:] != expected:
            raise ValueError(
                f"`{name}` must hold rows shaped like one input, {tuple(expected)}; got shape "
                f"{tuple(value.shape)}."
            )
        return value.to(device=prep.inputs.device, dtype=prep.inputs.dtype)
    from pellucid._evaluate import layer_activations

    raw = forward.raw_inputs
    value = value.to(device=raw.device)
    if value.shape == raw.shape[1:]:
        value = value.unsqueeze(0).expand(raw.shape[0] if per_example else 1, *raw.shape[1:])
    if value.shape[1:] != raw.shape[1:]:
        raise ValueError(
            f"`{name}` must hold rows shaped like the model's inputs, {tuple(raw.shape[1:])}; "
            f"got {describe_value(value)}."
        )
    n = value.shape[0]
    index = torch.zeros(n, dtype=torch.long, device=raw.device)
    if per_example and n == raw.shape[0]:
        index = torch.arange(n, device=raw.device)
    _, acts = layer_activations(forward.base, forward.layer, value.to(raw.dtype), index)
    return acts
