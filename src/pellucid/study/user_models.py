"""The user's own models in the study: ``[[training.user_models]]`` entries.

Each entry names a model (a factory ``"pkg.mod:make_net"`` with ``kwargs`` and optional
``weights``, or a ``.pt2``/TorchScript file) and its data (a table of
:class:`pellucid.sources.DataSpec` fields). A :class:`UserModel` has the attributes the
stages read from a reference model's recipe (``dataset``, ``model``, ``build``, ``epochs``,
``lr``, ``batch_size``), so every stage takes it where it takes a reference key; the
study context resolves it (:meth:`pellucid.study.context.StudyContext.trained`).

Example:
    >>> [m.name for m in parse_user_models([
    ...     {"name": "lin", "factory": "torch.nn:Linear",
    ...      "kwargs": {"in_features": 4, "out_features": 3}, "data": {"path": "iris"}}])]
    ['lin']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pellucid._validation import did_you_mean
from pellucid.data import Dataset
from pellucid.sources import DataSpec, ModelSpec, SourceError

__all__ = [
    "USER_DATA",
    "UserModel",
    "check_user_models",
    "parse_user_models",
    "sources_fingerprint",
]

#: Prefix of a user model's dataset name in the study context.
USER_DATA = "user:"

_KEYS = {
    "name": "the display name (used in the report and as the key in other stages)",
    "factory": "import path 'package.module:function' building the model",
    "model": "a .pt2 (torch.export) or TorchScript file, instead of a factory",
    "kwargs": "keyword arguments of the factory",
    "weights": ".safetensors or torch.save state_dict (omit to train from scratch)",
    "weights_key": "the checkpoint entry holding the state_dict",
    "data": "the data: a table of DataSpec fields (path, target, categorical, size, ...)",
    "epochs": "training epochs when training from scratch (default 10)",
    "quick_epochs": "epochs under --quick (default 2)",
    "lr": "learning rate (default 1e-3)",
    "batch_size": "batch size (default 64)",
    "optimizer": "adam, adamw or sgd (default adam)",
}


@dataclass(frozen=True)
class UserModel:
    """One user model and its data, with the recipe that (re)trains it."""

    name: str
    source: ModelSpec
    data: DataSpec
    epochs: int = 10
    quick_epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 64
    optimizer: str = "adam"

    @property
    def dataset(self) -> str:
        """The context's dataset name for this model's data."""
        return USER_DATA + self.name

    @property
    def model(self) -> str:
        """The model's name (the reference recipes' architecture name)."""
        return self.name

    @property
    def pretrained(self) -> bool:
        """True when the model comes with weights (or is a whole-model file)."""
        return self.source.weights is not None or not self.source.is_factory

    def build(self, ds: Dataset, seed: int) -> nn.Module:
        """A fresh model from the factory, its initial weights drawn from ``seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.source.build()

    def load(self) -> nn.Module:
        """The model with the user's weights (or the whole-model file)."""
        return self.source.load()

    def fingerprint(self) -> str:
        """The state of the files behind the model and its data (see
        :func:`pellucid.sources.spec.fingerprint`): editing any of them changes it."""
        return self.source.fingerprint() + self.data.fingerprint()

    def describe(self) -> str:
        """``name``: where the model and the data come from (for the report)."""
        return f"{self.name}: {self.source.describe()}; data {self.data.describe()}"


def _number(where: str, value: Any, kind: type, minimum: float) -> Any:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or (kind is int and not isinstance(value, int)) or not value >= minimum:
        raise SourceError(f"`{where}` must be a number >= {minimum}; got {value!r}.")
    return kind(value)


