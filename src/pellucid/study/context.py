"""What stages share: the config, output folders, datasets and the trained reference models.

``ctx.trained(key, seed)`` returns a reference model trained on its dataset, training it
once per study (cached in memory and on disk as safetensors, so a resumed run and later
stages reuse the same weights).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pellucid._io import jsonable
from pellucid._validation import did_you_mean
from pellucid.data import Dataset, load_dataset
from pellucid.models import build_model
from pellucid.study._cache import read_model, write_model
from pellucid.study.errors import ConfigError
from pellucid.study.user_models import USER_DATA, UserModel, parse_user_models
from pellucid.training import History, fit

__all__ = ["REFERENCE_MODELS", "ModelSpec", "StudyContext", "check_model_keys"]


@dataclass(frozen=True)
class ModelSpec:
    """A reference model on a dataset, with the recipe that trains it."""

    dataset: str
    model: str
    kwargs: dict[str, Any]
    epochs: int
    quick_epochs: int
    lr: float = 1e-3
    batch_size: int = 64

    def build(self, ds: Dataset, seed: int) -> nn.Module:
        kwargs = dict(self.kwargs)
        if self.model in ("MLP", "DeepPlainNet"):
            kwargs.setdefault("in_features", int(torch.tensor(ds.input_shape).prod()))
        elif self.model in ("SequenceRNN", "TinyTransformer"):
            kwargs.setdefault("input_size", ds.input_shape[-1])
        elif self.model in ("SmallCNN", "TinyResNet"):
            kwargs.setdefault("in_channels", ds.input_shape[0])
        kwargs.setdefault("n_classes", ds.n_classes)
        return build_model(self.model, seed=seed, **kwargs)


#: The reference models of the study, by key ``dataset/model``.
REFERENCE_MODELS: dict[str, ModelSpec] = {
    "digits/SmallCNN": ModelSpec("digits", "SmallCNN", {}, epochs=12, quick_epochs=2),
    "digits/TinyResNet": ModelSpec("digits", "TinyResNet", {"width": 16}, epochs=8, quick_epochs=1),
    "digits/TinyTransformer": ModelSpec(
        "digits",
        "TinyTransformer",
        {"d_model": 32, "n_heads": 4, "n_layers": 2},
        epochs=20,
        quick_epochs=1,
        lr=3e-3,
    ),
    "breast_cancer/MLP": ModelSpec(
        "breast_cancer", "MLP", {"hidden": (64, 32)}, epochs=40, quick_epochs=5
    ),
    "wine/MLP": ModelSpec("wine", "MLP", {"hidden": (32, 16)}, epochs=60, quick_epochs=5),
}


def check_model_keys(where: str, keys: list[str]) -> None:
    """Raise ConfigError unless every key names a reference model (for ``Stage.validate``).

    Raises:
        ConfigError: a key does not name a reference model (with the closest suggestion).
    """
    for key in keys:
        if key not in REFERENCE_MODELS:
            raise ConfigError(
                f"`{where}` entries must be one of {', '.join(REFERENCE_MODELS)}; got {key!r}."
                + did_you_mean(str(key), REFERENCE_MODELS)
            )


def _as_sequence(ds: Dataset, model: str) -> Dataset:
    """Digits images become sequences of 8 rows of 8 pixels for the sequence models."""
    if model not in ("SequenceRNN", "TinyTransformer") or len(ds.input_shape) != 3:
        return ds
    return Dataset(
        name=ds.name,
        X_train=ds.X_train.flatten(1, 2),
        y_train=ds.y_train,
        X_test=ds.X_test.flatten(1, 2),
        y_test=ds.y_test,
        feature_names=ds.feature_names,
        class_names=ds.class_names,
        task=ds.task,
        mean=ds.mean,
        std=ds.std,
    )


@dataclass
class StudyContext:
    """Shared state of one study run."""

    out_dir: Path
    seeds: list[int]
    quick: bool = False
    progress: bool | None = None
    config: dict[str, Any] = field(default_factory=dict)
    resume: bool = True  # False: retrain models even when a cached copy exists
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    _datasets: dict[tuple[str, str], Dataset] = field(default_factory=dict)
    _models: dict[tuple[str, int], tuple[nn.Module, dict[str, Any]]] = field(default_factory=dict)
    _user: dict[str, UserModel] | None = None

    @property
    def models_dir(self) -> Path:
        return self.out_dir / "models"

    def log(self, message: str) -> None:
        """One line of progress on stderr (quiet when progress is False)."""
        if self.progress is not False:
            print(f"[pellucid study] {message}", file=sys.stderr, flush=True)

    @property
    def user_models(self) -> dict[str, UserModel]:
        """The ``[[training.user_models]]`` entries of the config, by name."""
        if self._user is None:
            entries = self.config.get("training", {}).get("user_models", [])
            self._user = {m.name: m for m in parse_user_models(entries)}
        return self._user

    def with_user_models(self, keys: list[str], *, input_ndim: int | None = None) -> list[str]:
        """``keys`` followed by the user models' names (those whose inputs have
        ``input_ndim`` dimensions, batch included, when given)."""
        extra = [
            name
            for name, user in self.user_models.items()
            if name not in keys
            and (input_ndim is None or self.dataset(user.dataset).X_test.ndim == input_ndim)
        ]
        return list(keys) + extra

    def dataset(self, name: str, *, model: str | None = None, seed: int = 0) -> Dataset:
        """The embedded dataset ``name`` (split with ``seed``), shaped for ``model``; a user
        model's data (``"user:NAME"``) keeps the user's own split whatever the seed."""
        if name.startswith(USER_DATA):
            key = (name, "")
            if key not in self._datasets:
                from pellucid.sources import load_data

                self._datasets[key] = load_data(self.user_models[name[len(USER_DATA) :]].data)
            return self._datasets[key]
        key = (name, f"{model}:{seed}")
        if key not in self._datasets:
            ds = load_dataset(name, seed=seed)
            self._datasets[key] = _as_sequence(ds, model or "")
        return self._datasets[key]

    def spec(self, key: str) -> Any:
        """The recipe of ``key``: a reference :class:`ModelSpec` or a :class:`UserModel`.

        Raises:
            ValueError: `key` is neither a user model nor a reference model.
        """
        if key in self.user_models:
            return self.user_models[key]
        if key not in REFERENCE_MODELS:
            raise ValueError(
                f"`model` must be one of {', '.join(REFERENCE_MODELS)}; got {key!r}."
                + did_you_mean(key, REFERENCE_MODELS)
            )
        return REFERENCE_MODELS[key]

    def trained(self, key: str, seed: int) -> tuple[nn.Module, Dataset, dict[str, Any]]:
        """The reference model ``key`` trained with ``seed``: ``(model, dataset, record)``.

        ``record`` has the training history, test metrics, seconds and parameter count. The
        returned model is the cached instance: deep-copy it before changing it.
        """
        spec = self.spec(key)
        ds = self.dataset(spec.dataset, model=spec.model, seed=seed)
        if (key, seed) in self._models:
            model, record = self._models[(key, seed)]
            return model, ds, record
        if isinstance(spec, UserModel) and spec.pretrained:
            self._models[(key, seed)] = _pretrained(spec, ds)
            return self._models[(key, seed)][0], ds, self._models[(key, seed)][1]
        epochs = spec.quick_epochs if self.quick else spec.epochs
        tag = f"{key.replace('/', '__')}__seed{seed}__e{epochs}"
        if isinstance(spec, UserModel):  # a user's name may hold anything: keep it safe;
            # the recipe's digest keeps weights trained under other kwargs/data/lr apart
            # and the files' fingerprint keeps weights trained on an older file apart
            digest = hashlib.sha1((repr(spec) + spec.fingerprint()).encode()).hexdigest()[:10]
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
            tag = f"user__{safe}__{digest}__seed{seed}__e{epochs}"
        weights = self.models_dir / f"{tag}.safetensors"
        meta = self.models_dir / f"{tag}.json"
        model = spec.build(ds, seed)
        cached = read_model(weights, meta) if self.resume else None
        if cached is not None:
            model.load_state_dict(cached[0])
            model.eval()
            record = cached[1]
        else:
            self.log(f"training {key} (seed {seed}, {epochs} epochs)")
            loss = "cross_entropy" if ds.task == "classification" else "mse"
            history: History = fit(
                model,
                ds.train,
                epochs=epochs,
                lr=spec.lr,
                batch_size=spec.batch_size,
                seed=seed,
                loss=loss,
                validation=ds.test,
                progress=False,
                optimizer=spec.optimizer if isinstance(spec, UserModel) else "adam",
            )
            from pellucid.training import evaluate

            record = {
                "history": history.to_dict(),
                "test": evaluate(model, ds.test),
                "seconds": history.seconds,
                "parameters": sum(p.numel() for p in model.parameters()),
                "epochs": epochs,
            }
            write_model(weights, meta, model.state_dict(), record)
            record = json.loads(json.dumps(jsonable(record)))  # as a resumed run reads it
        self._models[(key, seed)] = (model, record)
        return model, ds, record

    def timer(self) -> _Timer:
        """``with ctx.timer() as t: ...; t.seconds``."""
        return _Timer()


def _pretrained(spec: UserModel, ds: Dataset) -> tuple[nn.Module, dict[str, Any]]:
    """A user's model with its own weights, evaluated on its test split (not trained)."""
    from pellucid.training import evaluate

    model = spec.load()
    return model, {
        "history": History().to_dict(),
        "test": evaluate(model, ds.test),
        "seconds": 0.0,
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": 0,
    }


class _Timer:
    seconds: float = 0.0

    def __enter__(self) -> _Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
