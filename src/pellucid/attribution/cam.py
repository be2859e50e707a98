"""Grad-CAM and guided Grad-CAM: class activation maps from a convolutional layer.

Grad-CAM (Selvaraju et al. 2017) weights each channel of a layer's output by the spatial
mean of the target's gradient, sums over channels and keeps the positive part; the map is
upsampled to the input (``upsample="linear"``: bilinear for images, or ``"nearest"``) and
broadcast over the input channels, so attributions have the inputs' shape. The map at the
layer's resolution is kept in ``extras["cam"]``. Guided Grad-CAM multiplies it with guided
backpropagation. Token models (ViT, Swin) are explained with ``reshape="tokens"``: a
(N, T, C) layer output is laid on its square patch grid (prefix tokens such as the class
token, the ones beyond the largest square, are dropped) and a channels-last (N, H, W, C)
one is moved to (N, C, H, W); a callable ``reshape`` maps the layer output (and, the same
way, its gradient) to (N, C, *spatial) itself.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from pellucid._evaluate import check_memory_options
from pellucid._registry import register
from pellucid._shell import Run, check_bool, explaining
from pellucid._state import _user_stacklevel
from pellucid._targets import Target
from pellucid._validation import check_choice
from pellucid._warnings import PellucidWarning
from pellucid.attribution.rules import GUIDED_RULES, rule_gradients
from pellucid.explanation import Explanation

__all__ = ["EmptyMapWarning", "grad_cam", "guided_grad_cam"]


class EmptyMapWarning(PellucidWarning):
    """Grad-CAM's map says nothing: zero everywhere (the target's gradient does not reach
    the layer's positions, or every position counts against it) or a single position."""


_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _require_layer(layer: Any) -> None:
    if layer is None:
        raise ValueError(
            "`layer` is required: the convolutional layer (or its name) whose output map is "
            "weighted, usually the last conv block, e.g. layer='features.3'."
        )


def _to_maps(reshape: Any, tensor: torch.Tensor) -> torch.Tensor:
    """A layer output (or its gradient) as feature maps (N, C, *spatial)."""
    if reshape is None:
        return tensor
    if callable(reshape):
        return reshape(tensor)
    if tensor.ndim == 4:  # channels-last (N, H, W, C), e.g. Swin
        return tensor.permute(0, 3, 1, 2)
    if tensor.ndim != 3:
        raise ValueError(
            f"`reshape='tokens'` needs a layer output of shape (N, T, C) or (N, H, W, C); got "
            f"{tuple(tensor.shape)}. Pass a callable `reshape` for other layouts."
        )
    n, t, c = tensor.shape
    side = math.isqrt(t)
    grid = tensor[:, t - side * side :]  # drop the prefix (class/register) tokens
    return grid.transpose(1, 2).reshape(n, c, side, side)


def _check_reshape(reshape: Any) -> Any:
    if reshape is None or reshape == "tokens" or callable(reshape):
        return reshape
    raise ValueError(
        f"`reshape` must be None (conv feature maps), 'tokens' (ViT/Swin token outputs) or a "
        f"callable mapping the layer output to (N, C, *spatial); got {reshape!r}."
    )


def _first_norm(module: nn.Module) -> str | None:
    return next((c for c, m in module.named_children() if isinstance(m, nn.LayerNorm)), None)


def _suggest(model: Any, layer: str, tokens: bool) -> str:
    """A layer whose positions reach the target: a block's first norm (its attention mixes
    what the head reads into every position; the layer's own, else the last one before it)
    for token outputs, else the last convolution before the layer."""
    conv = norm = None
    if isinstance(model, nn.Module):
        for name, module in model.named_modules():
            first = _first_norm(module)
            if first is not None:
                norm = f"{name}.{first}" if name else first
            if name == layer:
                break
            if isinstance(module, nn.modules.conv._ConvNd):
                conv = name
    if norm is not None and (tokens or conv is None):
        return f"the block's norm {norm!r}, whose positions the head reads through attention"
    if conv is not None:
        return f"an earlier convolution such as {conv!r}"
    return "an earlier layer that still has spatial positions"


