"""The study stages "interpretability" and "findings"."""

from __future__ import annotations

import json
import math

import pytest

from pellucid._io import jsonable
from pellucid.report.html import Figure, Paragraph, Table, render_report
from pellucid.study.context import StudyContext
from pellucid.study.stages import STAGES
from pellucid.study.stages.findings import FindingsStage
from pellucid.study.stages.interpretability import InterpretabilityStage


def _run(seed: int, sparsity: float, faith: float, sens: float, fidelity: float) -> dict:
    scores = {
        "faithfulness": faith,
        "deletion_auc": 0.5,
        "insertion_auc": 0.7,
        "sparseness": 0.4,
        "complexity": 3.0,
        "max_sensitivity": sens,
        "agreement": None if sparsity == 0 else 0.6,
    }
    return {
        "seed": seed,
        "sparsity": sparsity,
        "accuracy": 0.9,
        "fidelity": fidelity,
        "leaves": 8,
        "methods": {"saliency": dict(scores), "occlusion": {**scores, "faithfulness": faith + 0.3}},
    }


def synthetic() -> dict:
    """Three seeds; pruning raises faithfulness by exactly 0.2 on every seed (significant),
    clipping changes sensitivity by noise only (not significant)."""
    dense = [_run(s, 0.0, 0.3 + 0.01 * s, 0.1, 0.9) for s in range(3)]
    pruned = [_run(s, 0.9, 0.5 + 0.01 * s, 0.1, 0.8) for s in range(3)]
    clipped = [_run(s, 0.0, 0.3 + 0.01 * s, 0.1 + (0.02, -0.03, 0.005)[s], 0.9) for s in range(3)]
    rand = {
        "saliency": [
            {"seed": s, "layers": ["2", "0"], "median": [0.4, 0.05], "fraction_passed": 1.0}
            for s in range(3)
        ],
        "occlusion": [
            {"seed": s, "layers": ["2", "0"], "median": [0.9, 0.8], "fraction_passed": 0.0}
            for s in range(3)
        ],
    }
    entry = {
        "methods": ["saliency", "occlusion"],
        "task": "classification",
        "variants": {
            "dense": {"family": "dense", "level": 0.0, "runs": dense},
            "clip:autoclip": {"family": "clipped", "level": 0.0, "runs": clipped},
            "unstructured:0.9": {"family": "unstructured", "level": 0.9, "runs": pruned},
        },
        "randomization": rand,
    }
    return jsonable({"models": {"toy/MLP": entry}, "errors": []})


def test_stages_are_registered_in_order():
    names = list(STAGES)
    assert names.index("interpretability") < names.index("findings")
    assert "pruning" not in names or names.index("pruning") < names.index("interpretability")


def test_findings_sentences_are_backed_by_paired_statistics(tmp_path):
    ctx = StudyContext(out_dir=tmp_path, seeds=[0, 1, 2], progress=False)
    ctx.results["interpretability"] = synthetic()
    stage = FindingsStage()
    result = jsonable(stage.run(ctx, dict(stage.defaults)))
    json.dumps(result)
    text = result["models"]["toy/MLP"]["sentences"]
    pruning = [s for s in text if "unstructured pruning" in s and "faithfulness correlation" in s]
    assert len(pruning) == 1 and "more faithful (significant over 3 seeds)" in pruning[0]
    assert "+0.200" in pruning[0]  # (0.5 + 0.8) / 2 - (0.3 + 0.6) / 2, every seed
    clip = [s for s in text if "autoclip" in s and "max-sensitivity" in s]
    assert len(clip) == 1 and "not significant" in clip[0]
    assert any("occlusion (0.80) fail the randomization check" in s for s in text)
    assert any("saliency (0.05) pass the randomization check" in s for s in text)
    best = [s for s in text if "most faithful method" in s]
    assert "correlation, the most faithful method on the dense model is occlusion" in best[0]
    assert "a significant margin" in best[0] and "not a significant" not in best[0]
    assert "deletion AUC" in best[1] and "not a significant margin" in best[1]  # a tie


@pytest.mark.slow
def test_findings_report_renders(tmp_path):
    ctx = StudyContext(out_dir=tmp_path, seeds=[0, 1, 2], progress=False)
    ctx.results["interpretability"] = synthetic()
    stage = FindingsStage()
    result = jsonable(stage.run(ctx, dict(stage.defaults)))
    text = result["models"]["toy/MLP"]["sentences"]
    section = stage.report(ctx, dict(stage.defaults), result)
    assert any(isinstance(b, Figure) for b in section.blocks)
    assert any(isinstance(b, Table) for b in section.blocks)
    assert sum(isinstance(b, Paragraph) and b.kind == "finding" for b in section.blocks) == len(
        text
    )
    assert "toy/MLP" in render_report("t", [section])


def test_findings_with_one_seed_is_never_significant(tmp_path):
    data = synthetic()
    for variant in data["models"]["toy/MLP"]["variants"].values():
        variant["runs"] = variant["runs"][:1]
    ctx = StudyContext(out_dir=tmp_path, seeds=[0], progress=False)
    ctx.results["interpretability"] = data
    result = FindingsStage().run(ctx, {"source": "interpretability"})
    text = result["models"]["toy/MLP"]["sentences"]
    assert not any("(significant" in s for s in text)
    assert all(
        not isinstance(r[6], bool) or r[6] is False for r in result["models"]["toy/MLP"]["rows"]
    )


def test_findings_without_source(tmp_path):
    ctx = StudyContext(out_dir=tmp_path, seeds=[0], progress=False)
    stage = FindingsStage()
    result = stage.run(ctx, {"source": "interpretability"})
    assert result["available"] is False
    section = stage.report(ctx, {"source": "interpretability"}, result)
    assert "did not run" in section.blocks[0].text


def test_interpretability_validate_rejects_bad_config():
    from pellucid.study.config import ConfigError

    stage = InterpretabilityStage()
    cfg = dict(stage.defaults)
    with pytest.raises(ConfigError, match="interpretability.clipping"):
        stage.validate({**cfg, "clipping": ["nope"]})
    with pytest.raises(ConfigError, match=r"interpretability.unstructured` levels must be in"):
        stage.validate({**cfg, "unstructured": [1.5]})
    with pytest.raises(ConfigError, match="interpretability.methods"):
        stage.validate({**cfg, "methods": ["saliancy"]})


@pytest.mark.slow
def test_interpretability_stage_end_to_end(tmp_path):
    stage = InterpretabilityStage()
    cfg = {
        **stage.defaults,
        **stage.quick,
        "methods": ["saliency", "input_x_gradient"],
        "structured": [],
        "n_explain": 8,
        "faithfulness_samples": 8,
    }
    stage.validate(cfg)
    ctx = StudyContext(out_dir=tmp_path, seeds=[0], quick=True, progress=False)
    result = jsonable(stage.run(ctx, cfg))
    json.dumps(result)
    entry = result["models"]["breast_cancer/MLP"]
    assert set(entry["variants"]) == {"dense", "clip:autoclip", "unstructured:0.8"}
    pruned = entry["variants"]["unstructured:0.8"]["runs"][0]
    assert pruned["sparsity"] > 0.7 and 0.0 <= pruned["fidelity"] <= 1.0
    scores = pruned["methods"]["saliency"]
    assert -1.0 <= scores["agreement"] <= 1.0 and not math.isnan(scores["sparseness"])
    assert set(entry["randomization"]) == {"saliency", "input_x_gradient"}
    section = stage.report(ctx, cfg, result)
    assert section.blocks and not result["errors"]
