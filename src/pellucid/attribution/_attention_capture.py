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

from pellucid._evaluate import (
    ESTIMATE_FACTOR,
    Forward,
    RowCost,
    format_bytes,
    map_chunks,
    memory_batch_size,
    parse_memory,
    probe_peak,
    resolve_batch_size,
)
from pellucid._validation import describe_value

__all__ = ["AttentionMismatch", "Capture", "attention_layers", "capture"]


class AttentionMismatch(ValueError):
    """The attention layers' maps cannot be put together (raised as it is from the
    model's evaluation, not as a failure of the model)."""


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
    examples at a time with the attention layers' weights recorded, chunk by chunk, each
    chunk's maps copied into :attr:`weights` (L, N, H, T, S) as soon as it ran (so the maps
    are held once, plus one chunk's). The shell's first forward (which also resolves or
    validates the target) records them: one pass over the examples.

    With ``max_memory`` (a budget already checked by the caller) the chunk size is picked
    before that pass, from one example run alone: the model's peak on it (the maps of that
    row included) per row of a chunk, and for the whole call the maps of every example
    once, plus what the method makes from them: ``made``, in head-fused float32 maps of one
    layer, for a model with several attention layers and for one with a single layer.
    :attr:`batch_size` is then the size picked.
    """

    errors: tuple[type[Exception], ...] = (AttentionMismatch,)

    def __init__(
        self,
        batch_size: int | None,
        max_memory: Any = None,
        method: str = "attention_maps",
        made: tuple[int, int] = (0, 0),
    ) -> None:
        self.batch_size, self.max_memory, self.method = batch_size, max_memory, method
        self.made = made
        self.weights: torch.Tensor | None = None
        self.layers: list[str] = []
        self.model: nn.Module | None = None
        self._inputs: Any = None

    def __call__(self, model: nn.Module, inputs: Any) -> Capture:
        self.model, self._inputs = model, inputs
        return self

    def wrap(self, forward: Forward) -> Any:
        """The capturing forward; with ``max_memory``, the chunk size is picked first
        (``prepare`` calls this once it checked the inputs, before the first forward).

        Raises:
            ValueError: the budget does not hold the maps of every example and one row.
        """
        if self.max_memory is not None and self.batch_size is None:
            self.batch_size = self._fitting(forward, self._inputs.detach())
        return self.capturing(forward)

    def capturing(self, forward: Forward) -> Any:
        def run(rows: torch.Tensor, example_index: Any = None) -> torch.Tensor:
            n = rows.shape[0]

            def chunk(start: int, stop: int) -> torch.Tensor:
                index = torch.arange(start, stop, device=rows.device)
                with capture(cast(nn.Module, self.model)) as records:
                    out = forward(rows[start:stop], index).detach()
                self._store(records, start, n)
                return out

            size = resolve_batch_size(self.batch_size, rows[0].numel(), total=n)
            return map_chunks(chunk, n, size)

        return run

    def _store(self, records: list[tuple[str, torch.Tensor]], start: int, n: int) -> None:
        """Copy one chunk's maps (its rows start at ``start`` of ``n``) into :attr:`weights`.

        Raises:
            AttentionMismatch: no attention layer ran, the layers' maps differ in shape, or
                this chunk ran other layers than the first.
        """
        names = [name for name, _ in records]
        if not names:
            raise AttentionMismatch(
                "No attention layer ran while the model evaluated `inputs`: the model holds "
                "attention layers but its forward did not call them."
            )
        shapes = {tuple(w.shape[1:]) for _, w in records}
        if len(shapes) != 1:
            raise AttentionMismatch(
                f"The attention layers have different map shapes {sorted(shapes)}."
            )
        first = records[0][1]
        if self.weights is None:
            self.layers = names
            self.weights = first.new_empty(len(names), n, *first.shape[1:])
        elif names != self.layers or tuple(first.shape[1:]) != tuple(self.weights.shape[2:]):
            raise AttentionMismatch(
                "The attention layers ran differently for different examples (the model's "
                f"control flow depends on its inputs): {self.layers} for the first examples, "
                f"{names} for others. Pass batch_size= at least the number of examples, or "
                "explain those examples separately."
            )
        stop = start + first.shape[0]
        del first
        while records:  # last layer first, each map let go once copied
            _, w = records.pop()
            self.weights[len(records), start:stop].copy_(w)

    def _fitting(self, forward: Forward, rows: torch.Tensor) -> int:
        """Examples per chunk within ``max_memory`` (see the class doc): while the model
        runs, the maps recorded so far and one chunk's peak; after it, the maps and what the
        method makes from them (the chunk's activations are gone by then)."""
        row = rows[:1].detach()
        index = torch.zeros(1, dtype=torch.long, device=row.device)
        per_example: list[int] = []  # the maps of one example, and what is made from them

        def probe() -> Any:
            with torch.inference_mode(), capture(cast(nn.Module, self.model)) as records:
                out = forward(row, index)
            fused = max((4 * w.numel() // max(1, w.shape[1]) for _, w in records), default=0)
            per_example.append(sum(w.numel() * w.element_size() for _, w in records))
            per_example.append(self.made[0 if len(records) > 1 else 1] * fused)
            return out

        row_bytes = row.numel() * row.element_size()
        peak = probe_peak(probe, ESTIMATE_FACTOR * row_bytes)
        maps, made = per_example if per_example else (peak, peak)
        n, budget = rows.shape[0], parse_memory(self.max_memory)
        after = n * (row_bytes + maps + made)
        if after > budget:
            raise ValueError(
                f"`max_memory` must hold the attention maps of {n} example(s) and what "
                f"{self.method} computes from them ({format_bytes(after)}); got "
                f"max_memory={self.max_memory!r}. Raise it to at least {format_bytes(after)}, "
                "or explain fewer examples per call."
            )
        return memory_batch_size(
            budget,
            RowCost(copies=1, fixed=1),
            row_bytes=row_bytes,
            activations=peak,
            n_examples=n,
            total=n,
            method=self.method,
            max_memory=self.max_memory,
            extra_fixed=n * maps,
        )
