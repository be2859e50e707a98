"""Attention maps and attention rollout (Abnar & Zuidema 2020) for transformer models.

Two kinds of attention layer are read (``nn.MultiheadAttention`` and fused-QKV blocks such
as timm's ``Attention``, see :mod:`pellucid.attribution._attention_capture`); the hooks are
removed on exit, also on errors, inside the method shell's model-state guard, so the model
comes back untouched. On image models the per-token scores are laid back on the patch
grid (prefix tokens such as the class token dropped) and spread over the patch's pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pellucid._evaluate import check_memory_options
from pellucid._registry import register
from pellucid._shell import Run, check_bool, explaining
from pellucid._targets import Target
from pellucid._validation import check_choice, check_int, check_tensor
from pellucid.attribution._attention_capture import Capture, attention_layers
from pellucid.explanation import Explanation

__all__ = ["AttentionMaps", "attention", "attention_maps", "attention_rollout"]


@dataclass(frozen=True)
class AttentionMaps:
    """Per-head attention weights of every ``nn.MultiheadAttention`` layer, in call order.

    Attributes:
        weights: (L, N, H, T, S) weights: layer, example, head, query, key.
        layers: the layers' module names (a layer called twice appears twice).
        outputs: the model's outputs for the inputs (N, ...).
    """

    weights: torch.Tensor
    layers: list[str]
    outputs: torch.Tensor | None = None


def attention_maps(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> AttentionMaps:
    """Per-head attention weights of every ``nn.MultiheadAttention`` call for ``inputs``.

    Args:
        model: an ``nn.Module`` containing ``nn.MultiheadAttention`` layers.
        inputs: batch-first inputs (token ids or feature sequences).
        batch_size: examples per forward pass.
        max_memory: a budget for the call's peak memory, in bytes or as a size such as
            ``"2GB"``: picks ``batch_size`` from the model's peak on one example and the
            maps every example keeps (give one or the other).
        forward_args: extra positional model arguments; forward_kwargs: keyword ones.
        output: which part of a tuple/dict return value is the model's output (recorded in
            ``outputs``).
        eval_mode: True runs in eval mode for this call (no attention dropout); None (the
            default) warns in training mode; False keeps the mode silently.

    Raises:
        TypeError: `model` is not an nn.Module, `inputs` is not a tensor, or an option has the wrong
            type.
        ValueError: the model has no nn.MultiheadAttention layer, or its layers' maps differ in
            shape.

    Example:
        >>> import torch
        >>> from pellucid.models import TinyTransformer
        >>> net = TinyTransformer(3, 2, d_model=8, n_heads=2, n_layers=2)
        >>> attention_maps(net, torch.randn(4, 5, 3)).weights.shape
        torch.Size([2, 4, 2, 5, 5])
    """
    with _explaining("attention_maps", locals()) as run:
        maps = _maps(run)
    return maps


#: Per method, what it makes from the maps besides them, in head-fused float32 maps of
#: one layer, for a model with several attention layers and with one (``attention``: the
#: fused layer; ``attention_rollout``: a layer in float64 and the rollout before and after
#: it, also float64, with room for the temporaries beside them; with one layer, no product).
_MADE = {"attention": (1, 1), "attention_rollout": (7, 3)}


def _explaining(name: str, call: Mapping[str, Any]) -> Any:
    """The method shell for an attention method: the model must hold attention layers and
    the inputs be batch-first sequences (token ids allowed); ``target`` is only validated and
    ``layer`` is the method's own (an attention call's index, not a submodule). The shell's
    first forward records the maps: one pass, with or without a target."""
    batch_size, max_memory = call.get("batch_size"), call.get("max_memory")
    check_memory_options(batch_size, max_memory)
    attention_layers(call["model"])
    check_tensor("inputs", call["inputs"], min_ndim=2, finite=True)
    # the budget sizes the capture's chunks before the first forward (which records the
    # maps), not the shell after it
    return explaining(
        name,
        {**call, "layer": None, "max_memory": None},
        engine=Capture(batch_size, max_memory, name, _MADE.get(name, (0, 0))),
        floating=False,
        target_optional=True,
    )


def _maps(run: Run) -> AttentionMaps:
    """The weights of every attention call, (L, N, H, T, S), as the shell's first forward
    recorded them (see :class:`Capture`)."""
    capture = run.engine
    if capture.max_memory is not None:  # the size the budget picked, and the budget
        run.batch_size, run.max_memory = capture.batch_size, capture.max_memory
    if capture.weights is None:
        raise RuntimeError(f"{run.name}: the first forward recorded no attention maps.")
    return AttentionMaps(weights=capture.weights, layers=capture.layers, outputs=run.prep.output)


def _token_result(run: Run, scores: torch.Tensor, params: dict, extras: dict) -> None:
    """Per-token scores (N, T) -> attributions of the inputs' shape (repeated over features);
    on images (N, C, H, W) with a token per patch, the patch grid spread over its pixels."""
    inputs = run.inputs
    dtype = inputs.dtype if inputs.is_floating_point() else torch.float32
    if inputs.ndim == 4 and scores.shape[1] != inputs.shape[1]:
        extras = {**extras, "token_scores": scores.detach()}
        scores = _on_grid(scores, inputs.shape[2:])
        attr = scores.expand(inputs.shape).to(dtype).clone()
    else:
        view = scores.reshape(*scores.shape, *([1] * (inputs.ndim - 2)))
        attr = view.expand(inputs.shape).to(dtype).clone()
    run.result(attr, params=params, extras=extras)


def _on_grid(scores: torch.Tensor, spatial: torch.Size) -> torch.Tensor:
    """(N, T) token scores of a ViT -> (N, 1, H, W): prefix tokens (class, register) are
    the ones beyond the largest square grid; each patch's score covers its pixels."""
    n, t = scores.shape
    side = math.isqrt(t)
    h, w = spatial
    if side == 0 or h % side or w % side:
        raise ValueError(
            f"Cannot lay {t} tokens on the {h}x{w} image: the attention maps need a square "
            "grid of patches that tiles the image (plus prefix tokens such as a class token)."
        )
    grid = scores[:, t - side * side :].reshape(n, 1, side, side)
    return F.interpolate(grid, size=(h, w), mode="nearest")


