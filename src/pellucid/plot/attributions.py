"""Drawing attributions: an image overlay, a top-k bar chart, and a beeswarm-like summary.

Each function takes an :class:`~pellucid.Explanation` (or a plain tensor), draws on ``ax``
(a new figure when None) and returns the Axes. matplotlib is imported only when drawing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pellucid._validation import check_int

__all__ = ["attribution_bars", "attribution_summary", "image_attribution"]


def _axes(ax: Any, size: tuple[float, float]) -> Any:
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=size)
    return ax


def _attr_and_inputs(source: Any) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    if hasattr(source, "attributions") and hasattr(source, "method"):
        return (
            source.attributions.detach().cpu().double(),
            source.inputs.detach().cpu(),
            source.method,
        )
    if isinstance(source, torch.Tensor):
        return source.detach().cpu().double(), None, "attribution"
    raise TypeError(
        f"`explanation` must be an Explanation or a tensor; got {type(source).__name__}."
    )


def _example(values: torch.Tensor, index: int) -> torch.Tensor:
    index = check_int("index", index, min_value=-values.shape[0], max_value=values.shape[0] - 1)
    return values[index]


def image_attribution(
    explanation: Any,
    *,
    index: int = 0,
    absolute: bool = False,
    image: torch.Tensor | None = None,
    alpha: float = 0.65,
    ax: Any = None,
    title: str | None = None,
    colorbar: bool = True,
) -> Any:
    """A heatmap of one example's attributions over its image, with a colorbar.

    Channels are summed. Signed maps use a diverging colormap centred on zero (red
    positive, blue negative); ``absolute=True`` shows magnitudes.

    Args:
        explanation: an Explanation of images (N, C, H, W) or (N, H, W), or a tensor.
        index: which example.
        absolute: draw ``|attribution|`` instead of the signed value.
        image: the grey-scale background (defaults to the explained input).
        alpha: opacity of the heatmap over the image.
        ax: matplotlib Axes; title: the Axes title (defaults to the method name).
        colorbar: add a colorbar.

    Raises:
        TypeError: `explanation` is neither an Explanation nor a tensor.
        ValueError: the example is not an image ((C, H, W) or (H, W)), or `index` is out of range.

    Example:
        >>> import torch
        >>> ax = image_attribution(torch.randn(2, 1, 8, 8))
        >>> ax.get_title()
        'attribution'
    """
    attributions, inputs, method = _attr_and_inputs(explanation)
    heat = _example(attributions, index)
    if heat.ndim == 3:
        heat = heat.sum(dim=0)
    if heat.ndim != 2:
        raise ValueError(
            f"`explanation` must hold images (N, C, H, W) or (N, H, W); got one example of "
            f"shape {tuple(_example(attributions, index).shape)}."
        )
    background = (
        image
        if image is not None
        else (
            _example(inputs, index) if inputs is not None and inputs.is_floating_point() else None
        )
    )
    ax = _axes(ax, (3.2, 3.0))
    if background is not None:
        bg = background.detach().cpu().double()
        bg = bg.mean(dim=0) if bg.ndim == 3 else bg
        if bg.shape == heat.shape:
            ax.imshow(bg.numpy(), cmap="gray", interpolation="nearest")
    if absolute:
        heat = heat.abs()
        limit = float(heat.max()) or 1.0
        mappable = ax.imshow(
            heat.numpy(), cmap="inferno", vmin=0, vmax=limit, alpha=alpha, interpolation="nearest"
        )
    else:
        limit = float(heat.abs().max()) or 1.0
        mappable = ax.imshow(
            heat.numpy(), cmap="bwr", vmin=-limit, vmax=limit, alpha=alpha, interpolation="nearest"
        )
    if colorbar:
        ax.figure.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(method if title is None else title)
    return ax


def _names(names: Sequence[str] | None, count: int) -> list[str]:
    if names is None:
        return [f"x{i}" for i in range(count)]
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"`names` must have one entry per feature ({count}); got {len(names)}.")
    return names


def attribution_bars(
    explanation: Any,
    *,
    index: int = 0,
    names: Sequence[str] | None = None,
    top_k: int = 10,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """The ``top_k`` features of one example by ``|attribution|``, as signed horizontal bars.

    Raises:
        TypeError: `explanation` is neither an Explanation nor a tensor.
        ValueError: `top_k` < 1, `index` is out of range, or `names` has the wrong length.

    Example:
        >>> import torch
        >>> ax = attribution_bars(torch.tensor([[0.5, -2.0, 0.1]]), names=["a", "b", "c"], top_k=2)
        >>> [t.get_text() for t in ax.get_yticklabels()]
        ['a', 'b']
    """
    attributions, _, method = _attr_and_inputs(explanation)
    values = _example(attributions, index).reshape(-1)
    top_k = check_int("top_k", top_k, min_value=1)
    labels = _names(names, values.numel())
    order = values.abs().argsort(descending=True)[:top_k].flip(0)  # largest drawn on top
    shown = values[order]
    ax = _axes(ax, (4.5, 0.3 * len(order) + 1.0))
    colors = ["#c0392b" if v > 0 else "#2e6da4" for v in shown.tolist()]
    ax.barh(range(len(order)), shown.numpy(), color=colors)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([labels[i] for i in order.tolist()])
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"{method} (signed)")
    ax.set_title(title if title is not None else f"top {len(order)} features, example {index}")
    return ax


def attribution_summary(
    explanation: Any,
    *,
    names: Sequence[str] | None = None,
    top_k: int = 10,
    ax: Any = None,
    title: str | None = None,
    seed: int = 0,
) -> Any:
    """A beeswarm-like summary: each dot one example's attribution to a feature, features
    ordered by mean ``|attribution|``, dots coloured by the feature's (scaled) value.

    Raises:
        TypeError: `explanation` is neither an Explanation nor a tensor.
        ValueError: `top_k` < 1, or `names` has the wrong length.

    Example:
        >>> import torch
        >>> ax = attribution_summary(torch.randn(20, 4), names=list("abcd"), top_k=3)
        >>> len(ax.get_yticklabels())
        3
    """
    attributions, inputs, method = _attr_and_inputs(explanation)
    values = attributions.reshape(attributions.shape[0], -1)
    top_k = check_int("top_k", top_k, min_value=1)
    labels = _names(names, values.shape[1])
    order = values.abs().mean(dim=0).argsort(descending=True)[:top_k].flip(0)
    features = None
    if inputs is not None and inputs.is_floating_point() and inputs.numel() == attributions.numel():
        features = inputs.double().reshape(values.shape)
        low, high = features.min(dim=0).values, features.max(dim=0).values
        features = (features - low) / (high - low).clamp(min=1e-12)
    ax = _axes(ax, (5.0, 0.35 * len(order) + 1.2))
    gen = torch.Generator().manual_seed(seed)
    mappable = None
    for row, feature in enumerate(order.tolist()):
        column = values[:, feature]
        jitter = (torch.rand(column.shape[0], generator=gen, dtype=torch.float64) - 0.5) * 0.6
        style: dict[str, Any] = {"c": "#555555"}
        if features is not None:
            style = {
                "c": features[:, feature].numpy(),
                "cmap": "coolwarm",
                "vmin": 0.0,
                "vmax": 1.0,
            }
        mappable = ax.scatter(column.numpy(), (row + jitter).numpy(), s=10, linewidths=0, **style)
    if features is not None and mappable is not None:
        bar = ax.figure.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04)
        bar.set_label("feature value (low to high)")
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([labels[i] for i in order.tolist()])
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"{method} attribution")
    ax.set_title(title if title is not None else f"{method}: {values.shape[0]} examples")
    return ax
