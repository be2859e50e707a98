"""Stage "clipping": does clipping keep a diverging network trainable, and at what cost?

A deep plain ReLU network (``DeepPlainNet``, no normalisation, weights drawn above the
variance-preserving scale) trained with SGD at a high learning rate diverges without
clipping. It is trained over the study's seeds with no clipping, value clipping, global-norm
clipping, unit-wise AGC, AutoClip and ZClip. Reported: loss curves, test accuracy,
non-finite steps, fraction of steps clipped, time per step, the gradient-flow figure and
the GradientMonitor's diagnosis of the unclipped run.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pellucid.report.html import Figure, Paragraph, Section, Table, figure_png
from pellucid.study.context import StudyContext
from pellucid.study.errors import ConfigError
from pellucid.study.stages.base import Stage
from pellucid.study.stats import mean_std

__all__ = ["ClippingStage"]

METHODS = ("none", "value", "global_norm", "agc", "autoclip", "zclip", "weight_clip")
_LABELS = {
    "none": "no clipping",
    "value": "value",
    "global_norm": "global norm",
    "agc": "AGC (unit-wise)",
    "autoclip": "AutoClip",
    "zclip": "ZClip",
    "weight_clip": "weight clip",
}


def _transform(name: str, model: torch.nn.Module, cfg: dict[str, Any]) -> Any:
    from pellucid.clipping import (
        AutoClip,
        ZClip,
        adaptive_clip,
        classifier_parameters,
        clip_by_global_norm,
        clip_by_value,
    )

    if name == "value":
        return clip_by_value(cfg["clip_value"])
    if name == "global_norm":
        return clip_by_global_norm(cfg["max_norm"])
    if name == "agc":  # the paper leaves the classifier unclipped
        return adaptive_clip(cfg["agc_clip_factor"], exclude=classifier_parameters(model))
    if name == "autoclip":
        return AutoClip(cfg["autoclip_percentile"])
    if name == "zclip":  # max_norm bounds the warm-up, as the authors' reference code does
        return ZClip(max_norm=cfg["max_norm"])
    return None


def _finite(x: Any) -> float:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else math.nan


class ClippingStage(Stage):
    """Trains a diverging deep plain network with each clipping method over the seeds."""

    name = "clipping"
    title = "Clipping: keeping a diverging network trainable"
    defaults = {
        "methods": list(METHODS),
        "depth": 12,
        "width": 64,
        "init_scale": 1.7,
        "lr": 0.1,
        "epochs": 8,
        "batch_size": 64,
        "clip_value": 0.1,
        "max_norm": 1.0,
        "agc_clip_factor": 0.02,
        "autoclip_percentile": 10.0,
        "weight_clip_value": 0.2,
        "log_every": 5,
        "user_models": [],
    }
    quick = {"epochs": 2, "depth": 8}

    def validate(self, cfg: dict[str, Any]) -> None:
        """Check this stage's config section (see :meth:`Stage.validate`).

        Raises:
            ConfigError: a ``clipping`` value is out of range (methods, sizes, rates,
                ``autoclip_percentile``).
        """
        unknown = [m for m in cfg["methods"] if m not in METHODS]
        if unknown or not cfg["methods"]:
            raise ConfigError(
                f"`clipping.methods` must be a non-empty list of {', '.join(METHODS)}; "
                f"got {cfg['methods']!r}."
            )
        for key, high in (
            ("depth", 1000),
            ("width", 1 << 14),
            ("epochs", 10_000),
            ("batch_size", 1 << 20),
            ("log_every", 1 << 20),
        ):
            value = cfg[key]
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
                raise ConfigError(
                    f"`clipping.{key}` must be an integer in [1, {high}]; got {value!r}."
                )
        keys = (
            "init_scale",
            "lr",
            "clip_value",
            "max_norm",
            "agc_clip_factor",
            "weight_clip_value",
        )
        for key in keys:
            value = cfg[key]
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not 0 < value < math.inf
            ):
                raise ConfigError(f"`clipping.{key}` must be a finite number > 0; got {value!r}.")
        p = cfg["autoclip_percentile"]
        if not isinstance(p, int | float) or isinstance(p, bool) or not 0 < p <= 100:
            raise ConfigError(f"`clipping.autoclip_percentile` must be in (0, 100]; got {p!r}.")

    def _fit(
        self,
        ctx: StudyContext,
        cfg: dict[str, Any],
        method: str,
        seed: int,
        monitor: Any = None,
        user: str | None = None,
    ) -> tuple[dict[str, Any], Any]:
        from pellucid.clipping import GradientClipper, WeightClipper, weight_clip
        from pellucid.models import build_model
        from pellucid.training import evaluate, fit

        recipe: dict[str, Any] = {
            "epochs": cfg["epochs"],
            "optimizer": "sgd",
            "lr": cfg["lr"],
            "batch_size": cfg["batch_size"],
        }
        if user is not None:  # the user's factory, data and training recipe
            spec = ctx.spec(user)
            ds = ctx.dataset(spec.dataset)
            model = spec.build(ds, seed)
            recipe = {
                "epochs": spec.quick_epochs if ctx.quick else spec.epochs,
                "optimizer": spec.optimizer,
                "lr": spec.lr,
                "batch_size": spec.batch_size,
            }
        else:
            ds = ctx.dataset("digits", seed=seed)
            model = build_model(
                "DeepPlainNet",
                seed=seed,
                in_features=64,
                n_classes=ds.n_classes,
                depth=cfg["depth"],
                width=cfg["width"],
                activation="relu",
                init_scale=cfg["init_scale"],
            )
        clipper = GradientClipper(
            _transform(method, model, cfg), nonfinite="propagate" if method == "none" else "skip"
        )
        weights = (
            [WeightClipper(weight_clip(cfg["weight_clip_value"]), nonfinite="skip")]
            if method == "weight_clip"
            else []
        )
        history = fit(
            model,
            ds.train,
            **recipe,
            seed=seed,
            loss="cross_entropy" if ds.task == "classification" else "mse",
            clipper=clipper,
            monitor=monitor,
            callbacks=weights,
            progress=False,
        )
        test = evaluate(model, ds.test)
        summary = clipper.summary()
        steps = max(len(history.step_losses), 1)
        run = {
            "seed": seed,
            "accuracy": test.get("accuracy", test.get("r2", math.nan)),
            "loss": test.get("loss", test.get("mse", math.nan)),
            "step_losses": history.step_losses,
            "nonfinite_steps": summary["nonfinite_steps"],
            "skipped_steps": summary["skipped_steps"],
            "clipped_fraction": summary["clipped_fraction"],
            "ms_per_step": 1e3 * history.seconds / steps,
            "steps": len(history.step_losses),
            "median_norm": summary["median_norm_before"],
        }
        return run, history

    def run(self, ctx: StudyContext, cfg: dict[str, Any]) -> dict[str, Any]:
        from pellucid.monitoring import GradientMonitor

        previous = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny layers: threads only add synchronisation
        torch.set_flush_denormal(True)  # vanishing gradients must not hit slow denormal paths
        try:
            out: dict[str, Any] = {"methods": {}, "monitor": {}}
            for method in cfg["methods"]:
                runs = []
                for seed in ctx.seeds:
                    ctx.log(f"clipping: {method} (seed {seed})")
                    run, _ = self._fit(ctx, cfg, method, seed)
                    runs.append(run)
                out["methods"][method] = runs
            users: dict[str, Any] = {}
            for name in cfg["user_models"]:
                users[name] = {}
                for method in cfg["methods"]:
                    ctx.log(f"clipping: {name} with {method}")
                    users[name][method] = [
                        self._fit(ctx, cfg, method, seed, user=name)[0] for seed in ctx.seeds
                    ]
            if users:
                out["user_models"] = users
            # the monitored runs (first seed): the unclipped one, and global-norm clipping
            for method in ("none", "global_norm"):
                monitor = GradientMonitor(log_every=cfg["log_every"])
                self._fit(ctx, cfg, method, ctx.seeds[0], monitor=monitor)
                out["monitor"][method] = {
                    "steps": monitor.steps,
                    "layer_norms": monitor.layer_norms(),
                    "findings": [f.to_dict() for f in monitor.diagnose()],
                }
            return out
        finally:
            torch.set_flush_denormal(False)
            torch.set_num_threads(previous)

    def report(self, ctx: StudyContext, cfg: dict[str, Any], result: dict[str, Any]) -> Section:
        methods = result["methods"]
        rows = []
        diverged: dict[str, int] = {}
        for method, runs in methods.items():
            accs = [_finite(r["accuracy"]) for r in runs]
            acc_mean, acc_std = mean_std(accs)
            diverged[method] = sum(1 for r in runs if _diverged(r))
            rows.append(
                [
                    _LABELS.get(method, method),
                    acc_mean,
                    acc_std,
                    f"{diverged[method]}/{len(runs)}",
                    mean_std([float(r["nonfinite_steps"]) for r in runs])[0],
                    mean_std([_finite(r["clipped_fraction"]) for r in runs])[0],
                    mean_std([_finite(r["ms_per_step"]) for r in runs])[0],
                ]
            )
        blocks: list[Any] = [
            Paragraph(
                f"DeepPlainNet (depth {cfg['depth']}, width {cfg['width']}, ReLU, no "
                f"normalisation, weights N(0, {cfg['init_scale']}²/fan_in)) on digits, SGD "
                f"with momentum 0.9 at lr {cfg['lr']}, {cfg['epochs']} epochs, seeds "
                f"{', '.join(map(str, ctx.seeds))}. Bounds: value {cfg['clip_value']}, global "
                f"norm {cfg['max_norm']}, weight clip ±{cfg['weight_clip_value']} after every step, AGC clip factor {cfg['agc_clip_factor']} (classifier "
                f"excluded), AutoClip {cfg['autoclip_percentile']}th percentile, ZClip defaults "
                f"(alpha 0.97, z 2.5, 25 warm-up steps bounded by {cfg['max_norm']}). Clipped "
                "runs skip steps with NaN/inf gradients; the unclipped run is plain PyTorch."
            ),
            Table(
                [
                    "method",
                    "test accuracy",
                    "std",
                    "diverged runs",
                    "non-finite steps",
                    "fraction of steps clipped",
                    "ms / step (1 thread)",
                ],
                rows,
                caption="Clipping methods over the seeds (a run counts as diverged when "
                "its final loss is not finite or its accuracy is at chance).",
            ),
        ]
        blocks.append(Paragraph(_verdict(methods, diverged), kind="finding"))
        blocks.append(
            Figure(
                _loss_figure(methods),
                "Training loss per step (one line per seed; gaps are NaN/inf losses).",
            )
        )
        monitor = result.get("monitor", {})
        if monitor:
            blocks.append(
                Figure(
                    _flow_figure(monitor),
                    "Gradient flow: per-layer gradient "
                    "norm over the steps of the first seed (x: non-finite).",
                )
            )
            findings = monitor.get("none", {}).get("findings", [])
            if findings:
                blocks.append(Paragraph("GradientMonitor's diagnosis of the unclipped run:"))
                blocks += [Paragraph(f["message"], kind="warning") for f in findings[:4]]
            else:
                blocks.append(
                    Paragraph(
                        "GradientMonitor found nothing wrong with the unclipped run.", kind="note"
                    )
                )
        blocks += _user_blocks(ctx, result.get("user_models", {}))
        return Section(self.title, blocks)


def _user_blocks(ctx: StudyContext, users: dict[str, Any]) -> list[Any]:
    """One table per user model retrained under each clipping method."""
    blocks: list[Any] = []
    for name, methods in users.items():
        rows = [
            [
                _LABELS.get(method, method),
                *mean_std([_finite(r["accuracy"]) for r in runs]),
                mean_std([float(r["nonfinite_steps"]) for r in runs])[0],
                mean_std([_finite(r["clipped_fraction"]) for r in runs])[0],
                mean_std([_finite(r["ms_per_step"]) for r in runs])[0],
            ]
            for method, runs in methods.items()
        ]
        spec = ctx.user_models.get(name)
        where = spec.describe() if spec is not None else name
        blocks.append(
            Table(
                [
                    "method",
                    "test metric",
                    "std",
                    "non-finite steps",
                    "clipped fraction",
                    "ms / step",
                ],
                rows,
                caption=f"Your model {where}, retrained from its factory under each method "
                "(its own optimizer, learning rate and epochs; test accuracy, or R² for "
                "regression).",
            )
        )
    return blocks


def _diverged(run: dict[str, Any]) -> bool:
    loss = _finite(run["loss"])
    return not math.isfinite(loss) or _finite(run["accuracy"]) < 0.2


def _verdict(methods: dict[str, Any], diverged: dict[str, int]) -> str:
    parts = []
    if "none" in methods:
        n = len(methods["none"])
        parts.append(f"Without clipping {diverged['none']} of {n} runs diverged.")
    best = max(
        (m for m in methods if m != "none"),
        key=lambda m: mean_std([_finite(r["accuracy"]) for r in methods[m]])[0],
        default=None,
    )
    if best is not None:
        acc = mean_std([_finite(r["accuracy"]) for r in methods[best]])[0]
        parts.append(
            f"The best method here is {_LABELS.get(best, best)} (mean test accuracy {acc:.3f})."
        )
    failing = [_LABELS.get(m, m) for m in methods if m != "none" and diverged[m]]
    if failing:
        parts.append("Still diverging in some runs: " + ", ".join(failing) + ".")
    return " ".join(parts)


def _loss_figure(methods: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (method, runs) in enumerate(methods.items()):
        for j, run in enumerate(runs):
            losses = [_finite(v) for v in run["step_losses"]]
            ax.plot(
                range(len(losses)),
                losses,
                color=f"C{i}",
                alpha=0.8,
                lw=1,
                label=_LABELS.get(method, method) if j == 0 else None,
            )
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title="Training loss")
    ax.legend(fontsize=7, ncol=2)
    return figure_png(fig)


def _flow_figure(monitor: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pellucid.plot.gradients import gradient_flow

    fig, axes = plt.subplots(1, len(monitor), figsize=(5.5 * len(monitor), 3.6), squeeze=False)
    for ax, (method, data) in zip(axes[0], monitor.items(), strict=False):
        norms = {k: [_finite(v) for v in vals] for k, vals in data["layer_norms"].items()}
        gradient_flow({"steps": data["steps"], "layer_norms": norms}, ax=ax)
        ax.set_title(f"Gradient flow: {_LABELS.get(method, method)}")
    return figure_png(fig)
