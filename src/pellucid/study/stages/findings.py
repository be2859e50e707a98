"""Stage "findings": the study's verdict, in plain sentences backed by numbers.

It reads the "interpretability" stage's per-seed scores and answers: does pruning (and does
clipping) make the explanations more or less faithful, sparser, more stable; which method
is most faithful; which methods fail the randomization check. Every comparison is paired
over seeds (same seed, same test examples, same perturbations): the mean difference with
its 95% t-interval, called significant only when the interval excludes zero.
"""

from __future__ import annotations

import math
from typing import Any

from pellucid.report.html import Figure, Paragraph, Section, Table, figure_png
from pellucid.study.context import StudyContext
from pellucid.study.errors import ConfigError
from pellucid.study.stages.base import Stage
from pellucid.study.stats import compare, mean_ci

__all__ = ["ORIENTATION", "FindingsStage"]


def _num(value: Any) -> float:
    """A stored number (NaN is stored as null in JSON)."""
    return math.nan if value is None else float(value)


#: metric -> (label, +1 when higher is "more", the word for more, the word for less)
ORIENTATION: dict[str, tuple[str, int, str, str]] = {
    "faithfulness": ("faithfulness correlation", +1, "more faithful", "less faithful"),
    "deletion_auc": ("deletion AUC", -1, "more faithful", "less faithful"),
    "insertion_auc": ("insertion AUC", +1, "more faithful", "less faithful"),
    "sparseness": ("sparseness (Gini)", +1, "sparser", "less sparse"),
    "complexity": ("complexity (entropy)", -1, "simpler", "more complex"),
    "max_sensitivity": ("max-sensitivity", -1, "more stable", "less stable"),
}
QUESTIONS = ("faithfulness", "deletion_auc", "sparseness", "max_sensitivity")


def _seed_means(runs: list[dict[str, Any]], metric: str, methods: list[str]) -> dict[int, float]:
    """Per seed: the metric averaged over the given methods (NaN when one is missing)."""
    out = {}
    for run in runs:
        vals = [_num(run["methods"].get(m, {}).get(metric)) for m in methods]
        out[run["seed"]] = sum(vals) / len(vals) if vals else math.nan
    return out


def _paired(dense: dict[int, float], other: dict[int, float]) -> dict[str, Any]:
    seeds = sorted(s for s in dense if s in other and not math.isnan(dense[s] + other[s]))
    a = [dense[s] for s in seeds]
    b = [other[s] for s in seeds]
    result = (
        compare(a, b)
        if seeds
        else {"diff": math.nan, "ci": math.nan, "significant": False, "n": 0.0}
    )
    result["before"] = sum(a) / len(a) if a else math.nan
    result["after"] = sum(b) / len(b) if b else math.nan
    return result


def _sentence(model: str, what: str, metric: str, cmp: dict[str, Any]) -> str:
    label, sign, more, less = ORIENTATION[metric]
    if math.isnan(cmp["diff"]):
        return f"{model}, {what}: no {label} values to compare."
    direction = more if cmp["diff"] * sign > 0 else less
    ci = "" if math.isnan(cmp["ci"]) else f", 95% CI ±{cmp['ci']:.3f}"
    n = int(cmp["n"])
    if cmp["significant"]:
        verdict = f"{direction} (significant over {n} seeds)"
    elif cmp["diff"] == 0:
        return (
            f"{model}, {what}: the {label} of the explanations does not change "
            f"({cmp['before']:.3f}; mean over methods)."
        )
    else:
        verdict = (
            f"{direction} on average, but the difference is not significant "
            f"({n} seed{'s' if n != 1 else ''})"
        )
    return (
        f"{model}, {what}: explanations are {verdict} by {label}: {cmp['before']:.3f} → "
        f"{cmp['after']:.3f} (difference {cmp['diff']:+.3f}{ci}; mean over methods)."
    )


