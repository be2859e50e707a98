"""The bad-input suite, part two: clipping, pruning, metrics and inspection functions.

Each row calls one public function with one bad argument value (0, negative, NaN, inf, a
bool given as a number, a string, a wrong shape) and states the outcome: ``refuse`` (a
``TypeError``/``ValueError`` naming the argument in backticks and the bad value, raised
before anything changed) or ``either`` (a finite result is also acceptable). After every
call the model's parameters and ``.grad`` values are exactly as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from pellucid import clipping, inspection, metrics, pruning

NAN, INF = math.nan, math.inf


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()


def _inputs() -> torch.Tensor:
    return torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _with_grads(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 10
    return model


@dataclass(frozen=True)
class Row:
    name: str
    call: Callable[[nn.Module, torch.Tensor], Any]
    argument: str
    outcome: str = "refuse"


def _clip_rows() -> list[Row]:
    rows = []
    bad_bounds = [("negative", -1.0), ("nan", NAN), ("bool", True), ("string", "1")]
    for label, v in bad_bounds:
        rows += [
            Row(
                f"clip_grad_norm_ max_norm {label}",
                lambda m, x, v=v: clipping.clip_grad_norm_(m.parameters(), v),
                "max_norm",
            ),
            Row(
                f"clip_grad_value_ clip_value {label}",
                lambda m, x, v=v: clipping.clip_grad_value_(m.parameters(), v),
                "clip_value",
            ),
            Row(
                f"clip_by_global_norm max_norm {label}",
                lambda m, x, v=v: clipping.clip_by_global_norm(v),
                "max_norm",
            ),
            Row(
                f"clip_by_norm max_norm {label}",
                lambda m, x, v=v: clipping.clip_by_norm(v),
                "max_norm",
            ),
            Row(
                f"clip_by_value clip_value {label}",
                lambda m, x, v=v: clipping.clip_by_value(v),
                "clip_value",
            ),
            Row(
                f"adaptive_clip_grad_ clip_factor {label}",
                lambda m, x, v=v: clipping.adaptive_clip_grad_(m.parameters(), v),
                "clip_factor",
            ),
            Row(
                f"clip_grad_norm_per_tensor_ max_norm {label}",
                lambda m, x, v=v: clipping.clip_grad_norm_per_tensor_(m.parameters(), v),
                "max_norm",
            ),
        ]
    for label, v in [("negative", -1.0), ("nan", NAN), ("bool", True), ("unknown string", "fro")]:
        rows += [
            Row(
                f"clip_grad_norm_ norm_type {label}",
                lambda m, x, v=v: clipping.clip_grad_norm_(m.parameters(), 1.0, norm_type=v),
                "norm_type",
            ),
            Row(
                f"total_norm norm_type {label}",
                lambda m, x, v=v: clipping.total_norm(
                    [p.grad for p in m.parameters()], norm_type=v
                ),
                "norm_type",
            ),
        ]
    rows += [
        Row(
            "clip_grad_norm_ parameters not tensors",
            lambda m, x: clipping.clip_grad_norm_([1, 2], 1.0),
            "parameters",
        ),
        Row(
            "apply_ nonfinite unknown",
            lambda m, x: clipping.apply_(
                clipping.clip_by_value(1.0), m.parameters(), nonfinite="ignore"
            ),
            "nonfinite",
        ),
        Row(
            "adaptive_clip eps negative", lambda m, x: clipping.adaptive_clip(0.01, eps=-1.0), "eps"
        ),
        Row(
            "AutoClip percentile above 100",
            lambda m, x: clipping.AutoClip(percentile=150),
            "percentile",
        ),
        Row(
            "AutoClip percentile nan", lambda m, x: clipping.AutoClip(percentile=NAN), "percentile"
        ),
        Row("ZClip alpha above 1", lambda m, x: clipping.ZClip(alpha=2.0), "alpha"),
        Row("ZClip z_thresh negative", lambda m, x: clipping.ZClip(z_thresh=-1.0), "z_thresh"),
    ]
    return rows


def _prune_rows() -> list[Row]:
    rows = []
    for label, v in [
        ("negative", -0.1),
        ("above one", 1.5),
        ("nan", NAN),
        ("bool", True),
        ("string", "half"),
    ]:
        rows += [
            Row(
                f"prune_magnitude_ amount {label}",
                lambda m, x, v=v: pruning.prune_magnitude_(m, amount=v),
                "amount",
            ),
            Row(
                f"magnitude_masks amount {label}",
                lambda m, x, v=v: pruning.magnitude_masks(m, amount=v),
                "amount",
            ),
            Row(
                f"plan_channel_pruning amount {label}",
                lambda m, x, v=v: pruning.plan_channel_pruning(m, x, amount=v),
                "amount",
            ),
        ]
    rows += [
        Row(
            "prune_magnitude_ scope unknown",
            lambda m, x: pruning.prune_magnitude_(m, amount=0.5, scope="everything"),
            "scope",
        ),
        Row(
            "prune_magnitude_ importance unknown",
            lambda m, x: pruning.prune_magnitude_(m, amount=0.5, importance="l7"),
            "importance",
        ),
        Row(
            "prune_magnitude_ layers unknown",
            lambda m, x: pruning.prune_magnitude_(m, amount=0.5, layers=["nope"]),
            "layers",
        ),
        Row(
            "prune_threshold_ threshold nan",
            lambda m, x: pruning.prune_threshold_(m, threshold=NAN),
            "threshold",
        ),
        Row(
            "prune_threshold_ threshold negative",
            lambda m, x: pruning.prune_threshold_(m, threshold=-1.0),
            "threshold",
        ),
        Row(
            "plan_channel_pruning importance unknown",
            lambda m, x: pruning.plan_channel_pruning(m, x, amount=0.5, importance="l7"),
            "importance",
        ),
        Row(
            "plan_channel_pruning example_inputs a string",
            lambda m, x: pruning.plan_channel_pruning(m, "x", amount=0.5),
            "example_inputs",
        ),
        Row("sparsity of a non-module", lambda m, x: pruning.sparsity(42), "model"),
        Row(
            "polynomial_sparsity final above one",
            lambda m, x: pruning.polynomial_sparsity(3, final=1.5, end_step=10),
            "final",
        ),
        Row(
            "polynomial_sparsity end before begin",
            lambda m, x: pruning.polynomial_sparsity(3, final=0.5, begin_step=5, end_step=2),
            "end_step",
        ),
        Row(
            "distillation_loss temperature zero",
            lambda m, x: pruning.distillation_loss(x, x, temperature=0.0),
            "temperature",
        ),
    ]
    return rows


def _attr(x: torch.Tensor) -> torch.Tensor:
    return torch.linspace(-1, 1, x.numel(), dtype=x.dtype).reshape(x.shape)


def _metric_rows() -> list[Row]:
    wrong = lambda x: _attr(x)[:, :3]  # noqa: E731
    nan_attr = lambda x: _attr(x).index_fill(1, torch.tensor([0]), NAN)  # noqa: E731
    rows = []
    for fn in (
        metrics.deletion_auc,
        metrics.insertion_auc,
        metrics.faithfulness_correlation,
        metrics.infidelity,
        metrics.completeness_gap,
    ):
        name = fn.__name__
        rows += [
            Row(
                f"{name} attributions of the wrong shape",
                lambda m, x, fn=fn: fn(m, x, wrong(x), target=0),
                "attributions",
            ),
            Row(
                f"{name} attributions with NaN",
                lambda m, x, fn=fn: fn(m, x, nan_attr(x), target=0),
                "attributions",
            ),
            Row(
                f"{name} target too large",
                lambda m, x, fn=fn: fn(m, x, _attr(x), target=7),
                "target",
            ),
            Row(
                f"{name} inputs with NaN",
                lambda m, x, fn=fn: fn(
                    m, x.index_fill(1, torch.tensor([2]), NAN), _attr(x), target=0
                ),
                "inputs",
            ),
        ]
    rows += [
        Row(
            "deletion_curve step zero",
            lambda m, x: metrics.deletion_curve(m, x, _attr(x), target=0, step=0),
            "step",
        ),
        Row(
            "deletion_curve step negative",
            lambda m, x: metrics.deletion_curve(m, x, _attr(x), target=0, step=-2),
            "step",
        ),
        Row(
            "faithfulness_correlation n_samples zero",
            lambda m, x: metrics.faithfulness_correlation(m, x, _attr(x), target=0, n_samples=0),
            "n_samples",
        ),
        Row(
            "faithfulness_correlation subset_size zero",
            lambda m, x: metrics.faithfulness_correlation(m, x, _attr(x), target=0, subset_size=0),
            "subset_size",
        ),
        Row(
            "faithfulness_correlation subset_size too large",
            lambda m, x: metrics.faithfulness_correlation(m, x, _attr(x), target=0, subset_size=99),
            "subset_size",
        ),
        Row(
            "infidelity n_samples zero",
            lambda m, x: metrics.infidelity(m, x, _attr(x), target=0, n_samples=0),
            "n_samples",
        ),
        Row(
            "infidelity noise negative",
            lambda m, x: metrics.infidelity(m, x, _attr(x), target=0, noise=-1.0),
            "noise",
        ),
        Row(
            "infidelity noise nan",
            lambda m, x: metrics.infidelity(m, x, _attr(x), target=0, noise=NAN),
            "noise",
        ),
        Row(
            "sensitivities radius negative",
            lambda m, x: metrics.sensitivities(m, x, "saliency", target=0, radius=-1.0),
            "radius",
        ),
        Row(
            "sensitivities radius nan",
            lambda m, x: metrics.sensitivities(m, x, "saliency", target=0, radius=NAN),
            "radius",
        ),
        Row(
            "sensitivities n_samples zero",
            lambda m, x: metrics.sensitivities(m, x, "saliency", target=0, n_samples=0),
            "n_samples",
        ),
        Row(
            "sensitivities explain unknown",
            lambda m, x: metrics.sensitivities(m, x, "salience", target=0),
            "explain",
        ),
        Row(
            "model_randomization_check layers unknown",
            lambda m, x: metrics.model_randomization_check(
                m, x, "saliency", target=0, layers=["nope"]
            ),
            "layers",
        ),
        Row(
            "model_randomization_check measure unknown",
            lambda m, x: metrics.model_randomization_check(
                m, x, "saliency", target=0, measure="pearson2"
            ),
            "measure",
        ),
        Row("agreement shapes differ", lambda m, x: metrics.agreement(_attr(x), wrong(x)), "b"),
        Row(
            "agreement measure unknown",
            lambda m, x: metrics.agreement(_attr(x), _attr(x), measure="cosine2"),
            "measure",
        ),
        Row(
            "top_k_overlap k zero", lambda m, x: metrics.top_k_overlap(_attr(x), _attr(x), k=0), "k"
        ),
        Row(
            "top_k_overlap k negative",
            lambda m, x: metrics.top_k_overlap(_attr(x), _attr(x), k=-0.5),
            "k",
        ),
        Row(
            "top_k_overlap k nan",
            lambda m, x: metrics.top_k_overlap(_attr(x), _attr(x), k=NAN),
            "k",
        ),
        Row("sparseness with NaN", lambda m, x: metrics.sparseness(nan_attr(x)), "attributions"),
        Row("complexity with NaN", lambda m, x: metrics.complexity(nan_attr(x)), "attributions"),
        Row("sparseness of a string", lambda m, x: metrics.sparseness("a"), "attributions"),
    ]
    return rows


def _inspection_rows() -> list[Row]:
    labels = torch.tensor([0, 1, 2, 0])
    return [
        Row(
            "permutation_importance labels of the wrong length",
            lambda m, x: inspection.permutation_importance(m, x, labels[:2]),
            "labels",
        ),
        Row(
            "permutation_importance n_repeats zero",
            lambda m, x: inspection.permutation_importance(m, x, labels, n_repeats=0),
            "n_repeats",
        ),
        Row(
            "permutation_importance scoring unknown",
            lambda m, x: inspection.permutation_importance(m, x, labels, scoring="acc"),
            "scoring",
        ),
        Row(
            "permutation_importance feature_names too few",
            lambda m, x: inspection.permutation_importance(m, x, labels, feature_names=["a"]),
            "feature_names",
        ),
        Row(
            "record_activations layers unknown",
            lambda m, x: inspection.record_activations(m, x, layers=["nope"]),
            "layers",
        ),
        Row(
            "record_gradients wrt unknown",
            lambda m, x: inspection.record_gradients(m, x, target=0, wrt="biases"),
            "wrt",
        ),
        Row(
            "record_weights layers unknown",
            lambda m, x: inspection.record_weights(m, layers=["nope"]),
            "layers",
        ),
        Row(
            "probe inputs with NaN",
            lambda m, x: inspection.probe(m, x.index_fill(1, torch.tensor([0]), NAN)),
            "inputs",
        ),
    ]


def _explanation_rows() -> list[Row]:
    from pellucid import saliency

    rows = []
    devices = [("unknown", "gpu"), ("bad index", "cuda:x"), ("number", 3)]
    if not torch.cuda.is_available():
        devices.append(("absent", "cuda"))
    for label, device in devices:
        rows.append(
            Row(
                f"Explanation.to device {label}",
                lambda m, x, d=device: saliency(m, x, target=0).to(d),
                "device",
            )
        )
    return rows


ROWS = _clip_rows() + _prune_rows() + _metric_rows() + _inspection_rows() + _explanation_rows()


def _state(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for p in model.parameters() for t in (p, p.grad)]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_argument(row: Row) -> None:
    model, x = _with_grads(_model()), _inputs()
    before = _state(model)
    try:
        result = row.call(model, x)
    except (TypeError, ValueError) as err:
        message = str(err)
        assert f"`{row.argument}`" in message, (
            f"the error does not name `{row.argument}`: {message}"
        )
        assert "got" in message or "; " in message, f"the error lacks the bad value: {message}"
    else:
        assert row.outcome == "either", f"accepted a bad `{row.argument}`; returned {result!r:.200}"
    after = _state(model)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b), "the call changed the model before refusing"


def test_the_table_is_large_enough() -> None:
    assert len(ROWS) >= 100
