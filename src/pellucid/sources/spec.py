"""The one parsed description of a user's model and data.

The CLI flags (``--model``, ``--data`` and their companions) and the study's TOML entries
(``[[training.user_models]]``) both produce a :class:`ModelSpec` and a :class:`DataSpec`;
the loaders take only these, so every entry point resolves a model and data the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pellucid._validation import did_you_mean
from pellucid.sources.models import SourceError

__all__ = ["DATA_KINDS", "DataSpec", "ModelSpec", "data_kind", "fingerprint"]

DATA_KINDS = ("csv", "parquet", "arrays", "image_folder", "dataset", "embedded")


def data_kind(path: str) -> str:
    """The data kind a path implies: by suffix, a folder, an import path or a dataset name.

    Raises:
        SourceError: the path's suffix is not a known data format.
    """
    from pellucid.data import DATASETS

    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".npz", ".npy"):
        return "arrays"
    if Path(path).is_dir():
        return "image_folder"
    if path in DATASETS:
        return "embedded"
    if ":" in path and not Path(path).exists():
        return "dataset"
    raise SourceError(
        f"`data` {path!r}: expected a .csv, .parquet, .npz or .npy file, a folder of class "
        "sub-folders of images, an import path 'package.module:dataset' or an embedded "
        "dataset name; "
        + (
            "the file does not exist."
            if not Path(path).exists()
            else f"got {suffix or 'no'} suffix."
        )
    )


def fingerprint(*sources: str | None) -> str:
    """What the files behind ``sources`` look like now: for each file its size and
    modification time, for a folder those of every file in it, for a factory
    ``"pkg.mod:fn"`` its module's file (names that are neither, such as embedded datasets,
    stand for themselves). A cache keyed on it is recomputed when the user edits a source.

    Example:
        >>> fingerprint("iris") == fingerprint("iris") != fingerprint("wine")
        True
    """
    import hashlib

    parts: list[str] = []
    for source in sources:
        if source:
            parts += _stats(source)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _stats(source: str) -> list[str]:
    path = Path(source)
    if path.is_file():
        stat = path.stat()
        return [f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"]
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        return [f"{path.resolve()}/"] + [
            f"{f.relative_to(path)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files
        ]
    if ":" in source:  # a factory: the module that defines it
        import importlib.util

        try:
            spec = importlib.util.find_spec(source.split(":", 1)[0])
        except (ImportError, ValueError):
            spec = None
        origin = getattr(spec, "origin", None)
        if origin and Path(origin).is_file():
            return [source, *_stats(origin)]
    return [source]


def _take(cls: type, entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    names = [f.name for f in fields(cls)]
    unknown = [k for k in entry if k not in names]
    if unknown:
        raise SourceError(
            f"{where}: unknown key {unknown[0]!r}; known keys are {', '.join(names)}."
            + did_you_mean(unknown[0], names)
        )
    return dict(entry)


@dataclass(frozen=True)
class DataSpec:
    """Where a user's data is and how to read it.

    Attributes:
        path: the file, folder, import path ``"pkg.mod:make_dataset"`` or embedded name.
        kind: one of ``csv``, ``parquet``, ``arrays`` (``.npz`` with ``X``/``y``, or
            ``.npy``), ``image_folder``, ``dataset``, ``embedded``; inferred when empty.
        test_path: a second file/folder holding the user's own test split (else a
            deterministic stratified split of ``path``).
        target: the label column of a table.
        categorical: table columns to one-hot encode (each reported as one feature).
        labels: a ``.npy`` file of labels for an ``.npy`` features file.
        size: image side (or ``[height, width]``) after resizing.
        channels: 1 (grayscale) or 3 (RGB) for images.
        mean, std: normalisation per image channel (or one value); default none.
        standardize: standardise numeric columns/channels on the training split.
        kwargs, test_kwargs: keyword arguments of a dataset import path (the second call,
            with ``test_kwargs``, gives the test split).
        task: ``auto``, ``classification`` or ``regression``.
        test_size: held-out fraction when splitting one file.
        seed: the split's random state.
        name: a display name (default: the file's stem).
    """

    path: str
    kind: str = ""
    test_path: str | None = None
    target: str | None = None
    categorical: tuple[str, ...] = ()
    labels: str | None = None
    size: int | tuple[int, int] | None = None
    channels: int = 3
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    standardize: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    test_kwargs: dict[str, Any] | None = None
    task: str = "auto"
    test_size: float = 0.25
    seed: int = 0
    name: str = ""

    @classmethod
    def from_mapping(cls, entry: Mapping[str, Any], *, where: str = "`data`") -> DataSpec:
        """Build from a TOML table / dict (``path`` required; unknown keys refused).

        Raises:
            SourceError: `entry` is not a table with a string `path`, has unknown keys, or an
                unknown `kind`.
        """
        if not isinstance(entry, Mapping):
            raise SourceError(f"{where} must be a table with a `path`; got {entry!r}.")
        values = _take(cls, entry, where)
        if "path" not in values or not isinstance(values["path"], str):
            raise SourceError(f"{where} must have a `path` (a string); got {dict(entry)!r}.")
        for key in ("categorical", "mean", "std"):
            if values.get(key) is not None:
                raw = values[key]
                values[key] = tuple([raw] if isinstance(raw, str | int | float) else raw)
        if isinstance(values.get("size"), list):
            values["size"] = tuple(values["size"])
        return cls(**values).resolved()

    def resolved(self, base: str | os.PathLike[str] | None = None) -> DataSpec:
        """This spec with ``kind`` inferred and relative paths taken from ``base``.

        Raises:
            SourceError: `kind` (given or inferred from the path) is not a known data kind.
        """
        from dataclasses import replace

        spec = self
        if base is not None:
            fix: dict[str, Any] = {}
            for key in ("path", "test_path", "labels"):
                value = getattr(spec, key)
                if value and not Path(value).is_absolute() and (Path(base) / value).exists():
                    fix[key] = str(Path(base) / value)
            spec = replace(spec, **fix)
        kind = spec.kind or data_kind(spec.path)
        if kind not in DATA_KINDS:
            raise SourceError(
                f"`data.kind` must be one of {', '.join(DATA_KINDS)}; got {kind!r}."
                + did_you_mean(kind, DATA_KINDS)
            )
        return replace(spec, kind=kind)

    def fingerprint(self) -> str:
        """:func:`fingerprint` of the files this spec reads (data, test split, labels)."""
        return fingerprint(self.path, self.test_path, self.labels)

    def describe(self) -> str:
        """One line for logs and the report."""
        text = f"{self.kind} {self.path}"
        if self.target:
            text += f" (target {self.target!r})"
        if self.test_path:
            text += f", test split {self.test_path}"
        return text


@dataclass(frozen=True)
class ModelSpec:
    """How to build a user's model.

    Attributes:
        source: ``"package.module:factory"``, a ``.pt2`` / TorchScript file, or a
            reference key (``"breast_cancer/MLP"``).
        kwargs: keyword arguments of the factory.
        weights: ``.safetensors`` or ``torch.save`` state_dict for the factory's model.
        weights_key: the checkpoint entry holding the ``state_dict``.
        name: a display name.
    """

    source: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    weights_key: str | None = None
    name: str = ""

    @property
    def is_factory(self) -> bool:
        """True for an import path (the model can be rebuilt and retrained)."""
        return ":" in self.source and not Path(self.source).exists()

    def load(self) -> Any:
        """The model, in eval mode (see :func:`pellucid.sources.load_model`)."""
        from pellucid.sources.models import load_model

        return load_model(
            self.source, kwargs=self.kwargs, weights=self.weights, weights_key=self.weights_key
        )

    def build(self) -> Any:
        """A fresh model from the factory, without weights (for training from scratch).

        Raises:
            SourceError: the spec is not a factory, or the factory does not return an nn.Module.
        """
        from pellucid.sources.models import load_model

        if not self.is_factory:
            raise SourceError(
                f"`model` {self.source!r} is a file: it cannot be rebuilt for training. "
                "Give a factory 'package.module:function'."
            )
        return load_model(self.source, kwargs=self.kwargs)

    def fingerprint(self) -> str:
        """:func:`fingerprint` of the model's files (factory module or model file, weights)."""
        return fingerprint(self.source, self.weights)

    def describe(self) -> str:
        """One line for logs and the report."""
        text = self.source + (f" with weights {self.weights}" if self.weights else "")
        return text
