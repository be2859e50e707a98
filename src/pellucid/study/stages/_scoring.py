"""How the interpretability stage scores one explanation method on one model variant.

Per-example metrics (deletion/insertion curves and AUC, faithfulness correlation,
sparseness, complexity, max-sensitivity, agreement with the dense model's explanation and,
where the method reports it, the completeness gap); the stage keeps their means per seed and,
through an :class:`~pellucid.study.examples.ExampleRecorder`, the per-example values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pellucid._registry import get_method
from pellucid._state import model_guard
from pellucid.study.examples import ExampleRecorder

__all__ = ["IMAGE_KWARGS", "METHOD_KWARGS", "explainer", "score_variant"]

#: Budgets of the sampling methods inside the study.
METHOD_KWARGS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 16},
    "smoothgrad": {"n_samples": 8},
    "expected_gradients": {"n_samples": 8},
    "kernel_shap": {"n_samples": 256},
    "lime": {"n_samples": 256},
    "sampling_shapley": {"n_samples": 8},
}

#: Extra keyword arguments for image inputs (2x2 occlusion patches on 8x8 digits).
IMAGE_KWARGS: dict[str, dict[str, Any]] = {"occlusion": {"window": 2, "stride": 2}}


def _probabilities(out: torch.Tensor) -> torch.Tensor:
    return out.softmax(dim=-1)


def _method_kwargs(method: str, seed: int, *, image: bool) -> dict[str, Any]:
    kwargs = dict(METHOD_KWARGS.get(method, {}))
    if image:
        kwargs.update(IMAGE_KWARGS.get(method, {}))
    if get_method(method).stochastic:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return kwargs


def explainer(method: str, seed: int, *, image: bool = False) -> Callable[..., torch.Tensor]:
    """``explain(model, inputs, *, target)`` with the study's budget and a fixed seed."""
    info = get_method(method)

    def explain(model: Any, inputs: torch.Tensor, *, target: Any = None) -> torch.Tensor:
        kwargs = _method_kwargs(method, seed, image=image)
        return info.fn(model, inputs, target=target, **kwargs).attributions

    explain.__name__ = method
    return explain


def _nanmean(t: torch.Tensor) -> float:
    return float(t.double().nanmean())


def _score(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str,
    dense_attr: torch.Tensor | None,
    cfg: dict[str, Any],
    seed: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, Any]]:
    """Per-example metrics, the attributions and the deletion/insertion curves."""
    from pellucid import metrics

    image = x.ndim > 2
    e = get_method(method).fn(model, x, target=y, **_method_kwargs(method, seed, image=image))
    attr = e.attributions
    gen = torch.Generator().manual_seed(seed)
    kw: dict[str, Any] = {"target": y, "output": _probabilities}
    curves = {
        "deletion": metrics.deletion_curve(model, x, attr, **kw),
        "insertion": metrics.insertion_curve(model, x, attr, **kw),
    }
    out = {
        "deletion_auc": curves["deletion"].auc,
        "insertion_auc": curves["insertion"].auc,
        "faithfulness": metrics.faithfulness_correlation(
            model, x, attr, n_samples=cfg["faithfulness_samples"], generator=gen, **kw
        ),
        "sparseness": metrics.sparseness(attr),
        "complexity": metrics.complexity(attr),
        "max_sensitivity": metrics.max_sensitivity(
            model,
            x,
            explainer(method, seed, image=image),
            target=y,
            radius=cfg["radius"],
            n_samples=cfg["sensitivity_samples"],
            generator=gen,
        ),
    }
    if dense_attr is not None:
        out["agreement"] = metrics.spearman(dense_attr, attr)
        out["top_k_agreement"] = metrics.top_k_overlap(dense_attr, attr, k=0.2)
    gap = e.extras.get("completeness_gap")
    if isinstance(gap, torch.Tensor) and gap.numel() == x.shape[0]:
        out["completeness_gap"] = gap.detach().reshape(-1)
    return out, attr, curves


def score_variant(
    model: nn.Module,
    name: str,
    key: str,
    x: torch.Tensor,
    y: torch.Tensor,
    methods: list[str],
    dense_attr: dict[str, torch.Tensor],
    cfg: dict[str, Any],
    seed: int,
    errors: list[str],
    recorder: ExampleRecorder | None,
) -> dict[str, dict[str, float]]:
    """Score every method on one variant: means per metric (and, with a ``recorder``, the
    per-example values, attributions and curves for the explorer)."""
    if recorder is not None:
        with torch.no_grad(), model_guard(model, eval_mode=True):
            recorder.variant(name, model(x).argmax(-1))
    scored: dict[str, dict[str, float]] = {}
    for method in methods:
        try:
            values, attr, curves = _score(model, x, y, method, dense_attr.get(method), cfg, seed)
        except (ValueError, TypeError, RuntimeError) as exc:
            errors.append(f"{key} {name} {method}: {exc}")
            continue
        if name == "dense":
            dense_attr[method] = attr
        scored[method] = {metric: _nanmean(v) for metric, v in values.items()}
        if recorder is not None:
            recorder.method(name, method, attr, values, curves)
    return scored
