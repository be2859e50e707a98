"""Reading a model's attention weights: the hooks behind the attention methods.

For ``nn.MultiheadAttention`` (torchvision's ViT), a pre-hook asks the layer for per-head
weights (``need_weights=True, average_attn_weights=False``) and a forward hook records them
and hands the caller exactly what it asked for (no weights, or head-averaged ones).
Fused-QKV blocks that call ``scaled_dot_product_attention`` and never form the weights
(timm's ``Attention``: ``qkv``, ``num_heads``, ``head_dim``, ``scale``) get a forward hook
that recomputes ``softmax(q k^T * scale)`` from the block's input with its own projection
and q/k norms. The hooks are removed on exit, also on errors. :class:`Capture` is the method
shell's ``engine=`` that records them chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn

from pellucid._evaluate import Forward, map_chunks, resolve_batch_size
from pellucid._validation import describe_value

__all__ = ["Capture", "attention_layers", "capture"]

_NEED_WEIGHTS, _AVERAGE = 4, 6  # positions in MultiheadAttention.forward(q, k, v, ...)


def _fused(module: nn.Module) -> bool:
    """A fused-QKV attention block (timm ``Attention``) whose weights can be recomputed."""
    return (
        isinstance(getattr(module, "qkv", None), nn.Linear)
        and all(isinstance(getattr(module, a, None), int) for a in ("num_heads", "head_dim"))
        and isinstance(getattr(module, "scale", None), float)
    )


def attention_layers(model: Any) -> list[tuple[str, nn.Module]]:
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
def capture(model: nn.Module) -> Iterator[list[tuple[str, torch.Tensor]]]:
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
        for name, module in attention_layers(model):
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


class Capture:
    """The shell's ``engine=`` for the attention methods: a forward runs ``batch_size``
    examples at a time with the attention layers' weights recorded, chunk by chunk. The
    shell's first forward (which also resolves or validates the target) records them: one
    pass over the examples.
    """

    errors: tuple[type[Exception], ...] = ()

    def __init__(self, batch_size: int | None) -> None:
        self.batch_size = batch_size
        self.chunks: list[list[tuple[str, torch.Tensor]]] = []
        self.model: nn.Module | None = None

    def __call__(self, model: nn.Module, inputs: Any) -> Capture:
        self.model = model
        return self

    def wrap(self, forward: Forward) -> Any:
        return self.capturing(forward)

    def capturing(self, forward: Forward) -> Any:
        def run(rows: torch.Tensor, example_index: Any = None) -> torch.Tensor:
            n = rows.shape[0]

            def chunk(start: int, stop: int) -> torch.Tensor:
                index = torch.arange(start, stop, device=rows.device)
                with capture(cast(nn.Module, self.model)) as records:
                    out = forward(rows[start:stop], index).detach()
                self.chunks.append(records)
                return out

            size = resolve_batch_size(self.batch_size, rows[0].numel(), total=n)
            return map_chunks(chunk, n, size)

        return run
