"""What stages share: the config, output folders, datasets and the trained reference models.

``ctx.trained(key, seed)`` returns a reference model trained on its dataset, training it
once per study (cached in memory and on disk as safetensors, so a resumed run and later
stages reuse the same weights).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pellucid._io import atomic_write, atomic_write_json
from pellucid._validation import did_you_mean
from pellucid.data import Dataset, load_dataset
from pellucid.models import build_model
from pellucid.study.errors import ConfigError
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
    """Raise ConfigError unless every key names a reference model (for ``Stage.validate``)."""
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
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    _datasets: dict[tuple[str, str], Dataset] = field(default_factory=dict)
    _models: dict[tuple[str, int], tuple[nn.Module, dict[str, Any]]] = field(default_factory=dict)

    @property
    def models_dir(self) -> Path:
        return self.out_dir / "models"

    def log(self, message: str) -> None:
        """One line of progress on stderr (quiet when progress is False)."""
        if self.progress is not False:
            print(f"[pellucid study] {message}", file=sys.stderr, flush=True)

    def dataset(self, name: str, *, model: str | None = None, seed: int = 0) -> Dataset:
        """The embedded dataset ``name`` (split with ``seed``), shaped for ``model``."""
        key = (name, f"{model}:{seed}")
        if key not in self._datasets:
            ds = load_dataset(name, seed=seed)
            self._datasets[key] = _as_sequence(ds, model or "")
        return self._datasets[key]

    def spec(self, key: str) -> ModelSpec:
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
        epochs = spec.quick_epochs if self.quick else spec.epochs
        tag = f"{key.replace('/', '__')}__seed{seed}__e{epochs}"
        weights = self.models_dir / f"{tag}.safetensors"
        meta = self.models_dir / f"{tag}.json"
        model = spec.build(ds, seed)
        if weights.is_file() and meta.is_file():
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(weights)))
            model.eval()
            record = json.loads(meta.read_text())
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
            )
            from pellucid.training import evaluate

            record = {
                "history": history.to_dict(),
                "test": evaluate(model, ds.test),
                "seconds": history.seconds,
                "parameters": sum(p.numel() for p in model.parameters()),
                "epochs": epochs,
            }
            from safetensors.torch import save_file

            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            atomic_write(weights, lambda tmp: save_file(state, tmp))
            atomic_write_json(meta, record)
        self._models[(key, seed)] = (model, record)
        return model, ds, record

    def timer(self) -> _Timer:
        """``with ctx.timer() as t: ...; t.seconds``."""
        return _Timer()


class _Timer:
    seconds: float = 0.0

    def __enter__(self) -> _Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