def _best_method(key: str, metric: str, methods: list[str], runs: list[dict[str, Any]]) -> str:
    """Which method scores best on the dense model, and is its lead over the next significant?"""
    label, sign = ORIENTATION[metric][0], ORIENTATION[metric][1]
    ranking = []
    for method in methods:
        per_seed = {r["seed"]: _num(r["methods"].get(method, {}).get(metric)) for r in runs}
        mean, half = mean_ci([v for v in per_seed.values() if not math.isnan(v)])
        if not math.isnan(mean):
            ranking.append((sign * mean, half, method, per_seed))
    if not ranking:
        return ""
    ranking.sort(key=lambda item: item[0], reverse=True)
    score, half, method, per_seed = ranking[0]
    ci = "" if math.isnan(half) else f" ± {half:.3f}"
    text = (
        f"{key}: by {label}, the most faithful method on the dense model is {method} "
        f"({sign * score:.3f}{ci})"
    )
    if len(ranking) > 1:
        runner = ranking[1]
        cmp = _paired(runner[3], per_seed)
        margin = "a significant margin" if cmp["significant"] else "not a significant margin"
        text += (
            f"; ahead of {runner[2]} ({sign * runner[0]:.3f}) by {abs(cmp['diff']):.3f}, {margin}"
        )
    return text + "."