def _check_map(run: Run, cam: torch.Tensor, grads: torch.Tensor, relu: bool, tokens: bool) -> None:
    """Warn (:class:`EmptyMapWarning`) when the map is zero for every example, or has one
    position only: such a map explains nothing, and it must not pass for one that does."""
    name = run.prep.layer_name or ""
    if cam.shape[2:].numel() == 1:
        reason = "has a single position (the layer comes after the last spatial operation)"
    elif not bool(cam.ne(0).any()):
        if not bool(grads.ne(0).any()):
            reason = (
                "is zero everywhere: the target's gradient does not reach the layer's "
                "positions (e.g. only the class token reaches the head from a transformer "
                "block's output, or the layer comes after the last spatial operation)"
            )
        elif relu:
            reason = (
                "is zero everywhere: every position counts against the target and `relu` "
                "removes it (pass relu=False to see the negative map)"
            )
        else:
            reason = "is zero everywhere: the layer's activations are zero"
    else:
        return
    model = run.prep.model_forward.model
    warnings.warn(
        f"Grad-CAM's map at layer {name!r} {reason}. Choose {_suggest(model, name, tokens)}.",
        EmptyMapWarning,
        stacklevel=_user_stacklevel(),
    )


def _cam(run: Run, relu: bool, reshape: Any = None) -> torch.Tensor:
    """The channel-weighted map at the layer's resolution, (N, 1, *spatial)."""
    prep = run.prep
    if not prep.inputs.is_floating_point() or prep.raw_inputs is None:
        raise TypeError("Grad-CAM needs a layer with a floating-point output.")
    acts = prep.inputs
    if acts.ndim < 3:
        raise ValueError(
            f"`layer` must output feature maps (N, C, *spatial) for Grad-CAM; "
            f"{prep.layer_name!r} outputs shape {tuple(acts.shape)}. Choose a conv layer, "
            "or pass `reshape='tokens'` for a transformer block."
        )
    grads = _to_maps(reshape, run.gradients())
    acts = _to_maps(reshape, acts.detach())
    weights = grads.mean(dim=tuple(range(2, acts.ndim)), keepdim=True)
    cam = (weights * acts).sum(dim=1, keepdim=True)
    cam = cam.clamp(min=0) if relu else cam
    _check_map(run, cam, grads, relu, reshape is not None)
    return cam


def _upsample(cam: torch.Tensor, raw: torch.Tensor, mode: str) -> torch.Tensor:
    spatial = raw.shape[2:]
    if raw.ndim != cam.ndim or not 1 <= len(spatial) <= 3:
        raise ValueError(
            f"Grad-CAM upsamples the map to image-like inputs (N, C, *spatial); the inputs have "
            f"shape {tuple(raw.shape)} and the map {tuple(cam.shape)}."
        )
    if cam.shape[2:] != spatial:
        if mode == "nearest":
            cam = F.interpolate(cam, size=spatial, mode="nearest")
        else:
            cam = F.interpolate(cam, size=spatial, mode=_MODES[len(spatial)], align_corners=False)
    return cam.expand(raw.shape[0], raw.shape[1], *spatial)


