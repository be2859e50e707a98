"""Permutation importance (Breiman 2001): how much a dataset score drops when a feature is shuffled.

Directly on torch models: every repeat x feature (or group) x row is one virtual row of one
batched evaluation; rows are built chunk by chunk on the data's device, so memory stays
bounded by ``batch_size``. Scores are accumulated per row, so no chunk holds a whole
permuted copy of the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pellucid._adapt import adapt
from pellucid._evaluate import Forward, chunk_rows, map_chunks
from pellucid._state import model_guard
from pellucid._validation import check_choice, check_int, check_model, check_tensor, describe_value
from pellucid.attribution.features import FeatureMask, mix, resolve_feature_mask

__all__ = ["SCORINGS", "PermutationImportance", "permutation_importance"]

#: Built-in scorings; each is "higher is better" (losses are negated).
SCORINGS = ("accuracy", "loss", "neg_mse", "r2")


@dataclass(frozen=True)
class PermutationImportance:
    """The result of :func:`permutation_importance` (scikit-learn's field names).

    Attributes:
        importances: (P, n_repeats) score drops, one column per repeat.
        importances_mean: (P,) mean drop per feature or group.
        importances_std: (P,) standard deviation over repeats.
        baseline_score: the score on the unpermuted data.
        scoring: the scoring used.
        feature_names: one name per feature or group.
    """

    importances: torch.Tensor
    importances_mean: torch.Tensor
    importances_std: torch.Tensor
    baseline_score: float
    scoring: str
    feature_names: list[str] = field(default_factory=list)

    def ranking(self) -> list[str]:
        """Feature names, most important first."""
        order = torch.argsort(self.importances_mean, descending=True).tolist()
        return [self.feature_names[i] for i in order]


def _row_scores(
    scoring: str | Callable[..., torch.Tensor], out: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """One "higher is better" contribution per row; the dataset score is their mean."""
    if callable(scoring):
        result = scoring(out, labels)
        if not isinstance(result, torch.Tensor) or result.shape != out.shape[:1]:
            raise ValueError(
                "A callable `scoring(outputs, labels)` must return one score per row, shape "
                f"({out.shape[0]},); got {describe_value(result)}."
            )
        return result.to(torch.float64)
    if scoring == "accuracy":
        if out.ndim == 2 and out.shape[1] > 1:
            pred = out.argmax(1)
        else:
            pred = (out.reshape(-1) > 0).long()
        return (pred == labels.reshape(-1)).to(torch.float64)
    if scoring == "loss" and not labels.is_floating_point():
        return -F.cross_entropy(
            out.reshape(out.shape[0], -1).double(), labels.reshape(-1), reduction="none"
        )
    return -(
        (out.reshape(out.shape[0], -1).double() - labels.reshape(out.shape[0], -1).double()) ** 2
    ).sum(1)


def permutation_importance(
    model: Any,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    scoring: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "accuracy",
    n_repeats: int = 5,
    feature_mask: torch.Tensor | None = None,
    feature_names: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> PermutationImportance:
    """Permutation importance of each feature (or ``feature_mask`` group) for a dataset score.

    For each repeat and feature, the feature's column is shuffled across rows (a group's
    columns are shuffled together, by one permutation) and the score is recomputed; the
    importance is ``baseline_score - permuted_score``.

    Args:
        model: a callable ``Tensor -> Tensor``.
        inputs: the dataset, batch first (N, ...).
        labels: (N,) class indices, or regression targets.
        scoring: ``"accuracy"``, ``"loss"`` (minus the cross-entropy for class labels, minus
            the squared error for float targets), ``"neg_mse"``, ``"r2"``, or a callable
            ``(outputs, labels) -> (N,)`` per-row scores (higher is better) whose mean is the
            score.
        n_repeats: shuffles per feature.
        feature_mask: integer group ids ``0..P-1`` of one example's shape (shared).
        feature_names: one name per feature or group (default ``feature_i``).
        generator: the random source (same state, same result).
        batch_size: rows per forward pass (memory bound).
        eval_mode: True runs the model in eval mode for this call; None (the default)
            warns in training mode; False keeps the mode silently.

    Raises:
        TypeError: `model` is not callable, `inputs` or `labels` is not a tensor, or an option has
            the wrong type.
        ValueError: fewer than 2 rows, `labels` of another length, an unknown `scoring` (or
            `"accuracy"` with float labels), a callable scoring that does not return one score per
            row, or a `feature_mask` or `feature_names` that does not fit.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(50, 3), torch.randint(0, 2, (50,))
        >>> result = permutation_importance(net, x, y, n_repeats=2)
        >>> tuple(result.importances.shape)
        (3, 2)
    """
    model, inputs, columns = adapt(model, inputs, method="permutation_importance")
    if feature_names is None and columns is not None and feature_mask is None:
        feature_names = columns
    inputs, labels = _check_data(model, inputs, labels, scoring)
    n_repeats = check_int("n_repeats", n_repeats, min_value=1)
    fmask, names = _groups(feature_mask, feature_names, inputs)
    n, p = inputs.shape[0], fmask.n_players
    perms = torch.rand(n_repeats * p, n, generator=generator).argsort(1).to(inputs.device)
    name = scoring if isinstance(scoring, str) else getattr(scoring, "__name__", "callable")
    with model_guard(model, eval_mode=eval_mode, method="permutation_importance"):
        forward = Forward(
            model,
            n_examples=n,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
            output=output,
        )
        with torch.inference_mode():
            base_rows = _row_scores(scoring, forward(inputs), labels)
        permuted = _permuted_scores(forward, scoring, inputs, labels, fmask, perms, batch_size)
    baseline, scores = _dataset_scores(name, labels, base_rows, permuted.view(n_repeats, p, n))
    drops = (baseline - scores).T.to(inputs.dtype)  # (P, n_repeats)
    return PermutationImportance(
        importances=drops,
        importances_mean=drops.mean(1),
        importances_std=drops.std(1, unbiased=False),
        baseline_score=baseline,
        scoring=name,
        feature_names=names,
    )


def _check_data(
    model: Any, inputs: Any, labels: Any, scoring: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset, checked: a callable model, float inputs, one label per row, a known
    scoring that fits the labels."""
    if not isinstance(labels, torch.Tensor) and hasattr(labels, "__array__"):
        labels = torch.as_tensor(np.asarray(labels))
    check_model("model", model)
    inputs = check_tensor("inputs", inputs, min_ndim=1, floating=True, finite=True).detach()
    labels = check_tensor("labels", labels, min_ndim=1).detach().to(inputs.device)
    n = inputs.shape[0]
    if labels.shape[0] != n:
        raise ValueError(
            f"`labels` must have one entry per row of `inputs` ({n}); got {labels.shape[0]}."
        )
    if n < 2:
        raise ValueError(f"`inputs` must have at least 2 rows to permute; got {n}.")
    if not callable(scoring):
        check_choice("scoring", scoring, SCORINGS)
        if scoring == "accuracy" and labels.is_floating_point():
            raise ValueError(
                "`scoring='accuracy'` needs integer class labels; got float labels. Use "
                "'r2' or 'neg_mse' for regression."
            )
    return inputs, labels


