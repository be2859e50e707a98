"""Stage "pruning": how much can be pruned, at what accuracy, size and measured speed.

Every reference model is pruned unstructured (weight masks, gradual cubic schedule during
fine-tuning, masks folded in) and structured (channels physically removed, then
fine-tuned), at several levels and over the seeds. Reported: test accuracy vs sparsity,
measured CPU latency (median of repeats at a fixed batch size) and saved-file size vs
sparsity, and the per-layer sparsity profile.
"""

from __future__ import annotations

import copy
import math
import statistics
from typing import Any

import torch

from pellucid.report.html import Figure, Paragraph, Section, Table, figure_png
from pellucid.study.context import StudyContext, check_model_keys
from pellucid.study.errors import ConfigError
from pellucid.study.stages.base import Stage
from pellucid.study.stats import mean_std

__all__ = ["PruningStage"]


def _levels(where: str, values: Any) -> None:
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1 for v in values
    ):
        raise ConfigError(f"`{where}` must be a list of fractions in [0, 1); got {values!r}.")


def _metric(metrics: dict[str, float]) -> float:
    return metrics.get("accuracy", metrics.get("r2", math.nan))


def _measure(
    model: torch.nn.Module, x: torch.Tensor, cfg: dict[str, Any], dense: torch.nn.Module
) -> dict[str, Any]:
    """Counts, file size and latency. Latency alternates with the dense model over 5 rounds
    (median of repeats each) so both see the same machine load; ``speedup`` is the median of
    the per-round ratios, robust to a busy machine."""
    from pellucid.pruning.measure import (
        count_nonzeros,
        count_parameters,
        latency,
        macs,
        serialized_size,
    )

    times: dict[str, list[float]] = {"dense": [], "model": []}
    repeats = max(3, cfg["latency_repeats"] // 5)
    for _ in range(5):
        for name, net in (("dense", dense), ("model", model)):
            lat = latency(net, x, batch_size=cfg["latency_batch"], warmup=1, n_repeats=repeats)
            times[name].append(lat.median)
    dense_s, model_s = statistics.median(times["dense"]), statistics.median(times["model"])
    ratio = statistics.median(d / m for d, m in zip(times["dense"], times["model"], strict=True))
    return {
        "parameters": count_parameters(model),
        "nonzeros": count_nonzeros(model),
        "macs": macs(model, x),
        "bytes": serialized_size(model),
        "latency_ms": model_s * 1e3,
        "dense_latency_ms": dense_s * 1e3,
        "speedup": ratio,
    }


PROBE_WIDTH = 32


def _latency_probe(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Measured speed-up of structured pruning on a TinyResNet big enough to be compute-bound."""
    from pellucid.models import TinyResNet
    from pellucid.pruning import plan_channel_pruning

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        dense = TinyResNet(in_channels=3, width=PROBE_WIDTH).eval()
        x = torch.randn(1, 3, 32, 32)
    rows = []
    for amount in cfg["structured"]:
        small = copy.deepcopy(dense)
        plan_channel_pruning(small, x, amount=float(amount)).apply_(small)
        rows.append({"amount": float(amount), **_measure(small, x, cfg, dense)})
    return rows


class PruningStage(Stage):
    """Prunes the reference models at several levels, fine-tunes and measures them."""

    name = "pruning"
    title = "Pruning: accuracy, size and measured speed"
    defaults = {
        "models": ["digits/SmallCNN", "digits/TinyResNet", "breast_cancer/MLP"],
        "unstructured": [0.5, 0.7, 0.9, 0.95],
        "structured": [0.25, 0.5, 0.75],
        "finetune_epochs": 5,
        "unstructured_lr": 5e-3,
        "structured_lr": 3e-3,
        "latency_batch": 32,
        "latency_repeats": 15,
        "max_seeds": 3,
        "latency_probe": True,
    }
    quick = {
        "models": ["digits/SmallCNN", "breast_cancer/MLP"],
        "unstructured": [0.5, 0.9],
        "structured": [0.5],
        "finetune_epochs": 1,
        "latency_repeats": 3,
        "max_seeds": 1,
        "latency_probe": False,
    }

    def validate(self, cfg: dict[str, Any]) -> None:
        """Check this stage's config section (see :meth:`Stage.validate`).

        Raises:
            ConfigError: an unknown model, a level outside (0, 1), a count < 1 or a
                learning rate that is not > 0.
        """
        check_model_keys("pruning.models", cfg["models"])
        _levels("pruning.unstructured", cfg["unstructured"])
        _levels("pruning.structured", cfg["structured"])
        for key in ("finetune_epochs", "latency_batch", "latency_repeats", "max_seeds"):
            value = cfg[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"`pruning.{key}` must be an integer >= 1; got {value!r}.")
        for key in ("unstructured_lr", "structured_lr"):
            if not isinstance(cfg[key], int | float) or not cfg[key] > 0:
                raise ConfigError(f"`pruning.{key}` must be a number > 0; got {cfg[key]!r}.")

    def run(self, ctx: StudyContext, cfg: dict[str, Any]) -> dict[str, Any]:
        from pellucid.pruning import prune_and_finetune, sparsity

        out: dict[str, Any] = {}
        seeds = ctx.seeds[: cfg["max_seeds"]]
        for key in ctx.with_user_models(cfg["models"]):
            spec = ctx.spec(key)
            loss = "cross_entropy"
            runs: list[dict[str, Any]] = []
            profiles: dict[str, dict[str, float]] = {}
            for seed in seeds:
                dense, ds, record = ctx.trained(key, seed)
                loss = "cross_entropy" if ds.task == "classification" else "mse"
                x = ds.X_test[:1]
                base = _measure(dense, x, cfg, dense)
                runs.append(
                    {
                        "seed": seed,
                        "kind": "dense",
                        "amount": 0.0,
                        "metric": _metric(record["test"]),
                        **base,
                    }
                )
                for kind in ("unstructured", "structured"):
                    for amount in cfg[kind]:
                        ctx.log(f"pruning {key} seed {seed}: {kind} {amount:g}")
                        with ctx.timer() as timer:
                            res = prune_and_finetune(
                                dense,
                                ds,
                                kind=kind,
                                amount=float(amount),
                                epochs=cfg["finetune_epochs"],
                                lr=cfg[f"{kind}_lr"],
                                batch_size=spec.batch_size,
                                seed=seed,
                                loss=loss,
                                schedule="gradual" if kind == "unstructured" else "one_shot",
                            )
                        row = {
                            "seed": seed,
                            "kind": kind,
                            "amount": float(amount),
                            "metric": _metric(res.metrics),
                            "seconds": timer.seconds,
                            **_measure(res.model, x, cfg, dense),
                        }
                        runs.append(row)
                        if seed == seeds[0]:
                            if kind == "unstructured":
                                profiles[f"{kind}:{amount:g}"] = sparsity(res.model).layers
                            else:
                                dense_layers = {
                                    n: m.weight.numel()
                                    for n, m in dense.named_modules()
                                    if hasattr(m, "weight") and isinstance(m.weight, torch.Tensor)
                                }
                                profiles[f"{kind}:{amount:g}"] = {
                                    n: 1.0 - m.weight.numel() / dense_layers[n]
                                    for n, m in res.model.named_modules()
                                    if n in dense_layers
                                    and isinstance(
                                        m, torch.nn.Linear | torch.nn.modules.conv._ConvNd
                                    )
                                }
            out[key] = {
                "task": "classification" if loss == "cross_entropy" else "regression",
                "runs": runs,
                "profiles": profiles,
            }
        probe = _latency_probe(cfg) if cfg["latency_probe"] else []
        return {"models": out, "latency_probe": probe}

    def report(self, ctx: StudyContext, cfg: dict[str, Any], result: dict[str, Any]) -> Section:
        probe = result["latency_probe"]
        result = result["models"]
        rows, findings = [], []
        for key, entry in result.items():
            key_rows, key_findings = _rows_and_findings(key, entry, cfg["latency_batch"])
            rows += key_rows
            findings += key_findings
        blocks: list[Any] = [
            Paragraph(
                "Unstructured pruning masks the smallest-magnitude weights (global L1 ranking) "
                "along Zhu & Gupta's cubic schedule during fine-tuning, then folds the masks "
                "into the weights; structured pruning removes whole channels (coupled groups "
                "from the traced graph, group-L2 importance) and fine-tunes the smaller model. "
                "Latency is measured (median of repeats, CPU, eval mode), never a MACs ratio; "
                "file size is the pellucid file (sparse weights stored as bitmask + values)."
            ),
            *[Paragraph(text, kind="finding") for text in findings],
            Table(
                [
                    "model",
                    "kind",
                    "amount",
                    "test mean",
                    "test std",
                    "Δ points",
                    "params",
                    "non-zeros",
                    "file KiB",
                    "latency ms",
                    "speed-up",
                ],
                rows,
                caption=f"Mean over seeds; latency at batch {cfg['latency_batch']}.",
            ),
            Figure(
                _plot_tradeoffs(result),
                "Accuracy, measured speed-up (ratio of median latencies, measured "
                "alternately with the dense model) and file size vs pruning level "
                "(solid: unstructured, dashed: structured).",
            ),
            Figure(
                _plot_profiles(result),
                "Per-layer sparsity (first seed): fraction of zero "
                "weights (unstructured) or of removed weights (structured).",
            ),
        ]
        if probe:
            blocks.append(
                Table(
                    ["channels removed", "params", "MACs / example", "latency ms", "speed-up"],
                    [
                        [p["amount"], p["parameters"], p["macs"], p["latency_ms"], p["speedup"]]
                        for p in probe
                    ],
                    caption=(
                        "Structured pruning at a realistic resolution: TinyResNet(width="
                        f"{PROBE_WIDTH}) on 3x32x32 inputs (untrained weights; latency does "
                        f"not depend on them), batch {cfg['latency_batch']}, measured "
                        "alternately with the dense model. On 8x8 digits the models above are "
                        "too small for compute to dominate their latency."
                    ),
                )
            )
        return Section(self.title, blocks)


def _rows_and_findings(
    key: str, entry: dict[str, Any], latency_batch: int
) -> tuple[list[list[Any]], list[str]]:
    """One model's table rows (per kind and level) and its headline sentences."""
    rows, findings = [], []
    summary = _summarize(entry["runs"])
    dense_metric = summary[("dense", 0.0)]["metric"][0]
    for (kind, amount), s in summary.items():
        m, sd = s["metric"]
        rows.append(
            [
                key,
                kind,
                amount,
                m,
                sd,
                (m - dense_metric) * 100,
                s["parameters"],
                s["nonzeros"],
                s["bytes"] / 1024,
                s["latency_ms"],
                s["speedup"] if kind != "dense" else 1.0,
            ]
        )
    for kind, amount in (("unstructured", 0.9), ("structured", 0.5)):
        if (kind, amount) in summary:
            s = summary[(kind, amount)]
            size = s["bytes"] / summary[("dense", 0.0)]["bytes"]
            findings.append(
                f"{key}, {kind} {amount:.0%}: test metric {s['metric'][0]:.4f} vs dense "
                f"{dense_metric:.4f} ({(s['metric'][0] - dense_metric) * 100:+.2f} "
                f"points), measured speed-up {s['speedup']:.2f}x at batch "
                f"{latency_batch}, file {size:.0%} of dense."
            )
    return rows, findings


def _summarize(runs: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, Any]]:
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["kind"], run["amount"]), []).append(run)
    summary = {}
    for k, items in groups.items():
        summary[k] = {
            "metric": mean_std([r["metric"] for r in items]),
            **{
                f: sum(r[f] for r in items) / len(items)
                for f in ("parameters", "nonzeros", "bytes", "latency_ms")
            },
            "speedup": sum(r.get("speedup", 1.0) for r in items) / len(items),
        }
    # The dense model's latency is taken from the rounds measured alongside each pruned model
    # (its own first measurement includes one-off warm-up costs of a freshly trained model).
    paired = [
        r["dense_latency_ms"] for r in runs if r["kind"] != "dense" and "dense_latency_ms" in r
    ]
    if ("dense", 0.0) in summary and paired:
        summary[("dense", 0.0)]["latency_ms"] = statistics.median(paired)
    return summary


