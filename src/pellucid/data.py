"""Embedded datasets (scikit-learn's offline copies) and loaders for a user's own arrays.

Example:
    >>> ds = load_dataset("digits", seed=0)
    >>> tuple(ds.X_train.shape[1:]), ds.n_classes
    ((1, 8, 8), 10)
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pellucid._validation import check_float, check_int, did_you_mean

__all__ = ["DATASETS", "Dataset", "load_arrays", "load_dataset"]

DATASETS = ("digits", "breast_cancer", "wine", "iris", "diabetes")


@dataclass
class Dataset:
    """A train/test split with names, standardized on the training part only.

    Attributes:
        name: dataset name.
        X_train, y_train, X_test, y_test: tensors (float32 inputs; int64 labels for
            classification, float32 targets for regression).
        feature_names: one name per input feature (per pixel for images).
        class_names: class labels (empty for regression).
        task: ``"classification"`` or ``"regression"``.
        mean, std: the standardization fitted on the training part (scalars for images).
        feature_groups: names of the features as the user knows them (a CSV's columns)
            when several input columns make one feature (a one-hot categorical column);
            empty when every input column is its own feature.
        feature_mask: with ``feature_groups``, the group id of every input column, shape
            of one example (pass it as ``feature_mask=`` to attribute per group).
        source: where the data came from (shown in the report).
    """

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    feature_names: list[str]
    class_names: list[str]
    task: str
    mean: torch.Tensor = field(repr=False, default_factory=lambda: torch.zeros(()))
    std: torch.Tensor = field(repr=False, default_factory=lambda: torch.ones(()))
    feature_groups: list[str] = field(default_factory=list)
    feature_mask: torch.Tensor | None = field(repr=False, default=None)
    source: str = ""

    @property
    def n_classes(self) -> int:
        """Number of classes (1 output for regression)."""
        return len(self.class_names) if self.task == "classification" else 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(self.X_train.shape[1:])

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X_train, y_train)``."""
        return self.X_train, self.y_train

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X_test, y_test)``."""
        return self.X_test, self.y_test


def stratified_split(
    y: np.ndarray, test_size: float, seed: int, stratify: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train/test row indices, deterministic in ``seed``, stratified by ``y``."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    if stratify:  # every class needs a row on each side; else split without strata
        _, counts = np.unique(y, return_counts=True)
        stratify = bool(counts.min() >= 2) and round(test_size * len(y)) >= len(counts)
    train, test = train_test_split(
        index, test_size=test_size, random_state=seed, stratify=y if stratify else None
    )
    return np.sort(train), np.sort(test)


def load_dataset(name: str, *, seed: int = 0, test_size: float = 0.25) -> Dataset:
    """Load an embedded dataset with a deterministic stratified split.

    Args:
        name: ``digits`` (images N x 1 x 8 x 8), ``breast_cancer``, ``wine``, ``iris``
            (tabular classification) or ``diabetes`` (regression; the target is
            standardized too).
        seed: the split's random state.
        test_size: fraction held out for testing.

    Raises:
        ValueError: `name` is not an embedded dataset (with the closest suggestion), `seed` < 0, or
            `test_size` outside (0, 1).
        TypeError: `seed` or `test_size` has the wrong type.
    """
    from sklearn import datasets as skd

    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(
            f"`name` must be one of {', '.join(DATASETS)}; got {name!r}."
            + did_you_mean(str(name), DATASETS)
        )
    check_int("seed", seed, min_value=0)
    check_float(
        "test_size",
        test_size,
        min_value=0.0,
        max_value=1.0,
        min_inclusive=False,
        max_inclusive=False,
    )
    loader = {
        "digits": skd.load_digits,
        "breast_cancer": skd.load_breast_cancer,
        "wine": skd.load_wine,
        "iris": skd.load_iris,
        "diabetes": skd.load_diabetes,
    }[name]
    bunch: Any = loader()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target)
    regression = name == "diabetes"
    train, test = stratified_split(y, test_size, seed, stratify=not regression)
    if name == "digits":
        x = x.reshape(-1, 1, 8, 8)
        mean = x[train].mean()
        std = x[train].std()
        feature_names = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    else:
        mean = x[train].mean(axis=0)
        std = x[train].std(axis=0)
        std = np.where(std > 0, std, 1.0)
        feature_names = [str(f) for f in bunch.feature_names]
    x = (x - mean) / std
    if regression:
        y_mean, y_std = y[train].mean(), y[train].std()
        y_t = torch.as_tensor((y - y_mean) / y_std, dtype=torch.float32)
        class_names: list[str] = []
    else:
        y_t = torch.as_tensor(y, dtype=torch.long)
        names = getattr(bunch, "target_names", None)
        class_names = (
            [str(c) for c in names] if names is not None else [str(c) for c in sorted(set(y))]
        )
    x_t = torch.as_tensor(x, dtype=torch.float32)
    return Dataset(
        name=name,
        X_train=x_t[train],
        y_train=y_t[train],
        X_test=x_t[test],
        y_test=y_t[test],
        feature_names=feature_names,
        class_names=class_names,
        task="regression" if regression else "classification",
        mean=torch.as_tensor(mean, dtype=torch.float32),
        std=torch.as_tensor(std, dtype=torch.float32),
    )


def _check_array(x: np.ndarray, path: Path, what: str) -> np.ndarray:
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(
            f"{what} in {str(path)!r} must have at least one row; got shape {x.shape}."
        )
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{what} in {str(path)!r} must be numeric; got dtype {x.dtype}.")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(
            f"{what} in {str(path)!r} must be finite; found NaN/inf at index {tuple(int(i) for i in bad)}. "
            "Impute or drop those rows first."
        )
    return x


def load_arrays(
    path: str | os.PathLike[str],
    *,
    label: str | int | None = None,
    labels_path: str | os.PathLike[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """Load a user's data safely: ``.npy`` (no pickle), ``.csv`` or ``.pt`` (weights only).

    Args:
        path: the features file. A ``.pt`` file may hold a tensor or a dict with ``"X"`` and
            optionally ``"y"``.
        label: for ``.csv``, the label column (header name or index); it is removed from the
            features.
        labels_path: a separate ``.npy``/``.pt``/``.csv`` file of labels, one per row.

    Returns:
        ``(X, y, feature_names)``; ``y`` is None when no labels were given.

    Raises:
        FileNotFoundError: `path` (or `labels`) is not an existing file.
        ValueError: an unsupported suffix, non-numeric or non-finite values, a pickled `.npy`, or
            labels that do not match the rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path` must be an existing file; got {str(path)!r}.")
    suffix = path.suffix.lower()
    y: np.ndarray | None = None
    names: list[str] = []
    if suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(
                f"{str(path)!r} could not be read without pickle ({exc}); save plain numeric "
                "arrays with np.save(..., allow_pickle=False)."
            ) from exc
    elif suffix == ".csv":
        x, y, names = _read_csv(path, label)
    elif suffix == ".pt":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle.UnpicklingError, RuntimeError, EOFError...
            # torch's message suggests weights_only=False, which would run the file's code
            raise ValueError(
                f"{str(path)!r} is not a tensor file that loads without unpickling code "
                f"(torch.load(weights_only=True) refused it: {type(exc).__name__}). Save plain "
                "tensors: torch.save({'X': X, 'y': y}, path) or np.save(..., allow_pickle=False)."
            ) from None
        if isinstance(obj, torch.Tensor):
            x = obj.numpy()
        elif isinstance(obj, dict) and "X" in obj:
            x = torch.as_tensor(obj["X"]).numpy()
            if "y" in obj:
                y = torch.as_tensor(obj["y"]).numpy()
        else:
            raise ValueError(
                f"{str(path)!r} must hold a tensor or a dict with key 'X' (and optionally 'y')."
            )
    else:
        raise ValueError(f"`path` must end in .npy, .csv or .pt; got {path.suffix!r}.")
    if label is not None and suffix != ".csv":
        raise ValueError(
            "`label` names a column of a .csv file; use `labels_path` for other formats."
        )
    x = _check_array(np.asarray(x), path, "features")
    if labels_path is not None:
        y_x, _, _ = load_arrays(labels_path)
        y = (
            y_x.numpy().reshape(len(y_x), -1).squeeze(1)
            if y_x.ndim > 1 and y_x.shape[1] == 1
            else y_x.numpy()
        )
    if y is not None:
        y = _check_array(np.asarray(y), path, "labels")
        if y.shape[0] != x.shape[0]:
            raise ValueError(
                f"labels must have one entry per row: {x.shape[0]} rows of features but "
                f"{y.shape[0]} labels."
            )
    if not names:
        names = [f"x{i}" for i in range(int(np.prod(x.shape[1:])) if x.ndim > 1 else 1)]
    x_t = torch.as_tensor(x, dtype=torch.float32)
    y_t = None
    if y is not None:
        y_t = torch.as_tensor(y)
        if y_t.is_floating_point() and torch.equal(y_t, y_t.round()):
            y_t = y_t.long()
    return x_t, y_t, names


def _read_csv(
    path: Path, label: str | int | None
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        raise ValueError(f"{str(path)!r} is empty.")

    def numeric(row: list[str]) -> bool:
        try:
            [float(v) for v in row]
        except ValueError:
            return False
        return True

    header = None if numeric(rows[0]) else rows[0]
    body = rows[1:] if header is not None else rows
    width = len(rows[0])
    for i, row in enumerate(body):
        if len(row) != width:
            raise ValueError(
                f"{str(path)!r} line {i + 1 + (header is not None)} has {len(row)} fields; "
                f"expected {width}."
            )
    try:
        data = np.array([[float(v) for v in row] for row in body], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{str(path)!r} must hold numbers only (after the header): {exc}") from exc
    names = list(header) if header is not None else [f"x{i}" for i in range(width)]
    y = None
    if label is not None:
        if isinstance(label, str):
            if label not in names:
                raise ValueError(
                    f"`label` must be a column of {str(path)!r}; got {label!r}. Columns: "
                    + ", ".join(names[:20])
                    + "."
                    + did_you_mean(label, names)
                )
            col = names.index(label)
        else:
            col = check_int("label", label, min_value=-width, max_value=width - 1) % width
        y = data[:, col]
        data = np.delete(data, col, axis=1)
        del names[col]
    return data, y, names
