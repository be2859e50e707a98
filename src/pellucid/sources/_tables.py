"""CSV and Parquet tables: a named target, one-hot categorical columns kept as one feature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pellucid.data import Dataset
from pellucid.sources._arrays import check_column, from_arrays
from pellucid.sources.models import SourceError
from pellucid.sources.spec import DataSpec

__all__ = ["load_table"]


def _read(path: str, kind: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise SourceError(f"`data.path` must be an existing {kind} file; {path!r} does not exist.")
    try:
        import pandas as pd
    except ImportError as exc:
        raise SourceError(
            f"Reading {path!r} needs pandas: pip install 'pellucid[tabular]'."
        ) from exc
    try:
        if kind == "parquet":
            return pd.read_parquet(file)
        return pd.read_csv(file)
    except ImportError as exc:
        raise SourceError(
            f"Reading {path!r} needs pyarrow: pip install 'pellucid[tabular]'."
        ) from exc
    except (ValueError, OSError) as exc:
        raise SourceError(
            f"{path!r}: expected a {kind} table; it could not be read ({exc})."
        ) from exc


def _check_frame(frame: Any, spec: DataSpec, path: str) -> None:
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if spec.target is None:
        raise SourceError(
            f"`data.target` must name the label column of {path!r}; columns: "
            + ", ".join(columns[:20])
            + "."
        )
    check_column(spec.target, columns, path, "data.target")
    for name in spec.categorical:
        check_column(name, columns, path, "data.categorical")
    if spec.target in spec.categorical:
        raise SourceError(f"`data.categorical` must not list the target column {spec.target!r}.")
    for name in columns:
        missing = frame[name].isna().to_numpy()
        if missing.any():
            raise SourceError(
                f"{path!r}: column {name!r} has {int(missing.sum())} missing value(s), the first "
                f"in data row {int(np.flatnonzero(missing)[0]) + 1}; impute or drop them first."
            )
        if (
            name != spec.target
            and name not in spec.categorical
            and frame[name].dtype.kind not in "biuf"
        ):
            example = frame[name].iloc[0]
            raise SourceError(
                f"{path!r}: column {name!r} is not numeric (e.g. {example!r}); list it in "
                "`data.categorical` to one-hot encode it, or drop it."
            )


def load_table(spec: DataSpec) -> Dataset:
    """Read a CSV/Parquet table (and optional test table) into a :class:`Dataset`."""
    frames = [_read(spec.path, spec.kind)]
    if spec.test_path:
        frames.append(_read(spec.test_path, spec.kind))
    for frame, path in zip(frames, [spec.path, spec.test_path], strict=False):
        _check_frame(frame, spec, str(path))
    if len(frames) == 2 and list(frames[1].columns) != list(frames[0].columns):
        raise SourceError(
            f"{spec.test_path!r} must have the columns of {spec.path!r} in the same order; got "
            f"{list(frames[1].columns)[:10]} vs {list(frames[0].columns)[:10]}."
        )
    both = frames[0] if len(frames) == 1 else __import__("pandas").concat(frames)
    features = [c for c in frames[0].columns if c != spec.target]
    blocks, names, groups, ids = [], [], [], []
    for group, column in enumerate(features):
        groups.append(column)
        values = both[column]
        if column in spec.categorical:
            levels = sorted({str(v) for v in values})
            codes = np.searchsorted(levels, values.astype(str).to_numpy())
            blocks.append(np.eye(len(levels))[codes])
            names += [f"{column}={level}" for level in levels]
            ids += [group] * len(levels)
        else:
            blocks.append(values.to_numpy(dtype=np.float64)[:, None])
            names.append(column)
            ids.append(group)
    x = np.concatenate(blocks, axis=1)
    target = both[spec.target]
    class_names = None
    task = spec.task
    if task == "auto":
        task = "regression" if target.dtype.kind == "f" else "classification"
    if task == "classification":
        labels = (
            target.astype(str).to_numpy() if target.dtype.kind not in "biu" else target.to_numpy()
        )
        values = np.unique(labels)
        class_names = [str(v) for v in values]
        y = np.searchsorted(values, labels)
    else:
        if target.dtype.kind not in "biuf":
            raise SourceError(
                f"{spec.path!r}: the regression target {spec.target!r} must be numeric; got "
                f"dtype {target.dtype}."
            )
        y = target.to_numpy(dtype=np.float64)
    from dataclasses import replace

    spec = replace(spec, task=task)
    n = len(frames[0])
    train = (x[:n], y[:n])
    test = (x[n:], y[n:]) if len(frames) == 2 else None
    grouped = len(names) != len(groups)
    return from_arrays(
        spec,
        train,
        test,
        feature_names=names,
        groups=groups if grouped else None,
        group_ids=np.asarray(ids) if grouped else None,
        class_names=class_names,
    )