def _plot_tradeoffs(result: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for i, (key, entry) in enumerate(result.items()):
        summary = _summarize(entry["runs"])
        dense = summary[("dense", 0.0)]
        for kind, style in (("unstructured", "-o"), ("structured", "--s")):
            levels = sorted(a for (k, a) in summary if k == kind)
            if not levels:
                continue
            xs = [0.0, *levels]
            pts = [dense, *[summary[(kind, a)] for a in levels]]
            label = f"{key} ({kind})"
            axes[0].plot(xs, [p["metric"][0] for p in pts], style, color=f"C{i}", label=label)
            speed = [1.0, *[p["speedup"] for p in pts[1:]]]
            axes[1].plot(xs, speed, style, color=f"C{i}")
            axes[2].plot(xs, [p["bytes"] / 1024 for p in pts], style, color=f"C{i}")
    axes[0].set(
        xlabel="pruned fraction (weights or channels)",
        ylabel="test accuracy / R²",
        title="Accuracy vs sparsity",
    )
    axes[1].set(
        xlabel="pruned fraction",
        ylabel="dense latency / pruned latency",
        title="Measured speed-up (CPU)",
    )
    axes[2].set(
        xlabel="pruned fraction", ylabel="file size (KiB)", yscale="log", title="Saved file size"
    )
    axes[0].legend(fontsize=6)
    return figure_png(fig)


def _plot_profiles(result: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(result), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.4 * n, 3.6), squeeze=False)
    for ax, (key, entry) in zip(axes[0], result.items(), strict=False):
        profiles = entry["profiles"]
        layers = sorted(
            {layer for p in profiles.values() for layer in p},
            key=lambda name: (
                list(next(iter(profiles.values()))).index(name)
                if name in next(iter(profiles.values()))
                else 0
            ),
        )
        width = 0.8 / max(len(profiles), 1)
        for j, (label, profile) in enumerate(profiles.items()):
            ax.bar(
                [i + j * width for i in range(len(layers))],
                [profile.get(layer, 0.0) for layer in layers],
                width=width,
                label=label,
            )
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))])
        ax.set_xticklabels(layers, rotation=60, fontsize=6, ha="right")
        ax.set(ylim=(0, 1), ylabel="pruned fraction", title=key)
        ax.legend(fontsize=5)
    return figure_png(fig)
