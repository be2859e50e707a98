"""Attention heatmaps: one layer's map (a head or fused over heads) or an attention rollout.

matplotlib is imported lazily; the function takes ``ax=None`` and returns the Axes.

Example:
    >>> import torch
    >>> ax = attention_heatmap(torch.eye(3), tokens=["a", "b", "c"])
    >>> ax.get_xlabel()
    'key'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pellucid._validation import check_int

__all__ = ["attention_heatmap"]


def _matrix(source: Any, layer: int, head: int | None, example: int) -> tuple[torch.Tensor, str]:
    if isinstance(source, torch.Tensor):
        weights, what = source, "attention"
    elif hasattr(source, "weights") and hasattr(source, "layers"):  # AttentionMaps
        weights, what = source.weights, "attention"
    elif hasattr(source, "extras") and "rollout" in source.extras:
        weights, what = source.extras["rollout"], "rollout"
    elif hasattr(source, "extras") and "weights" in source.extras:
        weights, what = source.extras["weights"], "attention"
    else:
        raise TypeError(
            "`source` must be a 2-D tensor, AttentionMaps, or an Explanation from `attention` "
            f"or `attention_rollout`; got {type(source).__name__}."
        )
    weights = weights.detach().cpu().double()
    if weights.ndim == 5:  # (L, N, H, T, S)
        weights = weights[
            check_int("layer", layer, min_value=-weights.shape[0], max_value=weights.shape[0] - 1)
        ]
        what = f"layer {layer}"
    if weights.ndim == 4:  # (N, H, T, S)
        weights = weights[example]
    if weights.ndim == 3 and what != "rollout":  # (H, T, S)
        if head is None:
            weights, what = weights.mean(0), what + ", mean over heads"
        else:
            weights, what = weights[head], what + f", head {head}"
    elif weights.ndim == 3:  # rollout (N, T, T)
        weights = weights[example]
    if weights.ndim != 2:
        raise ValueError(f"Could not reduce the attention to a 2-D map; got {weights.ndim}-D.")
    return weights, what


def attention_heatmap(
    source: Any,
    *,
    layer: int = -1,
    head: int | None = None,
    example: int = 0,
    tokens: Sequence[str] | None = None,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Draw a query x key attention map as a heatmap.

    Args:
        source: a 2-D tensor, :class:`~pellucid.attribution.AttentionMaps`, or the
            Explanation of ``attention`` (per-head maps) or ``attention_rollout``.
        layer: which layer for per-layer maps.
        head: which head (None: mean over heads).
        example: which example of the batch.
        tokens: labels of the positions.
        ax: matplotlib Axes to draw on (a new figure when None).
        title: the Axes title (default: what is drawn).

    Returns:
        The Axes.

    Raises:
        TypeError: `source` is not attention maps or a rollout, or `layer`/`head`/`example` is not
            an integer.
        ValueError: `layer`, `head` or `example` is out of range.
    """
    matrix, what = _matrix(source, layer, head, check_int("example", example, min_value=0))
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(4.5, 4))
    image = ax.imshow(matrix.numpy(), cmap="viridis", vmin=0.0, aspect="auto")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if tokens is not None:
        labels = [str(t) for t in tokens]
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=90)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(title or what)
    return ax
