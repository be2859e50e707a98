"""Stage "explanations": explain the reference models with the gradient and decomposition
methods; a grid of image attributions per method, the top tabular features, and each
method's completeness gap and time.

For every model and seed the stage explains the first ``n_examples`` test examples (their
predicted class) with every method that fits the model's inputs (Grad-CAM needs a conv
layer). It records seconds per example, the completeness gap (IG, expected gradients,
DeepLIFT: ``sum(attributions) - (f(x) - f(baseline))``; LRP: ``sum(relevance) - f(x)``)
relative to the output difference it decomposes, a few attribution maps (images) and the
mean |attribution| per feature (tables). Methods that refuse a model (an operation without a
rule) are reported with their error, not dropped.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from pellucid._registry import get_method, list_methods
from pellucid._state import model_guard
from pellucid.report.html import Figure, Paragraph, Section, Table, figure_png
from pellucid.study.context import StudyContext, check_model_keys
from pellucid.study.errors import ConfigError
from pellucid.study.stages.base import Stage
from pellucid.study.stats import mean_std

__all__ = ["ExplanationsStage"]

#: Budgets per method inside the study, and the conv layer Grad-CAM uses per architecture.
BUDGETS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 32},
    "smoothgrad": {"n_samples": 16},
    "expected_gradients": {"n_samples": 16},
}
CAM_LAYERS = {"SmallCNN": "features.3", "TinyResNet": "layers"}
_GAP_KEYS = ("completeness_gap", "conservation_error")


def _gap(extras: dict[str, Any], output: torch.Tensor) -> float | None:
    """Mean |gap| over the examples, relative to the mean |output difference|."""
    for key in _GAP_KEYS:
        if key in extras:
            gap = extras[key].detach().double().abs()
            if key == "completeness_gap" and "baseline_output" in extras:
                scale = (extras["output"] - extras["baseline_output"]).double().abs().mean()
            else:
                scale = output.double().abs().mean()
            return float(gap.mean() / scale.clamp(min=1e-12))
    return None


class ExplanationsStage(Stage):
    """Explains the reference models with the gradient and decomposition methods."""

    name = "explanations"
    title = "Explanations: gradient and decomposition methods"
    defaults = {
        "models": ["digits/SmallCNN", "breast_cancer/MLP"],
        "methods": [
            "saliency",
            "input_x_gradient",
            "integrated_gradients",
            "smoothgrad",
            "expected_gradients",
            "guided_backprop",
            "deconvolution",
            "grad_cam",
            "guided_grad_cam",
            "deeplift",
            "lrp",
        ],
        "n_examples": 64,
        "grid_examples": 6,
        "top_k": 8,
    }
    quick = {"n_examples": 12, "grid_examples": 4}

    def validate(self, cfg: dict[str, Any]) -> None:
        """Check this stage's config section (see :meth:`Stage.validate`).

        Raises:
            ConfigError: an unknown model or method, or a count < 1.
        """
        check_model_keys("explanations.models", cfg["models"])
        known = list_methods()
        for method in cfg["methods"]:
            if method not in known:
                raise ConfigError(
                    f"`explanations.methods` must list registered methods; got {method!r}. "
                    f"Known: {', '.join(known)}."
                )
        for key in ("n_examples", "grid_examples", "top_k"):
            if cfg[key] < 1:
                raise ConfigError(f"`explanations.{key}` must be >= 1; got {cfg[key]}.")

    def run(self, ctx: StudyContext, cfg: dict[str, Any]) -> dict[str, Any]:
        # One thread: per-method times are comparable and do not suffer from thread
        # contention on a shared machine; restored afterwards.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._run(ctx, cfg)
        finally:
            torch.set_num_threads(threads)

    def _run(self, ctx: StudyContext, cfg: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ctx.with_user_models(cfg["models"]):
            entry: dict[str, Any] = {"methods": {}}
            for seed in ctx.seeds:
                model, ds, _ = ctx.trained(key, seed)
                x = ds.X_test[: cfg["n_examples"]].float()
                kind = {4: "image", 2: "tabular"}.get(x.ndim, "sequence")
                entry.update(kind=kind, feature_names=list(ds.feature_names or []))
                if seed == ctx.seeds[0]:
                    grid = x[: cfg["grid_examples"]]
                    entry["inputs"] = grid.mean(1).tolist() if kind == "image" else []
                for method in cfg["methods"]:
                    info = get_method(method)
                    kinds = info.input_kinds + (
                        ("sequence",) if "tabular" in info.input_kinds else ()
                    )
                    if kind not in kinds or (
                        info.needs_layer and type(model).__name__ not in CAM_LAYERS
                    ):
                        continue
                    record = entry["methods"].setdefault(method, {"runs": []})
                    record["runs"].append(
                        self._explain(
                            ctx, key, model, ds, x, method, cfg, keep=seed == ctx.seeds[0]
                        )
                    )
            out[key] = entry
        return out

    def _explain(
        self,
        ctx: StudyContext,
        key: str,
        model: Any,
        ds: Any,
        x: torch.Tensor,
        method: str,
        cfg: dict[str, Any],
        *,
        keep: bool,
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "target": "predicted",
            "eval_mode": True,
            **BUDGETS.get(method, {}),
        }
        info = get_method(method)
        if info.needs_layer:
            kwargs["layer"] = CAM_LAYERS.get(type(model).__name__)
        if info.stochastic:
            kwargs["generator"] = torch.Generator().manual_seed(0)
        if method == "expected_gradients":
            kwargs["background"] = ds.X_train[:64].float()
        try:
            info.fn(model, x[:2], **kwargs)  # warm-up: lazy imports, allocator
            start = time.perf_counter()
            e = info.fn(model, x, **kwargs)
        except (ValueError, TypeError) as exc:
            ctx.log(f"explanations: {method} on {key}: {exc}")
            return {"error": str(exc).splitlines()[0].split(". ")[0][:200]}
        seconds = time.perf_counter() - start
        with torch.no_grad(), model_guard(model, eval_mode=True):
            logits = model(x)
        output = logits.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)
        attr = e.attributions.detach().double()
        run: dict[str, Any] = {
            "seconds_per_example": seconds / x.shape[0],
            "gap": _gap(e.extras, output),
            "mean_abs": attr.reshape(len(attr), -1).abs().mean(0).tolist(),
        }
        if keep:
            if attr.ndim == 4:
                run["maps"] = attr[: cfg["grid_examples"]].sum(1).tolist()
            else:
                run["first"] = attr[0].tolist()
                run["values"] = attr.tolist()
                run["inputs"] = x.double().tolist()
        return run

    def report(self, ctx: StudyContext, cfg: dict[str, Any], result: dict[str, Any]) -> Section:
        blocks: list[Any] = [
            Paragraph(
                "Each method explains the predicted class of the first test examples. The gap is "
                "the mean |completeness gap| (integrated gradients, expected gradients, DeepLIFT: "
                "sum of attributions minus f(x) - f(baseline)) or |conservation error| (LRP: sum "
                "of relevance minus f(x)), relative to the mean output difference it decomposes; "
                "time is per example, mean over seeds."
            )
        ]
        rows = []
        for key, entry in result.items():
            for method, record in entry["methods"].items():
                ok = [r for r in record["runs"] if "error" not in r]
                if not ok:
                    rows.append([key, method, None, None, record["runs"][0]["error"]])
                    continue
                t, _ = mean_std([r["seconds_per_example"] for r in ok])
                gaps = [r["gap"] for r in ok if r["gap"] is not None]
                rows.append([key, method, 1e3 * t, mean_std(gaps)[0] if gaps else None, ""])
        blocks.append(
            Table(
                ["model", "method", "ms per example", "relative gap", "note"],
                rows,
                caption="Time and completeness per method",
            )
        )
        for key, entry in result.items():
            if entry.get("kind") == "image" and entry.get("inputs"):
                blocks.append(
                    Figure(
                        _grid(entry),
                        f"{key}: attributions of the first test "
                        "examples (red positive, blue negative).",
                    )
                )
            elif entry.get("kind") == "tabular":
                blocks.extend(_tabular(key, entry, cfg["top_k"]))
        return Section(self.title, blocks)


def _grid(entry: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pellucid.plot import image_attribution

    methods = [(m, r["runs"][0]) for m, r in entry["methods"].items() if "maps" in r["runs"][0]]
    inputs = torch.tensor(entry["inputs"])
    rows, cols = inputs.shape[0], len(methods) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.15 * cols, 1.15 * rows + 0.4), squeeze=False)
    for i in range(rows):
        axes[i, 0].imshow(inputs[i].numpy(), cmap="gray")
        axes[i, 0].set_axis_off()
        for j, (_, run) in enumerate(methods, start=1):
            image_attribution(
                torch.tensor(run["maps"][i]).unsqueeze(0),
                ax=axes[i, j],
                image=inputs[i],
                colorbar=False,
                title="",
                alpha=0.85,
            )
    axes[0, 0].set_title("input", fontsize=7)
    for j, (method, _) in enumerate(methods, start=1):
        axes[0, j].set_title(method.replace("_", " "), fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


def _tabular(key: str, entry: dict[str, Any], top_k: int) -> list[Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pellucid.plot import attribution_summary

    names = entry.get("feature_names") or None
    first_run: dict[str, Any] = next(iter(entry["methods"].values()), {"runs": [{}]})["runs"][0]
    if names and len(names) != len(first_run.get("mean_abs", names)):
        names = None  # e.g. sequences: one value per (step, feature), not per feature
    rows = []
    for method, record in entry["methods"].items():
        ok = [r for r in record["runs"] if "error" not in r]
        if not ok:
            continue
        mean_abs = torch.tensor([r["mean_abs"] for r in ok]).mean(0)
        order = mean_abs.argsort(descending=True)[:top_k].tolist()
        label = [names[i] if names else f"x{i}" for i in order]
        rows.append([method, ", ".join(label)])
    blocks: list[Any] = [
        Table(
            ["method", f"top {top_k} features by mean |attribution|"],
            rows,
            caption=f"{key}: most important features per method",
        )
    ]
    first = entry["methods"].get("integrated_gradients", {}).get("runs", [{}])[0]
    if "values" in first:
        fig, ax = plt.subplots(figsize=(6.0, 0.35 * top_k + 1.2))
        source = type(
            "E",
            (),
            {
                "attributions": torch.tensor(first["values"]),
                "inputs": torch.tensor(first["inputs"]),
                "method": "integrated_gradients",
            },
        )()
        attribution_summary(source, names=names, top_k=top_k, ax=ax)
        blocks.append(
            Figure(
                figure_png(fig),
                f"{key}: integrated gradients over the explained "
                "test examples (one dot per example, colour = feature value).",
            )
        )
    return blocks
