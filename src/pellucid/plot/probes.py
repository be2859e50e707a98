"""Figures for probes: weight and gradient heatmaps, activation distributions, and the
curves of the model's activation functions.

matplotlib is imported lazily; every function takes ``ax=None`` and returns the Axes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["activation_curves", "activation_distributions", "gradient_heatmap", "weight_heatmap"]


def _axes(ax: Any, size: tuple[float, float] = (6.0, 3.6)) -> Any:
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=size)
    return ax


def _pick(values: Any, layer: str | None, what: str) -> tuple[str, torch.Tensor]:
    if isinstance(values, torch.Tensor):
        return layer or "", values
    if not isinstance(values, Mapping) or not values:
        raise TypeError(f"`{what}` must be a tensor or a non-empty dict {{layer: tensor}}.")
    if layer is None:
        layer = next(iter(values))
    if layer not in values:
        raise ValueError(
            f"`layer` must be one of the recorded layers {list(values)[:12]}; got {layer!r}."
        )
    return layer, values[layer]


def _matrix(tensor: torch.Tensor) -> torch.Tensor:
    t = tensor.detach().cpu().double()
    if t.ndim == 1:
        return t.unsqueeze(0)
    return t.reshape(t.shape[0], -1)


def _heatmap(tensor: torch.Tensor, ax: Any, title: str, xlabel: str, ylabel: str) -> Any:
    m = _matrix(tensor)
    bound = float(m.abs().max()) or 1.0
    image = ax.imshow(
        m.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest"
    )
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax


def weight_heatmap(weights: Any, *, layer: str | None = None, ax: Any = None) -> Any:
    """Heatmap of one layer's weights (rows: output units; conv kernels flattened).

    Args:
        weights: ``record_weights(model)`` or a weight tensor.
        layer: which layer of the dict (default: the first).

    Raises:
        TypeError: `weights` is neither a tensor nor a non-empty dict of them.
        ValueError: `layer` is not one of the recorded layers.

    Example:
        >>> import torch
        >>> weight_heatmap({"fc": torch.randn(4, 3)}).get_title()
        'weights of fc (4 x 3)'
    """
    name, tensor = _pick(weights, layer, "weights")
    ax = _axes(ax)
    m = _matrix(tensor)
    return _heatmap(
        tensor,
        ax,
        f"weights of {name or 'layer'} ({m.shape[0]} x {m.shape[1]})",
        "input (flattened)",
        "output unit",
    )


def gradient_heatmap(gradients: Any, *, layer: str | None = None, ax: Any = None) -> Any:
    """Heatmap of one layer's gradients: weight gradients, or per-example activation gradients.

    Raises:
        TypeError: `gradients` is neither a tensor nor a non-empty dict of them.
        ValueError: `layer` is not one of the recorded layers.

    Example:
        >>> import torch
        >>> gradient_heatmap({"fc": torch.randn(4, 3)}).get_title()
        'gradients of fc'
    """
    name, tensor = _pick(gradients, layer, "gradients")
    ax = _axes(ax)
    return _heatmap(tensor, ax, f"gradients of {name or 'layer'}", "unit (flattened)", "row")


def activation_distributions(
    activations: Mapping[str, torch.Tensor], *, ax: Any = None, max_points: int = 20000
) -> Any:
    """Violin plot of every recorded layer's activation values, one violin per layer.

    Raises:
        TypeError: `activations` is not a non-empty dict {layer: tensor}.

    Example:
        >>> import torch
        >>> ax = activation_distributions({"a": torch.randn(10, 3), "b": torch.rand(10, 2)})
        >>> [t.get_text() for t in ax.get_xticklabels()]
        ['a', 'b']
    """
    if not isinstance(activations, Mapping) or not activations:
        raise TypeError("`activations` must be a non-empty dict {layer: tensor}.")
    ax = _axes(ax, (max(4.0, 0.7 * len(activations) + 2), 3.6))
    data = []
    gen = torch.Generator().manual_seed(0)
    for tensor in activations.values():
        flat = tensor.detach().cpu().double().flatten()
        flat = flat[torch.isfinite(flat)]
        if flat.numel() > max_points:
            flat = flat[torch.randperm(flat.numel(), generator=gen)[:max_points]]
        data.append(flat.numpy() if flat.numel() else [0.0])
    ax.violinplot(data, showmedians=True)
    ax.set_xticks(range(1, len(data) + 1))
    ax.set_xticklabels(list(activations), rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("activation value")
    ax.set_title("activation distributions per layer")
    return ax


def activation_curves(functions: Any, *, ax: Any = None, span: float = 4.0) -> Any:
    """Draw each activation function (a model's, or ``{name: module}``) on ``[-span, span]``.

    Raises:
        TypeError: `functions` is neither an nn.Module nor a dict of activation modules.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())
        >>> activation_curves(net).get_legend_handles_labels()[1]
        ['Tanh']
    """
    if isinstance(functions, torch.nn.Module):
        from pellucid.inspection.probes import activation_functions

        functions = activation_functions(functions)
    if not isinstance(functions, Mapping):
        raise TypeError("`functions` must be an nn.Module or a dict {name: activation module}.")
    ax = _axes(ax)
    x = torch.linspace(-span, span, 401)
    for name, fn in functions.items():
        with torch.no_grad():
            ax.plot(x.numpy(), fn(x).double().numpy(), label=str(name))
    ax.axhline(0, color="0.6", lw=0.6)
    ax.axvline(0, color="0.6", lw=0.6)
    ax.set_xlabel("input")
    ax.set_ylabel("output")
    ax.set_title("activation functions")
    if functions:
        ax.legend(fontsize=8)
    return ax
