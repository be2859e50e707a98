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

from pellucid.data import Dataset, load_dataset
from pellucid.sources._arrays import from_arrays
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
