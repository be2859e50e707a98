"""Stage "model_agnostic": Shapley values, LIME, permutation importance and occlusion.

Tabular models: exact Shapley over groups of features (for breast_cancer the ten
measurements, each with its mean, standard error and worst value), KernelSHAP and sampling
Shapley on the same groups (their error against exact), KernelSHAP and LIME on every
feature, and permutation importance over the test set. Image models: occlusion and
KernelSHAP over grid superpixels. Every method records its time per example; the report
also shows how far the global rankings of the methods agree.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from pellucid._registry import get_method
from pellucid.report.html import Figure, Paragraph, Section, Table, figure_png
from pellucid.study.context import StudyContext, check_model_keys
from pellucid.study.errors import ConfigError
from pellucid.study.stages.base import Stage
from pellucid.study.stats import mean_std

__all__ = ["ModelAgnosticStage"]


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.double().argsort().argsort().double()
    rb = b.double().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def _timed(method: str, model: Any, x: torch.Tensor, **kwargs: Any) -> tuple[Any, float]:
    fn = get_method(method).fn
    fn(model, x[:2], **kwargs)  # warm-up: lazy imports, allocator
    start = time.perf_counter()
    e = fn(model, x, **kwargs)
    return e, (time.perf_counter() - start) / x.shape[0]


class ModelAgnosticStage(Stage):
    """Explains the reference models with perturbation, Shapley and surrogate methods."""

    name = "model_agnostic"
    title = "Model-agnostic explanations"
    defaults = {
        "tabular_models": ["breast_cancer/MLP"],
        "image_models": ["digits/SmallCNN"],
        "n_examples": 128,
        "image_examples": 64,
        "exact_players": 10,
        "kernel_samples": 1000,
        "grouped_kernel_samples": 128,
        "permutations": 16,
        "lime_samples": 1000,
        "permutation_repeats": 10,
        "segments": 16,
        "image_kernel_samples": 1000,
        "occlusion_window": 2,
        "top_k": 8,
    }
    quick = {
        "n_examples": 16,
        "image_examples": 8,
        "kernel_samples": 256,
        "lime_samples": 256,
        "permutation_repeats": 3,
        "image_kernel_samples": 128,
    }

    def validate(self, cfg: dict[str, Any]) -> None:
        """Check this stage's config section (see :meth:`Stage.validate`).

        Raises:
            ConfigError: an unknown model, a count below its minimum, or more than 16
                exact players.
        """
        check_model_keys("model_agnostic.tabular_models", cfg["tabular_models"])
        check_model_keys("model_agnostic.image_models", cfg["image_models"])
        for key, low in (
            ("n_examples", 2),
            ("image_examples", 2),
            ("exact_players", 2),
            ("kernel_samples", 32),
            ("grouped_kernel_samples", 16),
            ("permutations", 2),
            ("lime_samples", 64),
            ("permutation_repeats", 1),
            ("segments", 2),
            ("image_kernel_samples", 32),
            ("occlusion_window", 1),
            ("top_k", 1),
        ):
            if cfg[key] < low:
                raise ConfigError(f"`model_agnostic.{key}` must be >= {low}; got {cfg[key]}.")
        if cfg["exact_players"] > 16:
            raise ConfigError(
                f"`model_agnostic.exact_players` must be <= 16 (2**P coalitions per example); "
                f"got {cfg['exact_players']}."
            )

    def run(self, ctx: StudyContext, cfg: dict[str, Any]) -> dict[str, Any]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # comparable per-method times on a shared machine
        try:
            out: dict[str, Any] = {}
            for key in ctx.with_user_models(cfg["tabular_models"], input_ndim=2):
                out[key] = {
                    "kind": "tabular",
                    "runs": [self._tabular(ctx, key, seed, cfg) for seed in ctx.seeds],
                }
            for key in ctx.with_user_models(cfg["image_models"], input_ndim=4):
                out[key] = {
                    "kind": "image",
                    "runs": [self._image(ctx, key, seed, cfg) for seed in ctx.seeds],
                }
            return out
        finally:
            torch.set_num_threads(threads)

    def _tabular(self, ctx: StudyContext, key: str, seed: int, cfg: dict[str, Any]) -> dict:
        from pellucid.inspection import permutation_importance

        model, ds, _ = ctx.trained(key, seed)
        x = ds.X_test[: cfg["n_examples"]].float()
        d = x.shape[1]
        players = min(d, cfg["exact_players"])
        groups = torch.arange(d) % players  # breast_cancer: mean / error / worst of a measurement
        names = list(ds.feature_names or [f"x{i}" for i in range(d)])
        group_names = [names[i] for i in range(players)] if players < d else names
        if ds.feature_mask is not None and len(ds.feature_groups) <= cfg["exact_players"]:
            groups, group_names = ds.feature_mask, list(ds.feature_groups)  # one-hot columns
        common = {"target": "predicted", "eval_mode": True, "baseline": ds.X_train.mean(0)}
        gen = {"generator": torch.Generator().manual_seed(seed)}
        methods: dict[str, Any] = {}
        exact, t = _timed("exact_shapley", model, x, feature_mask=groups, **common)
        ref = exact.extras["values"].double()
        methods["exact_shapley (groups)"] = {"seconds": t, "error": 0.0}
        for method, kw in (
            ("kernel_shap", {"n_samples": cfg["grouped_kernel_samples"]}),
            ("sampling_shapley", {"n_samples": cfg["permutations"]}),
        ):
            e, t = _timed(method, model, x, feature_mask=groups, **common, **kw, **gen)
            err = (e.extras["values"].double() - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)
            methods[f"{method} (groups)"] = {"seconds": t, "error": float(err.mean())}
        kernel, t = _timed(
            "kernel_shap", model, x, n_samples=cfg["kernel_samples"], **common, **gen
        )
        methods["kernel_shap"] = {"seconds": t, "r2": float(kernel.extras["r2"].mean())}
        common.pop("baseline")
        lime, t = _timed(
            "lime", model, x, n_samples=cfg["lime_samples"], train_data=ds.X_train, **common, **gen
        )
        methods["lime"] = {"seconds": t, "r2": float(lime.extras["r2"].mean())}
        start = time.perf_counter()
        perm = permutation_importance(
            model,
            ds.X_test.float(),
            ds.y_test,
            n_repeats=cfg["permutation_repeats"],
            scoring="loss",
            feature_names=names,
            generator=torch.Generator().manual_seed(seed),
        )
        methods["permutation_importance"] = {
            "seconds": (time.perf_counter() - start) / ds.X_test.shape[0]
        }
        global_kernel = kernel.attributions.abs().mean(0)
        global_lime = lime.attributions.abs().mean(0)
        return {
            "seed": seed,
            "methods": methods,
            "feature_names": names,
            "group_names": group_names,
            "exact_groups": ref.abs().mean(0).tolist(),
            "kernel_mean_abs": global_kernel.tolist(),
            "lime_mean_abs": global_lime.tolist(),
            "permutation_mean": perm.importances_mean.tolist(),
            "permutation_std": perm.importances_std.tolist(),
            "agreement": {
                "kernel_shap vs lime": _spearman(global_kernel, global_lime),
                "kernel_shap vs permutation": _spearman(global_kernel, perm.importances_mean),
                "lime vs permutation": _spearman(global_lime, perm.importances_mean),
            },
        }

    def _image(self, ctx: StudyContext, key: str, seed: int, cfg: dict[str, Any]) -> dict:
        model, ds, _ = ctx.trained(key, seed)
        x = ds.X_test[: cfg["image_examples"]].float()
        common = {"target": "predicted", "eval_mode": True}
        w = cfg["occlusion_window"]
        occ, t_occ = _timed("occlusion", model, x, window=(x.shape[1], w, w), **common)
        ks, t_ks = _timed(
            "kernel_shap",
            model,
            x,
            feature_mask="grid",
            n_segments=cfg["segments"],
            n_samples=cfg["image_kernel_samples"],
            generator=torch.Generator().manual_seed(seed),
            **common,
        )
        keep = min(4, x.shape[0])
        return {
            "seed": seed,
            "methods": {
                f"occlusion {w}x{w}": {"seconds": t_occ},
                f"kernel_shap ({ks.extras['n_players']} superpixels)": {
                    "seconds": t_ks,
                    "r2": float(ks.extras["r2"].mean()),
                },
            },
            "inputs": x[:keep].sum(1).tolist(),
            "maps": {
                "occlusion": occ.attributions[:keep].sum(1).tolist(),
                "kernel_shap": ks.attributions[:keep].sum(1).tolist(),
            },
        }

    def report(self, ctx: StudyContext, cfg: dict[str, Any], result: dict[str, Any]) -> Section:
        blocks: list[Any] = [
            Paragraph(
                "Model-agnostic methods only query the model, so their cost is the number of "
                "model evaluations; pellucid batches every example x perturbation into large "
                "forwards. Times are per explained example (one thread), mean over seeds. For "
                "the grouped Shapley estimators the error is the relative L2 distance to exact "
                "Shapley values on the same groups; R² is the local fit's weighted R²."
            )
        ]
        rows = []
        for key, entry in result.items():
            names = list(entry["runs"][0]["methods"])
            for method in names:
                recs = [r["methods"][method] for r in entry["runs"]]
                t, _ = mean_std([r["seconds"] for r in recs])
                err = [r["error"] for r in recs if "error" in r]
                r2 = [r["r2"] for r in recs if "r2" in r]
                rows.append(
                    [
                        key,
                        method,
                        1e3 * t,
                        mean_std(err)[0] if err else None,
                        mean_std(r2)[0] if r2 else None,
                    ]
                )
        blocks.append(
            Table(
                ["model", "method", "ms per example", "error vs exact", "R²"],
                rows,
                caption="Cost and accuracy of the model-agnostic methods",
            )
        )
        for key, entry in result.items():
            if entry["kind"] == "tabular":
                blocks.extend(_tabular_blocks(key, entry, cfg["top_k"]))
            else:
                blocks.append(
                    Figure(
                        _image_grid(entry["runs"][0]),
                        f"{key}: input, occlusion "
                        "and KernelSHAP over superpixels (red positive, blue "
                        "negative).",
                    )
                )
        return Section(self.title, blocks)


def _tabular_blocks(key: str, entry: dict[str, Any], top_k: int) -> list[Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pellucid.plot import importance_bars

    runs = entry["runs"]
    agreement = {k: mean_std([r["agreement"][k] for r in runs])[0] for k in runs[0]["agreement"]}
    first = runs[0]
    groups = torch.tensor([r["exact_groups"] for r in runs]).mean(0)
    top_groups = [first["group_names"][i] for i in groups.argsort(descending=True)[:3].tolist()]
    blocks: list[Any] = [
        Table(
            ["methods", "Spearman rank correlation of global importance"],
            [[k, v] for k, v in agreement.items()],
            caption=f"{key}: do the methods rank the features alike? (mean over seeds)",
        ),
        Paragraph(
            f"{key}: by exact Shapley values over feature groups, the most important "
            f"groups are {', '.join(top_groups)} (named by their first feature).",
            kind="finding",
        ),
    ]
    mean = torch.tensor([r["permutation_mean"] for r in runs]).mean(0)
    std = torch.tensor([r["permutation_std"] for r in runs]).mean(0)
    fig, ax = plt.subplots(figsize=(6.0, 0.3 * top_k + 1.2))
    importance_bars(
        mean,
        std=std,
        names=first["feature_names"],
        top_k=top_k,
        ax=ax,
        title="permutation importance (increase in cross-entropy)",
    )
    blocks.append(
        Figure(
            figure_png(fig),
            f"{key}: permutation importance over the test set, "
            "mean and standard deviation over repeats (first seed's repeats, "
            "averaged over seeds).",
        )
    )
    return blocks


def _image_grid(run: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pellucid.plot import image_attribution

    inputs = torch.tensor(run["inputs"])
    methods = list(run["maps"])
    rows, cols = inputs.shape[0], len(methods) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.3), squeeze=False)
    for i in range(rows):
        axes[i, 0].imshow(inputs[i].numpy(), cmap="gray")
        axes[i, 0].set_axis_off()
        for j, method in enumerate(methods, start=1):
            image_attribution(
                torch.tensor(run["maps"][method][i]).unsqueeze(0),
                ax=axes[i, j],
                image=inputs[i],
                colorbar=False,
                title="",
                alpha=0.85,
            )
    axes[0, 0].set_title("input", fontsize=7)
    for j, method in enumerate(methods, start=1):
        axes[0, j].set_title(method.replace("_", " "), fontsize=7)
    fig.tight_layout()
    return figure_png(fig)
