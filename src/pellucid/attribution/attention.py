"""Attention maps and attention rollout (Abnar & Zuidema 2020) for transformer models.

Two kinds of attention layer are read. For ``nn.MultiheadAttention`` (torchvision's ViT), a
pre-hook asks the layer for per-head weights (``need_weights=True,
average_attn_weights=False``) and a forward hook records them and hands the caller exactly
what it asked for (no weights, or head-averaged ones). Fused-QKV blocks that call
``scaled_dot_product_attention`` and never form the weights (timm's ``Attention``: ``qkv``,
``num_heads``, ``head_dim``, ``scale``) get a forward hook that recomputes
``softmax(q k^T * scale)`` from the block's input with its own projection and q/k norms.
The hooks are removed on exit, also on errors, inside the model-state guard, so the model
comes back untouched. On image models the per-token scores are laid back on the patch
grid (prefix tokens such as the class token dropped) and spread over the patch's pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pellucid._evaluate import Forward, map_chunks, model_failure, resolve_batch_size
from pellucid._registry import register
from pellucid._state import model_guard
from pellucid._targets import Target, resolve_target
from pellucid._validation import check_choice, check_int, check_tensor, describe_value
from pellucid.explanation import Explanation

__all__ = ["AttentionMaps", "attention", "attention_maps", "attention_rollout"]

_NEED_WEIGHTS, _AVERAGE = 4, 6  # positions in MultiheadAttention.forward(q, k, v, ...)


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


def _fused(module: nn.Module) -> bool:
    """A fused-QKV attention block (timm ``Attention``) whose weights can be recomputed."""
    return (
        isinstance(getattr(module, "qkv", None), nn.Linear)
        and all(isinstance(getattr(module, a, None), int) for a in ("num_heads", "head_dim"))
        and isinstance(getattr(module, "scale", None), float)
    )


def _attention_layers(model: Any) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"`model` must be an nn.Module with attention layers; got {describe_value(model)}."
        )
    found = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention) or _fused(m)
    ]
    if not found:
        raise ValueError(
            f"`model` ({type(model).__name__}) has no nn.MultiheadAttention layer and no "
            "fused attention block (with `qkv`, `num_heads`, `head_dim`, `scale`), so it has "
            "no attention maps. Explain it with a model-agnostic method "
            "instead (occlusion, kernel_shap, integrated_gradients)."
        )
    return found


def _recomputed(module: Any, x: torch.Tensor, mask: Any) -> torch.Tensor:
    """``softmax(q k^T * scale + mask)`` of a fused-QKV block for its input ``x`` (N, T, C)."""
    n, t = x.shape[0], x.shape[1]
    qkv = module.qkv(x).reshape(n, t, 3, module.num_heads, module.head_dim)
    q, k = qkv.permute(2, 0, 3, 1, 4)[:2]
    q = module.q_norm(q) if hasattr(module, "q_norm") else q
    k = module.k_norm(k) if hasattr(module, "k_norm") else k
    scores = (q * module.scale) @ k.transpose(-2, -1)
    if isinstance(mask, torch.Tensor):
        scores = (
            scores.masked_fill(~mask, float("-inf"))
            if mask.dtype == torch.bool
            else (scores + mask)
        )
    return scores.softmax(-1)


@contextmanager
def _capture(model: nn.Module) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Record ``(name, weights (N, H, T, S))`` of every attention call inside the block."""
    records: list[tuple[str, torch.Tensor]] = []
    asked: list[tuple[bool, bool]] = []
    handles = []

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        args, kwargs = tuple(args), dict(kwargs)
        need = (
            args[_NEED_WEIGHTS] if len(args) > _NEED_WEIGHTS else kwargs.get("need_weights", True)
        )
        average = (
            args[_AVERAGE] if len(args) > _AVERAGE else kwargs.get("average_attn_weights", True)
        )
        asked.append((bool(need), bool(average)))
        positional = list(args)
        if len(positional) > _NEED_WEIGHTS:
            positional[_NEED_WEIGHTS] = True
        else:
            kwargs["need_weights"] = True
        if len(positional) > _AVERAGE:
            positional[_AVERAGE] = False
        else:
            kwargs["average_attn_weights"] = False
        return tuple(positional), kwargs

    def make_hook(name: str) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            need, average = asked.pop()
            weights = out[1]
            if weights.ndim == 3:  # unbatched call: (H, T, S)
                weights = weights.unsqueeze(0)
            records.append((name, weights.detach()))
            if not need:
                return out[0], None
            return out[0], weights.mean(1) if average else weights

        return hook

    def make_fused_hook(name: str) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            x = args[0] if args else kwargs["x"]
            mask = args[1] if len(args) > 1 else kwargs.get("attn_mask")
            with torch.no_grad():
                records.append((name, _recomputed(module, x.detach(), mask)))

        return hook

    try:
        for name, module in _attention_layers(model):
            if not isinstance(module, nn.MultiheadAttention):
                handles.append(
                    module.register_forward_hook(make_fused_hook(name), with_kwargs=True)
                )
                continue
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(make_hook(name), with_kwargs=True))
        yield records
    finally:
        for handle in handles:
            handle.remove()


