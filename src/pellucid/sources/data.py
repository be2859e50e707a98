"""Data a user brings, as a :class:`pellucid.data.Dataset` (train/test tensors and names).

* tables (CSV, Parquet through pandas/pyarrow: ``pip install 'pellucid[tabular]'``) with a
  named target column; ``categorical`` columns are one-hot encoded in the model's input
  and reported as one feature each (``feature_groups`` / ``feature_mask``); missing
  values and undeclared non-numeric columns are refused with the column named;
* arrays: ``.npz`` with ``X`` and ``y``, or ``.npy`` features (+ ``labels``), no pickle;
* images: a folder of class sub-folders (:mod:`pellucid.sources._images`);
* any ``torch.utils.data.Dataset`` from an import path.

One file is split deterministically (stratified for classification); a ``test_path``
gives the user's own split.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pellucid._validation import did_you_mean
from pellucid.data import Dataset, load_dataset, stratified_split
from pellucid.sources.models import SourceError, import_object
from pellucid.sources.spec import DataSpec

__all__ = ["load_data"]


def load_data(spec: DataSpec | Mapping[str, Any] | str) -> Dataset:
    """Load a user's data as a train/test :class:`~pellucid.data.Dataset`.

    Args:
        spec: a :class:`DataSpec`, a dict of its fields (as in the study's TOML), or a
            path (kind inferred).

    Raises:
        SourceError: a missing file, a wrong column, a non-numeric column, missing values,
            wrong shapes; the message names the file and the fix.

    Example:
        >>> ds = load_data({"path": "iris", "seed": 1})
        >>> ds.n_classes, ds.input_shape
        (3, (4,))
    """
    if isinstance(spec, str):
        spec = DataSpec(path=spec).resolved()
    elif not isinstance(spec, DataSpec):
        spec = DataSpec.from_mapping(spec)
    else:
        spec = spec.resolved()
    if spec.kind == "embedded":
        ds = load_dataset(spec.path, seed=spec.seed, test_size=spec.test_size)
        ds.source = f"embedded dataset {spec.path}"
        return ds
    if spec.kind in ("csv", "parquet"):
        from pellucid.sources._tables import load_table

        return load_table(spec)
    if spec.kind == "image_folder":
        from pellucid.sources._images import load_image_folder

        return load_image_folder(spec)
    if spec.kind == "arrays":
        train = _arrays(spec.path, spec.labels)
        test = _arrays(spec.test_path, None) if spec.test_path else None
    else:
        train = _materialize(spec.path, spec.kwargs)
        test = _materialize(spec.path, spec.test_kwargs) if spec.test_kwargs is not None else None
        if spec.test_path:
            test = _materialize(spec.test_path, spec.kwargs)
    return from_arrays(spec, train, test)


def _existing(path: str | None, what: str) -> Path:
    file = Path(str(path))
    if not file.is_file():
        raise SourceError(f"`{what}` must be an existing file; {str(file)!r} does not exist.")
    return file


def _npy(file: Path) -> np.ndarray:
    try:
        return np.load(file, allow_pickle=False)
    except ValueError as exc:
        raise SourceError(
            f"{str(file)!r}: expected a numeric .npy/.npz array; it holds Python objects "
            "(refused: no pickle). Save plain arrays with np.save/np.savez."
        ) from exc


def _arrays(path: str | None, labels: str | None) -> tuple[np.ndarray, np.ndarray]:
    file = _existing(path, "data.path")
    if file.suffix.lower() == ".npz":
        with np.load(file, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if "X" not in keys or "y" not in keys:
                raise SourceError(
                    f"{str(file)!r}: expected arrays named 'X' and 'y'; found {keys}. Save with "
                    "np.savez(path, X=features, y=labels)."
                )
            try:
                x, y = archive["X"], archive["y"]
            except ValueError as exc:
                raise SourceError(
                    f"{str(file)!r}: expected numeric arrays; found Python objects (refused: "
                    "no pickle)."
                ) from exc
    else:
        x = _npy(file)
        if labels is None:
            raise SourceError(
                f"{str(file)!r} holds features only; give `labels` (a .npy file of one label "
                "per row), or use an .npz file with 'X' and 'y'."
            )
        y = _npy(_existing(labels, "data.labels"))
    return x, y


def _materialize(path: str, kwargs: Mapping[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
    obj = import_object(path, name="data")
    if isinstance(obj, type) or (callable(obj) and not hasattr(type(obj), "__getitem__")):
        try:
            obj = obj(**dict(kwargs or {}))
        except TypeError as exc:
            raise SourceError(f"`data` {path!r} could not be called with {kwargs}: {exc}") from exc
    if not hasattr(obj, "__getitem__") or not hasattr(obj, "__len__"):
        raise SourceError(
            f"`data` {path!r} must be (or return) a torch Dataset with __len__ and "
            f"__getitem__; got {type(obj).__name__}."
        )
    xs, ys = [], []
    for i in range(len(obj)):
        item = obj[i]
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise SourceError(
                f"`data` {path!r}: item {i} must be a pair (input, label); got "
                f"{type(item).__name__}."
            )
        xs.append(torch.as_tensor(item[0]))
        ys.append(torch.as_tensor(item[1]))
    if not xs:
        raise SourceError(f"`data` {path!r} is empty.")
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise SourceError(
            f"`data` {path!r}: every input must have the same shape; found {sorted(shapes)[:3]}."
        )
    return torch.stack(xs).numpy(), torch.stack(ys).numpy()


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