def _groups(
    feature_mask: Any, feature_names: Sequence[str] | None, inputs: torch.Tensor
) -> tuple[FeatureMask, list[str]]:
    """The groups shuffled together (one shared mask) and their names."""
    if (
        feature_mask is not None
        and isinstance(feature_mask, torch.Tensor)
        and (feature_mask.shape != inputs.shape[1:])
    ):
        raise ValueError(
            f"`feature_mask` must have the shape of one example {tuple(inputs.shape[1:])} "
            f"(shared by all rows); got {tuple(feature_mask.shape)}."
        )
    fmask = resolve_feature_mask(feature_mask, inputs)
    p = fmask.n_players
    if feature_names is None:
        return fmask, [f"feature_{i}" for i in range(p)]
    names = [str(v) for v in feature_names]
    if len(names) != p:
        raise ValueError(
            f"`feature_names` must have one name per feature or group ({p}); got {len(names)}."
        )
    return fmask, names


def _permuted_scores(
    forward: Forward,
    scoring: Any,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    fmask: FeatureMask,
    perms: torch.Tensor,
    batch_size: int | None,
) -> torch.Tensor:
    """The per-row score of every (repeat x group, row) virtual row, ``perms[k]`` being the
    row order of the ``k``-th shuffle; only one chunk of permuted rows exists at a time."""
    n, p = inputs.shape[0], fmask.n_players
    shape, flat = tuple(inputs.shape[1:]), inputs.reshape(n, -1)
    groups = torch.nn.functional.one_hot(fmask.ids[0], p).T.to(inputs.dtype)  # (P, D) 0/1
    total = perms.shape[0] * n
    size = chunk_rows(batch_size, flat.shape[1], total=total, device=inputs.device)

    def evaluate(start: int, stop: int) -> torch.Tensor:
        idx = torch.arange(start, stop, device=inputs.device)
        which, row = idx // n, idx % n
        source = perms.view(-1).index_select(0, idx)
        shuffled = groups.index_select(0, which % p)
        rows = mix(shuffled, flat.index_select(0, source), flat.index_select(0, row))
        return _row_scores(
            scoring, forward(rows.view(-1, *shape), row), labels.index_select(0, row)
        )

    forward.expect(total)
    return map_chunks(evaluate, total, size)


def _dataset_scores(
    name: str, labels: torch.Tensor, base_rows: torch.Tensor, permuted: torch.Tensor
) -> tuple[float, torch.Tensor]:
    """The dataset score unpermuted and per (repeat, group), from per-row contributions:
    their mean, or for ``r2`` one minus the squared error over the labels' total variance."""
    n = labels.shape[0]
    if name == "r2":
        centered = labels.reshape(n, -1).double()
        total = ((centered - centered.mean(0)) ** 2).sum()
        return float(1.0 + base_rows.sum() / total), 1.0 + permuted.sum(2) / total
    return float(base_rows.mean()), permuted.mean(2)