def attention_maps(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    batch_size: int | None = None,
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
    _attention_layers(model)
    inputs = check_tensor("inputs", inputs, min_ndim=2, finite=True).detach()
    n = inputs.shape[0]
    forward = Forward(
        model,
        n_examples=n,
        forward_args=forward_args,
        forward_kwargs=forward_kwargs,
        output=output,
    )
    size = resolve_batch_size(batch_size, inputs[0].numel(), total=n)
    names: list[str] = []
    outputs: list[torch.Tensor] = []

    def run(start: int, stop: int) -> torch.Tensor:
        index = torch.arange(start, stop, device=inputs.device)
        with _capture(model) as records:
            outputs.append(_run(forward, model, inputs, start, stop, index))
        names[:] = [name for name, _ in records]
        shapes = {tuple(w.shape[2:]) for _, w in records}
        if len(shapes) != 1:
            raise ValueError(f"The attention layers have different map shapes {sorted(shapes)}.")
        return torch.stack([w for _, w in records], dim=1)  # (chunk, L, H, T, S)

    with model_guard(model, eval_mode=eval_mode, method="attention_maps"):
        weights = map_chunks(run, n, size)
    return AttentionMaps(
        weights=weights.transpose(0, 1).contiguous(), layers=names, outputs=torch.cat(outputs)
    )


def _target(
    target: Target,
    model: nn.Module,
    inputs: Any,
    forward_args: Any,
    forward_kwargs: Mapping[str, Any] | None,
    output: Any,
    eval_mode: bool | None,
) -> Any:
    """Validate a given ``target`` on the model's output first (attention does not use it)."""
    if target is None:
        return None
    _attention_layers(model)
    inputs = check_tensor("inputs", inputs, min_ndim=2, finite=True).detach()
    forward = Forward(
        model,
        n_examples=inputs.shape[0],
        forward_args=forward_args,
        forward_kwargs=forward_kwargs,
        output=output,
    )
    with model_guard(model, eval_mode=eval_mode, method="attention"), torch.inference_mode():
        out = _run(forward, model, inputs, 0, inputs.shape[0], None)
        return resolve_target(target, out).describe()


def _run(
    forward: Forward, model: Any, inputs: torch.Tensor, start: int, stop: int, index: Any
) -> torch.Tensor:
    """``forward`` on ``inputs[start:stop]``; a model that cannot run on them (wrong shape,
    dtype or extra arguments) raises a ValueError that names the inputs and the likely fix."""
    try:
        return forward(inputs[start:stop], index).detach()
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        args, kwargs = forward.args or None, forward.kwargs or None
        raise ValueError(model_failure(model, inputs, exc, args, kwargs)) from exc


def _token_explanation(
    name: str,
    inputs: torch.Tensor,
    scores: torch.Tensor,
    params: dict,
    extras: dict,
    target: Any = None,
) -> Explanation:
    """Per-token scores (N, T) -> attributions of the inputs' shape (repeated over features);
    on images (N, C, H, W) with a token per patch, the patch grid spread over its pixels."""
    dtype = inputs.dtype if inputs.is_floating_point() else torch.float32
    if inputs.ndim == 4 and scores.shape[1] != inputs.shape[1]:
        extras = {**extras, "token_scores": scores.detach()}
        scores = _on_grid(scores, inputs.shape[2:])
        attr = scores.expand(inputs.shape).to(dtype).clone()
    else:
        view = scores.reshape(*scores.shape, *([1] * (inputs.ndim - 2)))
        attr = view.expand(inputs.shape).to(dtype).clone()
    return Explanation(
        attributions=attr, inputs=inputs, method=name, target=target, params=params, extras=extras
    )


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
    if head_fusion == "mean":
        return weights.mean(2)
    if head_fusion == "max":
        return weights.amax(2)
    return weights.amin(2)


@register(kind="attention", input_kinds=("sequence",))
def attention(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    layer: int = -1,
    head_fusion: str = "mean",
    batch_size: int | None = None,
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
    described = _target(target, model, inputs, forward_args, forward_kwargs, output, eval_mode)
    maps = attention_maps(
        model,
        inputs,
        batch_size=batch_size,
        forward_args=forward_args,
        forward_kwargs=forward_kwargs,
        output=output,
        eval_mode=eval_mode,
    )
    n_layers = maps.weights.shape[0]
    layer = check_int("layer", layer, min_value=-n_layers, max_value=n_layers - 1)
    scores = _fuse(maps.weights, head_fusion)[layer].mean(1)  # (N, S)
    return _token_explanation(
        "attention",
        inputs.detach(),
        scores,
        {"layer": layer, "head_fusion": head_fusion, "batch_size": batch_size},
        {"weights": maps.weights, "layers": maps.layers},
        described,
    )


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
    if not isinstance(residual, bool):
        raise TypeError(f"`residual` must be True or False; got {residual!r}.")
    described = _target(target, model, inputs, forward_args, forward_kwargs, output, eval_mode)
    maps = attention_maps(
        model,
        inputs,
        batch_size=batch_size,
        forward_args=forward_args,
        forward_kwargs=forward_kwargs,
        output=output,
        eval_mode=eval_mode,
    )
    fused = _fuse(maps.weights, head_fusion).to(torch.float64)  # (L, N, T, S)
    t, s = fused.shape[-2:]
    if t != s:
        raise ValueError(
            f"attention_rollout needs self-attention (square maps); got maps of {t} queries x "
            f"{s} keys. Use `attention` for cross-attention."
        )
    if query is not None:
        query = check_int("query", query, min_value=-t, max_value=t - 1)
    eye = torch.eye(t, dtype=fused.dtype, device=fused.device)
    rollout = eye.expand(fused.shape[1], t, t)
    for a in fused:
        if residual:
            a = 0.5 * a + 0.5 * eye
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
        rollout = a @ rollout
    scores = rollout.mean(1) if query is None else rollout[:, query]
    rollout = rollout.to(inputs.dtype if inputs.is_floating_point() else torch.float32)
    return _token_explanation(
        "attention_rollout",
        inputs.detach(),
        scores,
        {
            "head_fusion": head_fusion,
            "residual": residual,
            "query": query,
            "batch_size": batch_size,
        },
        {"rollout": rollout, "layers": maps.layers},
        described,
    )