@register(kind="gradient", needs_layer=True, input_kinds=("image",))
def grad_cam(
    model: Any,
    inputs: torch.Tensor,
    *,
    layer: Any = None,
    target: Target = None,
    relu: bool = True,
    upsample: str = "linear",
    reshape: Any = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Grad-CAM: channel-weighted activations of ``layer``, upsampled to the input.

    Args:
        model: an ``nn.Module`` with a convolutional ``layer``.
        inputs: images (N, C, H, W) (or (N, C, L) / (N, C, D, H, W)).
        layer: the submodule (or its dotted name) whose output maps are weighted.
        target: which output to explain (int, per-example, ``"predicted"``, callable, None).
        relu: keep only the positive part of the map (the paper's choice).
        upsample: ``"linear"`` (bilinear for images) or ``"nearest"``.
        reshape: None for convolutional maps; ``"tokens"`` for a transformer block's
            (N, T, C) tokens (class token dropped, patches on their square grid) or a
            channels-last (N, H, W, C) output; or a callable to (N, C, *spatial).
        batch_size: rows per backward pass.
        max_memory: a budget for the backward passes' peak memory, in bytes or as a size
            such as ``"2GB"``: picks ``batch_size`` from the model's measured activations
            after ``layer`` (give one or the other).
        forward_args: extra positional model arguments; forward_kwargs: keyword ones.
        output: which part of a tuple/dict return value to explain.
        eval_mode: True explains in eval mode for this call; None warns in training mode.

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            `layer` is missing or not a submodule of `model`, its output is not feature maps (N, C,
            *spatial), or `upsample` is unknown;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(),
        ...                           torch.nn.Linear(72, 3))
        >>> grad_cam(net, torch.ones(2, 1, 8, 8), layer="0", target=1).attributions.shape
        torch.Size([2, 1, 8, 8])
    """
    check_bool("relu", relu)
    upsample = check_choice("upsample", upsample, ("linear", "nearest"))
    reshape = _check_reshape(reshape)
    check_memory_options(batch_size, max_memory)
    _require_layer(layer)
    with explaining("grad_cam", locals(), track_grad=True) as run:
        cam = _cam(run, relu, reshape)
        raw = cast(torch.Tensor, run.prep.raw_inputs)
        run.result(
            _upsample(cam, raw, upsample).to(raw.dtype),
            inputs=raw,
            params={
                "relu": relu,
                "upsample": upsample,
                "reshape": reshape if reshape is None or isinstance(reshape, str) else "callable",
            },
            extras={"cam": cam.detach()},
        )
    return run.explanation


@register(kind="decomposition", needs_layer=True, input_kinds=("image",))
def guided_grad_cam(
    model: Any,
    inputs: torch.Tensor,
    *,
    layer: Any = None,
    target: Target = None,
    upsample: str = "linear",
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map.

    Takes the arguments of :func:`grad_cam` (the map is always rectified). The guided
    backprop rules are attached to the executed ReLU calls (see :func:`guided_backprop`).

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            `layer` is missing or not a submodule of `model`, or its output is not feature maps (N,
            C, *spatial); `max_memory` is not a size, is given with `batch_size` or cannot hold
            one row.
        UnsupportedOperationError: the model runs an operation without a rule (a ValueError naming
            the operation).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(),
        ...                           torch.nn.Flatten(), torch.nn.Linear(72, 3))
        >>> guided_grad_cam(net, torch.ones(2, 1, 8, 8), layer="0", target=1).attributions.shape
        torch.Size([2, 1, 8, 8])
    """
    upsample = check_choice("upsample", upsample, ("linear", "nearest"))
    check_memory_options(batch_size, max_memory)
    _require_layer(layer)
    with explaining("guided_grad_cam", locals(), track_grad=True) as run:
        cam = _cam(run, True)
        raw = cast(torch.Tensor, run.prep.raw_inputs)
        if not raw.is_floating_point():
            raise TypeError(f"Guided Grad-CAM needs floating-point inputs; got dtype {raw.dtype}.")
        _, guided, engine = rule_gradients(
            "guided_grad_cam",
            GUIDED_RULES,
            model,
            raw,
            target=target,
            batch_size=batch_size,
            max_memory=max_memory,  # this pass runs the whole model: its own row cost
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
            output=output,
        )
        run.result(
            guided * _upsample(cam, raw, upsample).to(raw.dtype),
            inputs=raw,
            params={"upsample": upsample},
            extras={
                "cam": cam.detach(),
                "rules": dict(engine.records),
                "rule_calls": dict(engine.calls),
            },
        )
    return run.explanation