def _one(entry: Any, where: str) -> UserModel:
    if not isinstance(entry, dict):
        raise SourceError(f"`{where}` must be a table ([[training.user_models]]); got {entry!r}.")
    unknown = [k for k in entry if k not in _KEYS]
    if unknown:
        raise SourceError(
            f"`{where}`: unknown key {unknown[0]!r}."
            + did_you_mean(unknown[0], _KEYS)
            + " Keys: "
            + ", ".join(_KEYS)
            + "."
        )
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise SourceError(f"`{where}.name` must be a non-empty string without '/'; got {name!r}.")
    if ("factory" in entry) == ("model" in entry):
        raise SourceError(
            f"`{where}` ({name}) must have exactly one of `factory` ('pkg.mod:function') or "
            "`model` (a .pt2 or TorchScript file)."
        )
    kwargs = entry.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise SourceError(f"`{where}.kwargs` must be a table; got {kwargs!r}.")
    source = ModelSpec(
        source=str(entry.get("factory", entry.get("model"))),
        kwargs=dict(kwargs),
        weights=entry.get("weights"),
        weights_key=entry.get("weights_key"),
        name=name,
    )
    if "data" not in entry:
        raise SourceError(
            f'`{where}` ({name}) must have `data`, e.g. data = {{ path = "x.csv", target = "y" }}.'
        )
    data = DataSpec.from_mapping(entry["data"], where=f"`{where}.data`")
    optimizer = entry.get("optimizer", "adam")
    if optimizer not in ("adam", "adamw", "sgd"):
        raise SourceError(f"`{where}.optimizer` must be adam, adamw or sgd; got {optimizer!r}.")
    return UserModel(
        name=name,
        source=source,
        data=data,
        epochs=_number(f"{where}.epochs", entry.get("epochs", 10), int, 1),
        quick_epochs=_number(f"{where}.quick_epochs", entry.get("quick_epochs", 2), int, 1),
        lr=_number(f"{where}.lr", entry.get("lr", 1e-3), float, 1e-12),
        batch_size=_number(f"{where}.batch_size", entry.get("batch_size", 64), int, 1),
        optimizer=optimizer,
    )


def parse_user_models(entries: Any, where: str = "training.user_models") -> list[UserModel]:
    """Parse and check the entries (keys, types, files present); nothing is loaded yet.

    Raises:
        SourceError: `entries` is not a list of tables, an entry is invalid, or a name is
            used twice (a ValueError naming the entry).
    """
    if not isinstance(entries, list | tuple):
        raise SourceError(f"`{where}` must be a list of tables; got {entries!r}.")
    models = [_one(entry, f"{where}[{i}]") for i, entry in enumerate(entries)]
    names = [m.name for m in models]
    for name in names:
        if names.count(name) > 1:
            raise SourceError(f"`{where}`: the name {name!r} is used twice; names must be unique.")
    return models


def sources_fingerprint(config: dict[str, Any]) -> str:
    """The fingerprints of every ``[[training.user_models]]`` entry's files, in order ("" for
    a study of reference models only): part of every cache key of the study."""
    entries = config.get("training", {}).get("user_models", [])
    return "".join(m.fingerprint() for m in parse_user_models(entries)) if entries else ""


def check_user_models(config: dict[str, Any]) -> None:
    """Cross-check: every ``clipping.user_models`` name is a ``training.user_models`` entry.

    Raises:
        ConfigError: a ``[[training.user_models]]`` entry is invalid, or
            ``clipping.user_models`` names an unknown entry or a model file (clipping retrains,
            which needs a factory).
    """
    from pellucid.study.errors import ConfigError

    try:
        models = parse_user_models(config.get("training", {}).get("user_models", []))
    except SourceError as exc:
        raise ConfigError(str(exc)) from exc
    names = [m.name for m in models]
    for name in config.get("clipping", {}).get("user_models", []):
        if name not in names:
            raise ConfigError(
                f"`clipping.user_models` must name [[training.user_models]] entries; got "
                f"{name!r}." + did_you_mean(str(name), names) + f" Entries: {names or 'none'}."
            )
        if not next(m for m in models if m.name == name).source.is_factory:
            raise ConfigError(
                f"`clipping.user_models` entry {name!r} is a model file: clipping retrains "
                "the model, which needs a `factory`."
            )
