"""Arrays to a :class:`~pellucid.data.Dataset`: checks, task, split and standardization.

Shared by every user-data reader (:mod:`pellucid.sources.data` for arrays and Datasets,
:mod:`pellucid.sources._tables`, :mod:`pellucid.sources._images`), which is why it is a
module of its own: the readers import it, and it imports none of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pellucid._validation import did_you_mean
from pellucid.data import Dataset, stratified_split
from pellucid.sources.models import SourceError
from pellucid.sources.spec import DataSpec

__all__ = ["check_column", "from_arrays"]


def _check(x: np.ndarray, y: np.ndarray, where: str) -> None:
    if x.dtype.kind not in "biuf":
        raise SourceError(f"{where}: inputs must be numeric; found dtype {x.dtype}.")
    if x.ndim < 2 or x.shape[0] == 0:
        raise SourceError(
            f"{where}: inputs must be batch first with at least one row and one feature; "
            f"found shape {x.shape}."
        )
    if y.shape[0] != x.shape[0]:
        raise SourceError(
            f"{where}: one label per row expected; found {x.shape[0]} rows and {y.shape[0]} labels."
        )
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise SourceError(f"{where}: inputs must be finite; found NaN/inf at index {first}.")


def _task(spec: DataSpec, y: np.ndarray) -> str:
    if spec.task not in ("auto", "classification", "regression"):
        raise SourceError(
            f"`data.task` must be 'auto', 'classification' or 'regression'; got {spec.task!r}."
        )
    if spec.task != "auto":
        return spec.task
    return "regression" if y.dtype.kind == "f" else "classification"


def from_arrays(
    spec: DataSpec,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray] | None,
    *,
    feature_names: list[str] | None = None,
    groups: list[str] | None = None,
    group_ids: np.ndarray | None = None,
    class_names: list[str] | None = None,
) -> Dataset:
    """A :class:`Dataset` from train (and optional test) arrays, split when ``test`` is None."""
    x, y = train
    _check(x, y, f"{spec.path!r}")
    if test is not None:
        _check(test[0], test[1], f"{spec.test_path or spec.path!r}")
        if test[0].shape[1:] != x.shape[1:]:
            raise SourceError(
                f"the test split's rows have shape {test[0].shape[1:]} but the training "
                f"rows {x.shape[1:]}; both files must hold the same features."
            )
    task = _task(spec, y)
    y_all = y if test is None else np.concatenate([y, test[1]])
    if task == "classification":
        if class_names is None:
            values = np.unique(y_all)
            class_names = [str(v) for v in values]
            y_all = np.searchsorted(values, y_all)
        y_all = y_all.astype(np.int64)
    x_all = (x if test is None else np.concatenate([x, test[0]])).astype(np.float64)
    if test is None:
        train_idx, test_idx = stratified_split(
            y_all, spec.test_size, spec.seed, stratify=task == "classification"
        )
    else:
        train_idx, test_idx = np.arange(len(y)), np.arange(len(y), len(y_all))
    mean, std = np.zeros(()), np.ones(())
    if spec.standardize:
        images = x_all.ndim > 2  # per channel: over rows and positions
        axes = (0, *range(2, x_all.ndim)) if images else (0,)
        mean = x_all[train_idx].mean(axis=axes, keepdims=images)
        std = x_all[train_idx].std(axis=axes, keepdims=images)
        std = np.where(std > 0, std, 1.0)
        if group_ids is not None:  # one-hot columns stay 0/1
            onehot = np.bincount(group_ids) > 1
            cols = onehot[group_ids]
            mean, std = np.where(cols, 0.0, mean), np.where(cols, 1.0, std)
        x_all = (x_all - mean) / std
        if x_all.ndim > 2:
            mean, std = mean[0], std[0]
    xt = torch.as_tensor(x_all, dtype=torch.float32)
    yt = torch.as_tensor(y_all, dtype=torch.long if task == "classification" else torch.float32)
    width = int(np.prod(x.shape[1:]))
    names = feature_names or [f"x{i}" for i in range(width)]
    return Dataset(
        name=spec.name or Path(spec.path.split(":")[-1]).stem,
        X_train=xt[train_idx],
        y_train=yt[train_idx],
        X_test=xt[test_idx],
        y_test=yt[test_idx],
        feature_names=names,
        class_names=class_names or [],
        task=task,
        mean=torch.as_tensor(mean, dtype=torch.float32),
        std=torch.as_tensor(std, dtype=torch.float32),
        feature_groups=list(groups or []),
        feature_mask=None if group_ids is None else torch.as_tensor(group_ids, dtype=torch.long),
        source=spec.describe(),
    )


def check_column(name: str, columns: list[str], file: str, what: str) -> None:
    """Refuse a column name that the table does not have."""
    if name not in columns:
        raise SourceError(
            f"`{what}` must be a column of {file!r}; got {name!r}. Columns: "
            + ", ".join(columns[:20])
            + "."
            + did_you_mean(name, columns)
        )