def _live(variant: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of a variant whose model did not collapse (the only ones that are scored)."""
    return [r for r in variant["runs"] if not r.get("collapsed")]


def _describe_variant(name: str, variant: dict[str, Any]) -> str:
    sparsity = [_num(r["sparsity"]) for r in variant["runs"]]
    mean = sum(sparsity) / len(sparsity) if sparsity else math.nan
    family = variant["family"]
    if family == "clipped":
        return f"training with {name.split(':', 1)[1]} clipping"
    return f"{family} pruning at {variant['level']:g} ({100 * mean:.0f}% of weights removed)"


def _focus(variants: dict[str, Any]) -> dict[str, str]:
    """The variants the sentences speak of: per pruning family the highest level that still
    works, and every clipped variant."""
    focus = {}
    for family in ("unstructured", "structured"):
        levels = [
            (v["level"], n) for n, v in variants.items() if v["family"] == family and _live(v)
        ]
        if levels:
            focus[max(levels)[1]] = family
    focus.update({n: "clipped" for n, v in variants.items() if v["family"] == "clipped"})
    return focus


def _collapse_sentence(key: str, name: str, variant: dict[str, Any]) -> str | None:
    """Why a variant's collapsed seeds are left out of the explanation-quality verdicts."""
    dead = [r for r in variant["runs"] if r.get("collapsed")]
    if not dead:
        return None
    return (
        f"{key}, {_describe_variant(name, variant)}: excluded from the "
        f"explanation-quality verdicts on {len(dead)} of {len(variant['runs'])} "
        f"seed(s), because the model collapsed ({dead[0]['collapsed']}). A dead "
        "model's explanations look sparse and a surrogate copies it perfectly; that "
        "is no evidence that pruning makes a model more interpretable."
    )


def _row(name: str, label: str, cmp: dict[str, Any]) -> list[Any]:
    return [name, label, cmp["before"], cmp["after"], cmp["diff"], cmp["ci"], cmp["significant"]]


def _compare_variant(
    key: str,
    name: str,
    variant: dict[str, Any],
    dense_runs: list[dict[str, Any]],
    methods: list[str],
    focused: bool,
) -> tuple[list[list[Any]], list[str]]:
    """Table rows (accuracy, then every metric) of one variant against the dense model, and
    the sentences when the variant is one the verdict speaks of."""
    sentences: list[str] = []
    acc = _paired(
        {r["seed"]: _num(r.get("accuracy")) for r in dense_runs},
        {r["seed"]: _num(r.get("accuracy")) for r in variant["runs"]},
    )
    rows = [_row(name, "test accuracy", acc)]
    if focused:
        sentences.append(
            f"{key}, {_describe_variant(name, variant)}: test accuracy "
            f"{acc['before']:.3f} → {acc['after']:.3f} (difference {acc['diff']:+.3f}"
            + ("" if math.isnan(acc["ci"]) else f", 95% CI ±{acc['ci']:.3f}")
            + ("; significant" if acc["significant"] else "; not significant")
            + ")."
        )
    for metric in ORIENTATION:
        cmp = _paired(
            _seed_means(dense_runs, metric, methods),
            _seed_means(_live(variant), metric, methods),
        )
        rows.append(_row(name, ORIENTATION[metric][0], cmp))
        if focused and metric in QUESTIONS:
            sentences.append(_sentence(key, _describe_variant(name, variant), metric, cmp))
    return rows, sentences


def _randomization_sentences(key: str, entry: dict[str, Any]) -> list[str]:
    """Which methods fail (and pass) the model-parameter randomization check."""
    failing: list[str] = []
    passing: list[str] = []
    for method, runs in entry.get("randomization", {}).items():
        frac = sum(_num(r["fraction_passed"]) for r in runs) / len(runs)
        final = sum(_num(r["median"][-1]) for r in runs) / len(runs)
        (failing if frac < 0.5 else passing).append(f"{method} ({final:.2f})")
    sentences = []
    if failing:
        sentences.append(
            f"{key}: {', '.join(failing)} fail the randomization check: with every layer "
            "re-initialized, their explanations still correlate with the original ones above "
            "0.5 for most examples (median Spearman in brackets), so they reflect the input "
            "more than the learned weights."
        )
    if passing:
        sentences.append(
            f"{key}: {', '.join(passing)} pass the randomization check (median "
            "Spearman after full randomization in brackets)."
        )
    return sentences


def _model_findings(key: str, entry: dict[str, Any]) -> dict[str, Any]:
    methods = entry.get("methods", [])
    variants = entry["variants"]
    dense_runs = variants["dense"]["runs"]
    sentences: list[str] = []
    rows: list[list[Any]] = []
    focus = _focus(variants)
    for name, variant in variants.items():
        if name == "dense":
            continue
        collapsed = _collapse_sentence(key, name, variant)
        if collapsed:
            sentences.append(collapsed)
        more_rows, more = _compare_variant(key, name, variant, dense_runs, methods, name in focus)
        rows += more_rows
        sentences += more
    # Most faithful method on the dense model, by each faithfulness metric.
    for metric in ("faithfulness", "deletion_auc"):
        text = _best_method(key, metric, methods, dense_runs)
        if text:
            sentences.append(text)
    sentences += _randomization_sentences(key, entry)
    return {"sentences": sentences, "rows": rows, "series": _series(entry, methods)}


def _point(variant: dict[str, Any], values: list[float]) -> list[float]:
    sparsity = [_num(r["sparsity"]) for r in variant["runs"]]
    finite = [v for v in values if not math.isnan(v)]
    mean, half = mean_ci(finite) if finite else (math.nan, math.nan)
    return [sum(sparsity) / len(sparsity), mean, half]


def _series(entry: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """Figure data: ``{metric: {label: [[sparsity, mean, ci], ...]}}``."""
    out: dict[str, dict[str, list[list[float]]]] = {}
    metrics = ("faithfulness", "deletion_auc", "agreement", "sparseness")
    for metric in metrics:
        lines: dict[str, list[list[float]]] = {}
        for name, whole in entry["variants"].items():
            variant = {**whole, "runs": _live(whole)}
            if (
                variant["family"] not in ("dense", "unstructured", "structured")
                or not (variant["runs"])
            ):
                continue
            for method in methods:
                values = [_num(r["methods"].get(method, {}).get(metric)) for r in variant["runs"]]
                if metric == "agreement" and name == "dense":
                    values = [1.0 for _ in values]
                if variant["family"] in ("dense", "unstructured"):
                    lines.setdefault(method, []).append(_point(variant, values))
            if variant["family"] in ("dense", "structured"):
                means = _seed_means(variant["runs"], metric, methods)
                if metric == "agreement" and name == "dense":
                    means = {s: 1.0 for s in means}
                lines.setdefault("structured (mean of methods)", []).append(
                    _point(variant, list(means.values()))
                )
        out[metric] = lines
    fidelity: dict[str, list[list[float]]] = {}
    for whole in entry["variants"].values():
        variant = {**whole, "runs": _live(whole)}
        if not variant["runs"]:
            continue
        family = variant["family"]
        values = [_num(r["fidelity"]) for r in variant["runs"]]
        for line in ("unstructured", "structured"):
            if family in ("dense", line):
                fidelity.setdefault(line, []).append(_point(variant, values))
    out["fidelity"] = fidelity
    return out


#: Stages whose results the findings can compare (per-model metrics by variant).
SOURCES = ("interpretability",)


class FindingsStage(Stage):
    """The verdict of the study on pruning, clipping and explanation quality."""

    name = "findings"
    title = "Findings: pruning, clipping and explanation quality"
    defaults = {"source": "interpretability"}
    quick = {}

    def validate(self, cfg: dict[str, Any]) -> None:
        """Check this stage's config section (see :meth:`Stage.validate`).

        Raises:
            ConfigError: ``findings.source`` is not a stage it can read.
        """
        if cfg["source"] not in SOURCES:
            raise ConfigError(
                f"`findings.source` must be one of {', '.join(SOURCES)} (the stage whose "
                f"per-model metrics it compares); got {cfg['source']!r}."
            )

    def run(self, ctx: StudyContext, cfg: dict[str, Any]) -> dict[str, Any]:
        source = ctx.results.get(cfg["source"])
        if not source or not source.get("models"):
            return {"available": False, "models": {}}
        models = {key: _model_findings(key, entry) for key, entry in source["models"].items()}
        return {"available": True, "models": models, "seeds": list(ctx.seeds)}

    def report(self, ctx: StudyContext, cfg: dict[str, Any], result: dict[str, Any]) -> Section:
        if not result.get("available"):
            return Section(
                self.title,
                [
                    Paragraph(
                        f"No findings: the {cfg['source']!r} stage did not run in this study.",
                        kind="warning",
                    )
                ],
            )
        n = len(result.get("seeds", []))
        blocks: list[Any] = [
            Paragraph(
                f"Comparisons are paired over {n} seed(s): the same seed trains the dense and the "
                "changed model, and both are explained on the same test examples with the same "
                "perturbations. A difference is called significant when its 95% t-interval "
                "excludes zero. Deletion and insertion AUC follow the class probability, so a "
                "less confident model scores a lower deletion AUC without its explanations being "
                "more faithful; the faithfulness correlation is free of that scale."
                + (
                    " With one seed no interval exists, so nothing is significant." if n < 2 else ""
                ),
                kind="note",
            )
        ]
        for key, found in result["models"].items():
            blocks.extend(Paragraph(s, kind="finding") for s in found["sentences"])
            blocks.append(
                Figure(
                    _figure(key, found["series"]),
                    f"{key}: metrics against sparsity (unstructured pruning per "
                    "method; structured as the mean over methods), mean and 95% "
                    "CI over seeds.",
                )
            )
            blocks.append(
                Table(
                    [
                        "variant",
                        "metric",
                        "dense",
                        "variant value",
                        "difference",
                        "95% CI ±",
                        "significant",
                    ],
                    found["rows"],
                    caption=f"{key}: every variant against the dense model (mean over methods)",
                )
            )
        return Section(self.title, blocks)


def _figure(key: str, series: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pellucid.plot.metrics import metric_vs_sparsity

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = (
        ("faithfulness", "faithfulness correlation ↑"),
        ("deletion_auc", "deletion AUC ↓"),
        ("agreement", "Spearman agreement with dense"),
        ("fidelity", "tree surrogate fidelity"),
    )
    for ax, (metric, label) in zip(axes.flat, panels, strict=True):
        metric_vs_sparsity(series.get(metric, {}), ax=ax, ylabel=label)
    fig.suptitle(key)
    fig.tight_layout()
    return figure_png(fig)
