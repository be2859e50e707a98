"""Bar charts of feature importance with error bars (permutation importance, Shapley values).

matplotlib is imported lazily; the function takes ``ax=None`` and returns the Axes.

Example:
    >>> ax = importance_bars([0.3, 0.1, 0.2], std=[0.05, 0.01, 0.02], names=["a", "b", "c"])
    >>> [t.get_text() for t in ax.get_yticklabels()]
    ['b', 'c', 'a']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pellucid._validation import check_int

__all__ = ["importance_bars"]


def _values(source: Any) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None, str]:
    if hasattr(source, "importances_mean"):  # PermutationImportance
        label = f"score drop ({source.scoring})"
        return (
            source.importances_mean.detach().cpu().double(),
            source.importances_std.detach().cpu().double(),
            list(source.feature_names),
            label,
        )
    if hasattr(source, "attributions") and hasattr(source, "extras"):  # Explanation
        values = source.extras.get("values", source.attributions.reshape(len(source), -1))
        values = values.detach().cpu().double()
        return (
            values.abs().mean(0),
            values.abs().std(0) if len(values) > 1 else None,
            None,
            (f"mean |{source.method}|"),
        )
    try:
        values = torch.as_tensor(source, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            "`source` must be a PermutationImportance, an Explanation or a sequence of numbers; "
            f"got {type(source).__name__}."
        ) from exc
    return values, None, None, "importance"


def importance_bars(
    source: Any,
    *,
    std: Sequence[float] | torch.Tensor | None = None,
    names: Sequence[str] | None = None,
    top_k: int | None = 20,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Horizontal bars, largest on top, with ``std`` as error bars.

    Args:
        source: a :class:`~pellucid.inspection.PermutationImportance` (mean and std over
            repeats), an :class:`~pellucid.Explanation` (mean absolute value per feature or
            player over examples) or a sequence of importances.
        std: error bars (overrides the source's).
        names: one label per feature (overrides the source's).
        top_k: draw only the ``top_k`` largest (None: all).
        ax: matplotlib Axes to draw on (a new figure when None).
        title: the Axes title.

    Returns:
        The Axes.

    Raises:
        TypeError: `source` is not a PermutationImportance, an Explanation or numbers.
        ValueError: `names` or `std` has the wrong length, or `top_k` < 1.
    """
    values, err, labels, xlabel = _values(source)
    if std is not None:
        err = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
    if names is not None:
        labels = [str(n) for n in names]
    labels = labels or [f"feature_{i}" for i in range(values.shape[0])]
    if len(labels) != values.shape[0] or (err is not None and err.shape[0] != values.shape[0]):
        raise ValueError(
            f"`names` and `std` must have one entry per feature ({values.shape[0]}); got "
            f"{len(labels)} names and {None if err is None else err.shape[0]} errors."
        )
    order = torch.argsort(values, descending=True)
    if top_k is not None:
        order = order[: check_int("top_k", top_k, min_value=1)]
    order = order.flip(0)  # barh draws bottom-up: largest on top
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 0.3 * len(order) + 1.2))
    positions = list(range(len(order)))
    ax.barh(
        positions,
        values[order].tolist(),
        xerr=None if err is None else err[order].tolist(),
        color="#4c72b0",
        ecolor="#333333",
        capsize=2,
    )
    ax.set_yticks(positions)
    ax.set_yticklabels([labels[i] for i in order.tolist()])
    ax.axvline(0.0, color="#888888", linewidth=0.8)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    return ax
