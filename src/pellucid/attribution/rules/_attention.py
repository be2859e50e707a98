"""Attention as the operations it is made of, so that rule tables need no attention rule.

``scaled_dot_product_attention`` and ``nn.MultiheadAttention``'s functional core
(``multi_head_attention_forward``) arrive at the rule engine as one fused operation. These
decompositions compute the same function with matmuls, a softmax and linear layers, batch
first (the joint reference pass needs the batch first), and each part then meets the
method's rule: DeepLIFT's midpoint rule for the two products and its softmax rule, LRP's
constant attention weights (CP-LRP). Training-time dropout, ``bias_k``/``bias_v``,
``add_zero_attn`` and static keys are refused by name.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from pellucid.attribution.rules._engine import Decompose, RuleEngine

__all__ = ["ATTENTION", "multi_head_attention", "scaled_dot_product_attention"]


def _bias(mask: torch.Tensor | None, masked_when: bool, like: torch.Tensor) -> torch.Tensor | None:
    """An additive float mask: ``-inf`` where a boolean ``mask`` equals ``masked_when``."""
    if mask is None or mask.is_floating_point():
        return mask
    blocked = mask if masked_when else mask.logical_not()
    zeros = torch.zeros(blocked.shape, dtype=like.dtype, device=like.device)
    return zeros.masked_fill(blocked, float("-inf"))


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q k^T * scale + bias) v`` and the attention weights."""
    scores = (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def _causal(length: int, source: int, like: torch.Tensor) -> torch.Tensor:
    allowed = torch.ones(length, source, dtype=torch.bool, device=like.device).tril()
    return _bias(allowed, False, like)  # type: ignore[return-value]


def scaled_dot_product_attention(
    engine: RuleEngine,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (dropout refused: it is random even in eval)."""
    if dropout_p > 0:
        raise engine.unsupported(
            "scaled_dot_product_attention", f" with dropout_p={dropout_p} (random)"
        )
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        groups = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(groups, -3), value.repeat_interleave(groups, -3)
    factor = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    bias = _bias(attn_mask, False, query)
    if is_causal:
        causal = _causal(query.shape[-2], key.shape[-2], query)
        bias = causal if bias is None else bias + causal
    return _attend(query, key, value, bias, factor)[0]


def _refusals(args: dict[str, Any]) -> list[str]:
    named = [n for n in ("bias_k", "bias_v", "static_k", "static_v") if args[n] is not None]
    if args["add_zero_attn"]:
        named.append("add_zero_attn=True")
    if args["training"] and args["dropout_p"] > 0:
        named.append(f"dropout_p={args['dropout_p']} in training mode")
    return named


def _mask(args: dict[str, Any], n: int, heads: int, length: int, q: torch.Tensor) -> Any:
    """The combined additive mask, shaped to broadcast against (n, heads, length, source)."""
    bias = _bias(args["attn_mask"], True, q)
    if bias is not None and bias.dim() == 3:  # (n * heads, length, source)
        bias = bias.view(n, heads, length, -1)
    padding = _bias(args["key_padding_mask"], True, q)
    if padding is not None:
        padding = padding.view(n, 1, 1, -1)
        bias = padding if bias is None else bias + padding
    if bias is None and args["is_causal"]:
        bias = _causal(length, length, q)
    return bias


def multi_head_attention(
    engine: RuleEngine,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    embed_dim_to_check: int,
    num_heads: int,
    in_proj_weight: torch.Tensor | None,
    in_proj_bias: torch.Tensor | None,
    bias_k: torch.Tensor | None,
    bias_v: torch.Tensor | None,
    add_zero_attn: bool,
    dropout_p: float,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor | None,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``F.multi_head_attention_forward`` (sequence-first inputs, as nn.MultiheadAttention
    passes them), computed batch first."""
    args: dict[str, Any] = {"training": True, "key_padding_mask": None, "attn_mask": None}
    args.update(need_weights=True)
    args.update(is_causal=False, use_separate_proj_weight=False, average_attn_weights=True)
    args.update(static_k=None, static_v=None)
    args.update(options)
    args.update(bias_k=bias_k, bias_v=bias_v, add_zero_attn=add_zero_attn, dropout_p=dropout_p)
    refused = _refusals(args)
    if refused:
        raise engine.unsupported("multi_head_attention_forward", f" with {', '.join(refused)}")
    batched = query.dim() == 3
    q, k, v = (t.transpose(0, 1) if batched else t.unsqueeze(0) for t in (query, key, value))
    if args["use_separate_proj_weight"]:
        weights = (args["q_proj_weight"], args["k_proj_weight"], args["v_proj_weight"])
    else:
        weights = tuple(in_proj_weight.chunk(3))  # type: ignore[union-attr]
    biases = (None,) * 3 if in_proj_bias is None else tuple(in_proj_bias.chunk(3))
    q, k, v = (F.linear(t, w, b) for t, w, b in zip((q, k, v), weights, biases, strict=True))
    n, length, embed = q.shape
    head = embed // num_heads
    q, k, v = (t.reshape(n, -1, num_heads, head).transpose(1, 2) for t in (q, k, v))
    bias = _mask(args, n, num_heads, length, q)
    out, attn = _attend(q, k, v, bias, 1 / math.sqrt(head))
    out = F.linear(out.transpose(1, 2).reshape(n, length, embed), out_proj_weight, out_proj_bias)
    out = out.transpose(0, 1) if batched else out.squeeze(0)
    if not args["need_weights"]:
        return out, None
    if args["average_attn_weights"]:
        attn = attn.mean(1)
    return out, attn if batched else attn.squeeze(0)


#: Table entries for every method that has rules for products and softmax.
ATTENTION = {
    "scaled_dot_product_attention": Decompose(scaled_dot_product_attention),
    "multi_head_attention_forward": Decompose(multi_head_attention),
}
