"""Stage "interpretability": score every explanation method on every model variant.

For each reference model and seed it builds the variants with the public APIs: the dense
model (from the training stage), models trained with gradient clipping
(``pellucid.clipping.GradientClipper``), and pruned + fine-tuned copies at several levels,
unstructured and structured (``pellucid.pruning.prune_and_finetune``). Every method explains
the same test examples (their true class); the explanations are scored with
``pellucid.metrics`` (deletion/insertion AUC on probabilities, faithfulness correlation,
sparseness, complexity, max-sensitivity, agreement with the dense model's explanation), a
tree surrogate is fitted to each variant (fidelity vs sparsity), and the dense model gets
the randomization check. Per-seed values are means over the examples; the findings stage
turns them into sentences with confidence intervals.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from pellucid._registry import get_method, list_methods
from pellucid.pruning.collapse import detect_collapse
from pellucid.report.html import Figure, Paragraph, Section, Table
from pellucid.study.context import StudyContext, check_model_keys
from pellucid.study.errors import ConfigError
from pellucid.study.examples import ExampleRecorder
from pellucid.study.stages._interpretability_report import (
    TABLE,
    num,
    plus_minus,
    randomization_png,
)
from pellucid.study.stages._scoring import (
    IMAGE_KWARGS,
    METHOD_KWARGS,
    explainer,
    score_variant,
)
from pellucid.study.stages.base import Stage
from pellucid.study.stats import mean_ci

__all__ = ["CLIPPERS", "IMAGE_KWARGS", "METHOD_KWARGS", "InterpretabilityStage"]

#: Clipping variants: name -> (transform factory name, its arguments) in pellucid.clipping.
CLIPPERS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "global_norm": ("clip_by_global_norm", (1.0,)),
    "agc": ("adaptive_clip", (0.01,)),
    "autoclip": ("AutoClip", (10.0,)),
    "zclip": ("ZClip", ()),
}


def _clip_transform(name: str) -> Any:
    import pellucid.clipping as clipping

    factory, args = CLIPPERS[name]
    return getattr(clipping, factory)(*args)


def _train_clipped(ctx: StudyContext, key: str, seed: int, clip: str) -> nn.Module:
    from pellucid.clipping import GradientClipper
    from pellucid.training import fit

    spec = ctx.spec(key)
    ds = ctx.dataset(spec.dataset, model=spec.model, seed=seed)
    model = spec.build(ds, seed)
    fit(
        model,
        ds.train,
        epochs=spec.quick_epochs if ctx.quick else spec.epochs,
        lr=spec.lr,
        batch_size=spec.batch_size,
        seed=seed,
        loss="cross_entropy",
        progress=False,
        clipper=GradientClipper(_clip_transform(clip)),
    )
    return model.eval()


def _variants(ctx: StudyContext, key: str, seed: int, cfg: dict[str, Any]):
    """Yield ``(name, family, level, model, accuracy)`` for every variant of one model."""
    from pellucid.pruning import prune_and_finetune
    from pellucid.training import evaluate

    spec = ctx.spec(key)
    dense, ds, record = ctx.trained(key, seed)
    yield "dense", "dense", 0.0, dense, record["test"].get("accuracy", math.nan)
    if key in cfg["clip_models"]:
        for clip in cfg["clipping"]:
            model = _train_clipped(ctx, key, seed, clip)
            yield f"clip:{clip}", "clipped", 0.0, model, evaluate(model, ds.test)["accuracy"]
    for kind in ("unstructured", "structured"):
        for amount in cfg[kind]:
            res = prune_and_finetune(
                dense,
                ds,
                kind=kind,
                amount=float(amount),
                epochs=cfg["finetune_epochs"],
                lr=spec.lr,
                seed=seed,
            )
            yield (
                f"{kind}:{amount:g}",
                kind,
                float(amount),
                res.model.eval(),
                res.metrics.get("accuracy", math.nan),
            )


def _collapsed(model: nn.Module, ds: Any) -> str | None:
    """Why the variant collapsed on the whole test split (see ``pruning.collapse``), or None."""
    labels = ds.y_test if ds.task == "classification" else None
    return detect_collapse(model, ds.X_test, labels=labels)


def _methods(cfg: dict[str, Any], image: bool) -> list[str]:
    known = set(list_methods())
    kind = "image" if image else "tabular"
    return [
        m
        for m in cfg["methods"]
        if m in known and kind in get_method(m).input_kinds and not get_method(m).needs_layer
    ]


def _randomization(
    out: dict[str, list[dict[str, Any]]],
    dense: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    dense_attr: dict[str, torch.Tensor],
    cfg: dict[str, Any],
    seed: int,
) -> None:
    """The cascading randomization check of every method that explained the dense model."""
    from pellucid.metrics import model_randomization_check

    n_rand = min(cfg["randomization_examples"], x.shape[0])
    for method in dense_attr:
        check = model_randomization_check(
            dense,
            x[:n_rand],
            explainer(method, seed, image=x.ndim > 2),
            target=y[:n_rand],
            generator=torch.Generator().manual_seed(seed),
        )
        out.setdefault(method, []).append(
            {
                "seed": seed,
                "layers": list(check.layers),
                "median": [float(c.nanmedian()) for c in check.correlations],
                "fraction_passed": check.fraction_passed,
            }
        )


class InterpretabilityStage(Stage):
    """Scores explanation methods on dense, clipped and pruned variants of the models."""

    name = "interpretability"
    title = "Explanation quality of dense, clipped and pruned models"
    defaults = {
        "models": ["breast_cancer/MLP", "digits/SmallCNN"],
        "clip_models": ["breast_cancer/MLP", "digits/SmallCNN"],
        "methods": [
            "saliency",
            "input_x_gradient",
            "integrated_gradients",
            "smoothgrad",
            "guided_backprop",
            "deeplift",
            "occlusion",
        ],
        "clipping": ["agc", "autoclip"],
        # 0.99 collapses the breast-cancer MLP to the majority class on every seed: the
        # report shows how such a dead variant is excluded from the verdicts
        "unstructured": [0.5, 0.8, 0.95, 0.99],
        "structured": [0.3, 0.6],
        "finetune_epochs": 2,
        "n_explain": 24,
        "faithfulness_samples": 32,
        "sensitivity_samples": 3,
        "radius": 0.1,
        "surrogate_depth": 4,
        "randomization_examples": 16,
    }
    quick = {
        "models": ["breast_cancer/MLP"],
        "methods": ["saliency", "integrated_gradients", "occlusion"],
        "clipping": ["autoclip"],
        "unstructured": [0.8],
        "structured": [0.5],
        "finetune_epochs": 1,
        "n_explain": 16,
        "faithfulness_samples": 16,
        "sensitivity_samples": 2,
        "randomization_examples": 8,
    }

    def validate(self, cfg: dict[str, Any]) -> None:
        """Check this stage's config section (see :meth:`Stage.validate`).

        Raises:
            ConfigError: an unknown model, clipper or method, a level outside (0, 1), a
                count below its minimum, or a radius that is not a finite number > 0.
        """
        check_model_keys("interpretability.models", cfg["models"])
        check_model_keys("interpretability.clip_models", cfg["clip_models"])
        for clip in cfg["clipping"]:
            if clip not in CLIPPERS:
                raise ConfigError(
                    f"`interpretability.clipping` entries must be one of "
                    f"{', '.join(CLIPPERS)}; got {clip!r}."
                )
        for kind in ("unstructured", "structured"):
            if not all(0.0 < float(a) < 1.0 for a in cfg[kind]):
                raise ConfigError(
                    f"`interpretability.{kind}` levels must be in (0, 1); got {cfg[kind]!r}."
                )
        for method in cfg["methods"]:
            if method not in list_methods():
                raise ConfigError(
                    f"`interpretability.methods` entries must be registered "
                    f"methods ({', '.join(list_methods())}); got {method!r}."
                )
        for key, low in (
            ("n_explain", 2),
            ("finetune_epochs", 1),
            ("faithfulness_samples", 2),
            ("sensitivity_samples", 1),
            ("surrogate_depth", 1),
            ("randomization_examples", 1),
        ):
            value = cfg[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(
                    f"`interpretability.{key}` must be an integer >= {low}; got {value!r}."
                )
        radius = cfg["radius"]
        if not isinstance(radius, int | float) or not 0 < radius < math.inf:
            raise ConfigError(
                f"`interpretability.radius` must be a finite number > 0; got {radius!r}."
            )

    def run(self, ctx: StudyContext, cfg: dict[str, Any]) -> dict[str, Any]:
        # The models are tiny: intra-op threads only add synchronisation (and collapse when
        # the cores are shared), so this stage runs single-threaded and restores the setting.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._run(ctx, cfg)
        finally:
            torch.set_num_threads(threads)

    def _run(self, ctx: StudyContext, cfg: dict[str, Any]) -> dict[str, Any]:
        from pellucid.inspection import GlobalSurrogate
        from pellucid.pruning.measure import count_nonzeros, count_parameters

        start = time.perf_counter()
        out: dict[str, Any] = {"models": {}, "errors": []}
        for key in ctx.with_user_models(cfg["models"]):
            spec = ctx.spec(key)
            entry: dict[str, Any] = {"variants": {}, "randomization": {}}
            for seed in ctx.seeds:
                dense, ds, _ = ctx.trained(key, seed)
                x = ds.X_test[: cfg["n_explain"]]
                y = ds.y_test[: cfg["n_explain"]]
                methods = _methods(cfg, image=x.ndim > 2)
                entry["methods"] = methods
                dense_params = count_parameters(dense)
                dense_attr: dict[str, torch.Tensor] = {}
                recorder = ExampleRecorder(
                    key,
                    seed,
                    x,
                    y,
                    feature_names=list(ds.feature_names or []),
                    class_names=list(ds.class_names or []),
                    mean=ds.mean,
                    std=ds.std,
                )
                for name, family, level, model, acc in _variants(ctx, key, seed, cfg):
                    ctx.log(f"interpretability: {key} seed {seed} {name}")
                    sparsity = 1.0 - count_nonzeros(model) / dense_params
                    collapsed = _collapsed(model, ds)
                    if collapsed is not None:  # not scored: excluded from every verdict
                        ctx.log(f"interpretability: {key} seed {seed} {name} collapsed")
                        entry["variants"].setdefault(
                            name, {"family": family, "level": level, "runs": []}
                        )["runs"].append(
                            {"seed": seed, "sparsity": sparsity, "accuracy": acc,
                             "collapsed": collapsed, "methods": {}}
                        )  # fmt: skip
                        continue
                    surrogate = GlobalSurrogate(
                        model, kind="tree", max_depth=cfg["surrogate_depth"], random_state=seed
                    ).fit(ds.X_train, validation=ds.X_test)
                    run: dict[str, Any] = {
                        "seed": seed,
                        "sparsity": sparsity,
                        "accuracy": acc,
                        "fidelity": surrogate.fidelity_,
                        "leaves": surrogate.complexity_["leaves"],
                        "collapsed": None,
                    }
                    run["methods"] = score_variant(
                        model,
                        name,
                        key,
                        x,
                        y,
                        methods,
                        dense_attr,
                        cfg,
                        seed,
                        out["errors"],
                        recorder if seed == ctx.seeds[0] else None,
                    )
                    variant = entry["variants"].setdefault(
                        name, {"family": family, "level": level, "runs": []}
                    )
                    variant["runs"].append(run)
                _randomization(entry["randomization"], dense, x, y, dense_attr, cfg, seed)
                if seed == ctx.seeds[0]:
                    entry["examples"] = recorder.save(ctx.out_dir / "results" / "examples")
            entry["task"] = ds.task
            entry["model"] = spec.model
            out["models"][key] = entry
        out["seconds"] = time.perf_counter() - start
        return out

    def report(self, ctx: StudyContext, cfg: dict[str, Any], result: dict[str, Any]) -> Section:
        blocks: list[Any] = [
            Paragraph(
                "Each method explains the first test examples (their true class) of every model "
                "variant. Deletion/insertion AUC use the target class probability with removed "
                "features set to 0 (the training mean); faithfulness is the correlation of "
                "Bhatt et al. (2020); max-sensitivity follows Yeh et al. (2019); agreement is the "
                "Spearman correlation of |attributions| with the dense model's explanation. Values "
                "are means over seeds with 95% confidence half-widths."
            )
        ]
        excluded: list[str] = []
        for key, entry in result["models"].items():
            rows = []
            for name, variant in entry["variants"].items():
                dead = [r for r in variant["runs"] if r.get("collapsed")]
                if dead:
                    seeds = ", ".join(str(r["seed"]) for r in dead)
                    why = f"collapsed on seed(s) {seeds}: {dead[0]['collapsed']}"
                    rows.append([name, "excluded", why, *["–"] * (len(TABLE) - 1)])
                    excluded.append(f"{key} {name} ({why})")
                for method in entry.get("methods", []):
                    vals = [r["methods"][method] for r in variant["runs"] if method in r["methods"]]
                    if vals:
                        cells = [plus_minus(*mean_ci([num(v.get(m)) for v in vals])) for m in TABLE]
                        rows.append([name, method, *cells])
            columns = ["variant", "method", *(TABLE[m] for m in TABLE)]
            caption = f"{key}: explanation quality per variant"
            blocks.append(Table(columns, rows, caption=caption))
            if entry["randomization"]:
                blocks.append(
                    Figure(
                        randomization_png(key, entry),
                        f"{key}: cascading randomization check (dense model).",
                    )
                )
        if excluded:
            blocks.append(
                Paragraph(
                    "Excluded from the interpretability verdicts, because the model collapsed "
                    "(constant or one-class predictions, or accuracy at the majority-class "
                    "rate; a dead model's explanations look sparse and a surrogate copies it "
                    "perfectly, which is no evidence of interpretability): "
                    + "; ".join(excluded)
                    + ".",
                    kind="warning",
                )
            )
        if result.get("errors"):
            blocks.append(
                Paragraph("Not scored: " + "; ".join(result["errors"][:8]), kind="warning")
            )
        return Section(self.title, blocks)