def _fuse(weights: torch.Tensor, head_fusion: str) -> torch.Tensor:
    """The maps fused over heads, the third dimension from the end: (..., H, T, S)."""
    if head_fusion == "mean":
        return weights.mean(-3)
    if head_fusion == "max":
        return weights.amax(-3)
    return weights.amin(-3)


@register(kind="attention", input_kinds=("sequence",))
def attention(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    layer: int = -1,
    head_fusion: str = "mean",
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Raw attention: how much attention each input token receives in one layer.

    The score of token ``j`` is the attention weight on key ``j``, fused over heads
    (``mean``, ``max`` or ``min``) and averaged over queries; every feature of a token gets
    its token's score. ``extras["weights"]`` holds every layer's per-head maps (L, N, H, T, S)
    and ``extras["layers"]`` their names.

    Args:
        model: an ``nn.Module`` containing ``nn.MultiheadAttention`` layers.
        inputs: batch-first token ids (N, T) or feature sequences (N, T, F).
        target: validated and recorded only: attention does not depend on the output.
        layer: which attention call (index in call order; -1 is the last).
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads.
        Other arguments as in :func:`attention_maps` (``output`` selects the output that
        ``target`` is validated against).

    Raises:
        TypeError: `model` is not an nn.Module, `inputs` is not a tensor, or an option has the wrong
            type.
        ValueError: the model has no nn.MultiheadAttention layer, `layer` is out of range, or
            `head_fusion` is unknown.

    Example:
        >>> import torch
        >>> from pellucid.models import TinyTransformer
        >>> net = TinyTransformer(3, 2, d_model=8, n_heads=2)
        >>> e = attention(net, torch.randn(4, 5, 3))
        >>> e.attributions.shape, bool(torch.allclose(e.attributions[:, :, 0].sum(1), torch.ones(4)))
        (torch.Size([4, 5, 3]), True)
    """
    check_choice("head_fusion", head_fusion, ("mean", "max", "min"))
    with _explaining("attention", locals()) as run:
        maps = _maps(run)
        n_layers = maps.weights.shape[0]
        layer = check_int("layer", layer, min_value=-n_layers, max_value=n_layers - 1)
        scores = _fuse(maps.weights[layer], head_fusion).mean(1)  # (N, S)
        _token_result(
            run,
            scores,
            {"layer": layer, "head_fusion": head_fusion},
            {"weights": maps.weights, "layers": maps.layers},
        )
    return run.explanation


@register(kind="attention", input_kinds=("sequence",))
def attention_rollout(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    head_fusion: str = "mean",
    residual: bool = True,
    query: int | None = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Attention rollout (Abnar & Zuidema 2020): attention propagated down to the input tokens.

    Each layer's head-fused map ``A`` becomes ``0.5 A + 0.5 I`` (the residual connection,
    when ``residual``), rows renormalized; the rollout is their product from the first
    layer up. A token's score is its rollout weight for the ``query`` position (e.g. a
    CLS token), or averaged over all positions when ``query`` is None (mean-pooled models
    such as ``TinyTransformer``). ``extras["rollout"]`` is the full (N, T, T) matrix.

    Args:
        model: an ``nn.Module`` containing ``nn.MultiheadAttention`` layers.
        inputs: batch-first token ids (N, T) or feature sequences (N, T, F).
        target: validated and recorded only: attention does not depend on the output.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads.
        residual: add the identity for the skip connection.
        query: the output position to explain, or None for the mean over positions.
        Other arguments as in :func:`attention_maps`.

    Raises:
        TypeError: `model` is not an nn.Module, `inputs` is not a tensor, or an option has the wrong
            type.
        ValueError: the model has no nn.MultiheadAttention layer, the maps are not square (cross-
            attention), `query` is out of range, or `head_fusion` is unknown.

    Example:
        >>> import torch
        >>> from pellucid.models import TinyTransformer
        >>> net = TinyTransformer(3, 2, d_model=8, n_heads=2)
        >>> e = attention_rollout(net, torch.randn(4, 5, 3))
        >>> bool(torch.allclose(e.extras["rollout"].sum(-1), torch.ones(4, 5)))
        True
    """
    check_choice("head_fusion", head_fusion, ("mean", "max", "min"))
    check_bool("residual", residual)
    with _explaining("attention_rollout", locals()) as run:
        maps = _maps(run)
        t, s = maps.weights.shape[-2:]
        if t != s:
            raise ValueError(
                f"attention_rollout needs self-attention (square maps); got maps of {t} "
                f"queries x {s} keys. Use `attention` for cross-attention."
            )
        if query is not None:
            query = check_int("query", query, min_value=-t, max_value=t - 1)
        rollout = _rollout(maps.weights, head_fusion, residual)
        scores = rollout.mean(1) if query is None else rollout[:, query]
        dtype = run.inputs.dtype if run.inputs.is_floating_point() else torch.float32
        _token_result(
            run,
            scores,
            {"head_fusion": head_fusion, "residual": residual, "query": query},
            {"rollout": rollout.to(dtype), "layers": maps.layers},
        )
    return run.explanation


def _rollout(weights: torch.Tensor, head_fusion: str, residual: bool) -> torch.Tensor:
    """The product of the layers' (head-fused, residual-mixed, renormalized) maps, first
    layer first, in float64; one layer fused at a time."""
    eye = torch.eye(weights.shape[-1], dtype=torch.float64, device=weights.device)
    rollout: torch.Tensor | None = None
    for layer in weights:
        a = _fuse(layer, head_fusion).to(torch.float64)
        if residual:
            a.mul_(0.5).add_(eye, alpha=0.5)
        a.div_(a.sum(-1, keepdim=True).clamp_min_(1e-12))
        rollout = a if rollout is None else a @ rollout  # (the first layer: times I)
    if rollout is None:
        raise ValueError("attention_rollout needs at least one attention layer.")
    return rollout
