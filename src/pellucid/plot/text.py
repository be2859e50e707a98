"""Text figures: tokens highlighted by their attribution.

matplotlib is imported lazily; every function takes ``ax=None`` and returns the Axes.

Example:
    >>> import torch
    >>> ax = token_attribution(torch.tensor([[0.5, -1.0, 0.0]]), ["good", "bad", "film"])
    >>> [t.get_text() for t in ax.texts][:3]
    ['good', 'bad', 'film']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["token_attribution"]


def _per_token(source: Any, example: int) -> tuple[torch.Tensor, str]:
    """One example's attribution per token (trailing dimensions summed), and a title."""
    if hasattr(source, "attributions") and hasattr(source, "method"):
        values, title = source.attributions, f"{source.method}: tokens by attribution"
    elif isinstance(source, torch.Tensor):
        values, title = source, "tokens by attribution"
    else:
        raise TypeError(
            "`source` must be an Explanation or a tensor of attributions (N, L) or (L,); "
            f"got {type(source).__name__}."
        )
    values = values.detach().cpu().to(torch.float64)
    if values.ndim == 1:
        values = values.unsqueeze(0)
    if not -values.shape[0] <= example < values.shape[0]:
        raise ValueError(
            f"`example` must index one of the {values.shape[0]} examples; got {example}."
        )
    row = values[example]
    return (row.flatten(1).sum(1) if row.ndim > 1 else row), title


def token_attribution(
    source: Any,
    tokens: Sequence[str],
    *,
    example: int = 0,
    ax: Any = None,
    cmap: str = "RdBu_r",
    line_chars: int = 72,
) -> Any:
    """Draw the tokens as text, each on a background coloured by its attribution.

    Red is positive (the token pushed the explained score up), blue negative, white zero;
    the colour scale is symmetric, ``± max |attribution|`` of the example. Attributions with
    trailing dimensions (an embedding layer's, ``(N, L, D)``) are summed per token.

    Args:
        source: an :class:`~pellucid.explanation.Explanation` of token ids (or of their
            embeddings), or a tensor of attributions ``(N, L[, ...])`` or ``(L,)``.
        tokens: the ``L`` token strings of that example (e.g. the tokenizer's
            ``convert_ids_to_tokens``).
        example: which example.
        ax: matplotlib Axes (a new figure when None).
        cmap: a diverging matplotlib colormap name.
        line_chars: characters per line before wrapping.

    Raises:
        TypeError: `source` is neither an Explanation nor a tensor, or `tokens` is not a
            sequence of strings.
        ValueError: `tokens` does not have one string per position, or `example` is out of
            range.
    """
    values, title = _per_token(source, example)
    if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
        raise TypeError("`tokens` must be a list of token strings, one per position.")
    if len(tokens) != values.numel():
        raise ValueError(
            f"`tokens` must hold one string per position, {values.numel()}; got {len(tokens)}."
        )
    import matplotlib
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8.0, 0.45 * (1 + sum(map(len, tokens)) // line_chars) + 1))
    scale = float(values.abs().max()) or 1.0
    colors = matplotlib.colormaps[cmap]
    norm = matplotlib.colors.Normalize(-scale, scale)
    column, line = 0, 0
    for text, value in zip(tokens, values.tolist(), strict=True):
        width = len(text) + 1
        if column and column + width > line_chars:
            column, line = 0, line + 1
        ax.text(column / line_chars, -line, text, family="monospace", fontsize=10, va="center",
                bbox={"facecolor": colors(norm(value)), "edgecolor": "none", "pad": 1.5})  # fmt: skip
        column += width
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-line - 0.7, 0.7)
    ax.axis("off")
    ax.set_title(f"{title} (scale ± {scale:.3g})", fontsize=9)
    return ax
