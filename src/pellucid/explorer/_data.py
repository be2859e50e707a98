"""What the explorer page shows, as plain data: one :class:`ExampleSet` per model/input set.

The page receives a *manifest* (everything small: names, labels, predictions, per-example
metrics of every variant and method, for the browser, the filters and the sortable table)
and, lazily, *pages* of examples (inputs, attributions and curves of ``page_size`` examples
at a time). Arrays in pages travel as base64 little-endian float32, exactly the saved values;
the page decodes them with a ``Float32Array``.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["DEFAULT_PAGE_SIZE", "ExampleSet", "encode_array"]

#: Display order of the usual per-example metrics (others follow in file order).
METRIC_ORDER = (
    "deletion_auc",
    "insertion_auc",
    "faithfulness",
    "completeness_gap",
    "max_sensitivity",
    "sparseness",
    "complexity",
    "agreement",
    "top_k_agreement",
)

#: Examples per lazily loaded page.
DEFAULT_PAGE_SIZE = 48


def encode_array(t: torch.Tensor) -> str:
    """Base64 of ``t`` as contiguous little-endian float32."""
    data = t.detach().to(torch.float32).contiguous().cpu().numpy().astype("<f4").tobytes()
    return base64.b64encode(data).decode("ascii")


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass
class ExampleSet:
    """The examples of one model (or one set of explained inputs) with everything per example.

    Attributes:
        title: shown in the page's selector (a model key or a folder name).
        kind: ``"image"``, ``"tabular"`` or ``"sequence"``.
        inputs: ``(N, *shape)`` the explained inputs.
        raw: inputs before standardization (tabular display), or None.
        labels: true classes ``(N,)`` or None when unknown.
        predictions: variant -> predicted classes ``(N,)``.
        feature_names: one per feature (may be empty).
        class_names: may be empty.
        variants, methods: in display order.
        attributions: ``(variant, method)`` -> ``(N, *shape)``.
        metrics: ``(variant, method)`` -> metric name -> ``(N,)``.
        curves: ``(variant, method)`` -> ``{"fractions": (P,), "deletion": (N, P), ...}``.
        source: where the data came from (file paths, relative to the served folder).
    """

    title: str
    kind: str
    inputs: torch.Tensor
    raw: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    predictions: dict[str, torch.Tensor] = field(default_factory=dict)
    feature_names: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    attributions: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    metrics: dict[tuple[str, str], dict[str, torch.Tensor]] = field(default_factory=dict)
    curves: dict[tuple[str, str], dict[str, torch.Tensor]] = field(default_factory=dict)
    source: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def metric_names(self) -> list[str]:
        """Every metric present, the usual ones first in a fixed order."""
        names: list[str] = []
        for values in self.metrics.values():
            names.extend(n for n in values if n not in names)
        known = [n for n in METRIC_ORDER if n in names]
        return known + [n for n in names if n not in METRIC_ORDER]

    def manifest(self, index: int, page_size: int) -> dict[str, Any]:
        """The small part: names, labels, predictions and per-example metrics."""
        n = len(self)
        names = list(self.feature_names)
        n_features = int(self.inputs[0].numel()) if n else 0
        if len(names) != n_features:
            names = []
        metrics: dict[str, dict[str, dict[str, list[float | None]]]] = {}
        for (variant, method), values in self.metrics.items():
            metrics.setdefault(variant, {})[method] = {
                name: [_number(float(v)) for v in t.reshape(-1).tolist()]
                for name, t in values.items()
            }
        return {
            "id": f"d{index}",
            "title": self.title,
            "kind": self.kind,
            "shape": list(self.inputs.shape[1:]),
            "n": n,
            "page_size": page_size,
            "pages": max(1, math.ceil(n / page_size)),
            "feature_names": names,
            "class_names": list(self.class_names),
            "variants": list(self.variants),
            "methods": list(self.methods),
            "available": [[v, m] for (v, m) in self.attributions],
            "labels": None if self.labels is None else [int(v) for v in self.labels.tolist()],
            "predictions": {v: [int(p) for p in t.tolist()] for v, t in self.predictions.items()},
            "metric_names": self.metric_names(),
            "metrics": metrics,
            "has_curves": bool(self.curves),
            "has_raw": self.raw is not None,
            "source": list(self.source),
        }

    def page(self, number: int, page_size: int) -> dict[str, Any]:
        """Inputs, attributions and curves of examples ``number * page_size`` onwards."""
        start = number * page_size
        stop = min(len(self), start + page_size)
        rows = slice(start, stop)
        attributions: dict[str, dict[str, str]] = {}
        for (variant, method), t in self.attributions.items():
            attributions.setdefault(variant, {})[method] = encode_array(t[rows])
        curves: dict[str, dict[str, dict[str, Any]]] = {}
        for (variant, method), c in self.curves.items():
            entry: dict[str, Any] = {"fractions": [float(f) for f in c["fractions"].tolist()]}
            for name, scores in c.items():
                if name != "fractions":
                    entry[name] = encode_array(scores[rows])
            curves.setdefault(variant, {})[method] = entry
        return {
            "page": number,
            "start": start,
            "stop": stop,
            "inputs": encode_array(self.inputs[rows]),
            "raw": None if self.raw is None else encode_array(self.raw[rows]),
            "attributions": attributions,
            "curves": curves,
        }
