"""Per-example results of the study, kept compactly for the explorer.

The interpretability stage scores every method on every model variant; its JSON results keep
means per seed. For the first seed it also keeps, per model, everything needed to look at
single examples: the inputs and labels, each variant's predictions, and per variant and
method the attributions, the per-example metrics and the deletion/insertion curves. They go
to one safetensors file per model (float32, no pickle), ``results/examples/<model>.safetensors``;
the stage's JSON result names the file and its SHA-256 so a reader can tell it belongs to
that result. Tensor names::

    inputs              (N, *shape)   the explained inputs, as the model saw them
    labels              (N,)          true classes
    raw                 (N, *shape)   the inputs before standardization (for display)
    <variant>/predictions           (N,)
    <variant>/<method>/attributions (N, *shape)
    <variant>/<method>/<metric>     (N,)   deletion_auc, faithfulness, ...
    <variant>/<method>/deletion     (N, P) deletion curve scores; fractions in
    <variant>/<method>/insertion    (N, P) ``<variant>/<method>/fractions`` (P,)

Metadata ``pellucid.examples`` (JSON): format version, model key, seed, input kind,
feature and class names, and the variants and methods in order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from pellucid._io import atomic_write

__all__ = ["EXAMPLES_FORMAT", "ExampleRecorder", "file_sha256"]

EXAMPLES_FORMAT = "pellucid.study.examples"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ExampleRecorder:
    """Collects one model's per-example results for one seed, then writes them once.

    Args:
        key: the reference model key (``dataset/model``).
        seed: the seed whose examples are kept.
        inputs: the explained inputs ``(N, *shape)``.
        labels: their true classes ``(N,)``.
        feature_names: one name per feature (tabular) or per pixel (images).
        class_names: the class labels.
        mean, std: the standardization, to show raw input values.
    """

    def __init__(
        self,
        key: str,
        seed: int,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        *,
        feature_names: list[str],
        class_names: list[str],
        mean: torch.Tensor,
        std: torch.Tensor,
    ) -> None:
        x = inputs.detach().float().cpu()
        self.key = key
        self.seed = seed
        self.kind = {4: "image", 2: "tabular"}.get(x.ndim, "sequence")
        self.tensors: dict[str, torch.Tensor] = {
            "inputs": x.contiguous(),
            "labels": labels.detach().long().cpu().contiguous(),
            "raw": (x * std.float() + mean.float()).contiguous(),
        }
        self.meta: dict[str, Any] = {
            "format": EXAMPLES_FORMAT,
            "version": 1,
            "model": key,
            "seed": seed,
            "kind": self.kind,
            "shape": list(x.shape[1:]),
            "feature_names": [str(n) for n in feature_names],
            "class_names": [str(n) for n in class_names],
            "variants": [],
            "methods": [],
        }

    def variant(self, name: str, predictions: torch.Tensor) -> None:
        """Record a model variant and its predicted classes."""
        if name not in self.meta["variants"]:
            self.meta["variants"].append(name)
        self.tensors[f"{name}/predictions"] = predictions.detach().long().cpu().contiguous()

    def method(
        self,
        variant: str,
        method: str,
        attributions: torch.Tensor,
        metrics: dict[str, torch.Tensor],
        curves: dict[str, Any],
    ) -> None:
        """Record one method's attributions, per-example metrics and curves on a variant."""
        if method not in self.meta["methods"]:
            self.meta["methods"].append(method)
        prefix = f"{variant}/{method}/"
        self.tensors[prefix + "attributions"] = attributions.detach().float().cpu().contiguous()
        for name, values in metrics.items():
            self.tensors[prefix + name] = values.detach().float().cpu().reshape(-1).contiguous()
        for name, curve in curves.items():
            self.tensors[prefix + name] = curve.scores.detach().float().cpu().contiguous()
            self.tensors[prefix + "fractions"] = curve.fractions.detach().float().cpu()

    def save(self, folder: Path) -> dict[str, str]:
        """Write ``folder/<model>.safetensors`` atomically; returns ``{"file", "sha256"}``
        with the file name relative to ``folder``'s parent (the results folder)."""
        from safetensors.torch import save_file

        name = self.key.replace("/", "__") + ".safetensors"
        path = folder / name
        metadata = {"pellucid.examples": json.dumps(self.meta)}
        tensors = dict(self.tensors)
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
        return {"file": f"{folder.name}/{name}", "sha256": file_sha256(path)}
