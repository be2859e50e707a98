"""Stage "training": train the reference models over the seeds; accuracy, time, size."""

from __future__ import annotations

from typing import Any

from pellucid.report.html import Figure, Paragraph, Section, Table, figure_png
from pellucid.study.context import StudyContext, check_model_keys
from pellucid.study.stages.base import Stage
from pellucid.study.stats import mean_std

__all__ = ["TrainingStage"]


class TrainingStage(Stage):
    """Trains each reference model once per seed (later stages reuse these weights)."""

    name = "training"
    title = "Reference models"
    defaults = {
        "models": [
            "digits/SmallCNN",
            "digits/TinyResNet",
            "digits/TinyTransformer",
            "breast_cancer/MLP",
            "wine/MLP",
        ],
        "user_models": [],
    }
    quick = {"models": ["digits/SmallCNN", "breast_cancer/MLP"]}

    def validate(self, cfg: dict[str, Any]) -> None:
        """Check this stage's config section (see :meth:`Stage.validate`).

        Raises:
            ConfigError: an unknown model or an invalid ``[[training.user_models]]`` entry.
        """
        from pellucid.sources import SourceError
        from pellucid.study.errors import ConfigError
        from pellucid.study.user_models import parse_user_models

        check_model_keys("training.models", cfg["models"])
        try:
            parse_user_models(cfg["user_models"])
        except SourceError as exc:
            raise ConfigError(str(exc)) from exc

    def run(self, ctx: StudyContext, cfg: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ctx.with_user_models(cfg["models"]):
            runs = []
            for seed in ctx.seeds:
                _, ds, record = ctx.trained(key, seed)
                runs.append(
                    {
                        "seed": seed,
                        "test": record["test"],
                        "seconds": record["seconds"],
                        "parameters": record["parameters"],
                        "curve": [
                            e.get("val_accuracy", e.get("val_r2"))
                            for e in record["history"]["epochs"]
                        ],
                        "train_loss": [e["loss"] for e in record["history"]["epochs"]],
                    }
                )
            out[key] = {"task": ds.task, "runs": runs}
            if key in ctx.user_models:
                user = ctx.user_models[key]
                out[key]["user"] = {
                    "description": user.describe(),
                    "data": ds.source,
                    "pretrained": user.pretrained,
                    "train_rows": len(ds.y_train),
                    "test_rows": len(ds.y_test),
                }
        return out

    def report(self, ctx: StudyContext, cfg: dict[str, Any], result: dict[str, Any]) -> Section:
        rows = []
        for key, entry in result.items():
            metric = "accuracy" if entry["task"] == "classification" else "r2"
            acc_mean, acc_std = mean_std([r["test"][metric] for r in entry["runs"]])
            sec_mean, _ = mean_std([r["seconds"] for r in entry["runs"]])
            rows.append([key, metric, acc_mean, acc_std, sec_mean, entry["runs"][0]["parameters"]])
        blocks: list[Any] = [
            Paragraph(
                "Each reference model is trained once per seed on its embedded dataset "
                "(standardized on the training split); test metrics are mean and standard "
                "deviation over the seeds."
            ),
            Table(
                ["model", "metric", "test mean", "test std", "train seconds", "parameters"],
                rows,
                caption="Test performance",
            ),
        ]
        users = [entry["user"] for entry in result.values() if "user" in entry]
        if users:
            blocks.append(
                Table(
                    ["your model and data", "weights", "train rows", "test rows"],
                    [
                        [
                            u["description"],
                            "your weights" if u["pretrained"] else "trained here",
                            u["train_rows"],
                            u["test_rows"],
                        ]
                        for u in users
                    ],
                    caption="Your models ([[training.user_models]]): a pretrained model is "
                    "evaluated as given; a factory without weights is trained from scratch.",
                )
            )
        blocks.append(Figure(_curves(result), "Test metric after every epoch (one line per seed)."))
        return Section(self.title, blocks)


def _curves(result: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (key, entry) in enumerate(result.items()):
        color = f"C{i}"
        for j, run in enumerate(entry["runs"]):
            label = key if j == 0 else None
            axes[0].plot(
                range(1, len(run["curve"]) + 1), run["curve"], color=color, alpha=0.8, label=label
            )
            axes[1].plot(
                range(1, len(run["train_loss"]) + 1),
                run["train_loss"],
                color=color,
                alpha=0.8,
                label=label,
            )
    axes[0].set(xlabel="epoch", ylabel="test accuracy / R²", title="Learning curves")
    axes[1].set(xlabel="epoch", ylabel="training loss", yscale="log", title="Training loss")
    axes[0].legend(fontsize=7)
    return figure_png(fig)
