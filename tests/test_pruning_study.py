"""The study's "pruning" stage: config checks and a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest

from pellucid.study.config import ConfigError, build_config
from pellucid.study.runner import run_study


@pytest.mark.slow  # trains a small model, then prunes and fine-tunes it twice
def test_pruning_stage_runs_and_reports(tmp_path):
    config = build_config(
        {
            "training": {"models": ["breast_cancer/MLP"]},
            "pruning": {
                "models": ["breast_cancer/MLP"],
                "unstructured": [0.9],
                "structured": [0.5],
            },
        },
        quick=True,
        stages=["training", "pruning"],
    )
    report = run_study(config, tmp_path, progress=False)
    stored = json.loads((tmp_path / "results" / "pruning.json").read_text())["result"]["models"]
    runs = stored["breast_cancer/MLP"]["runs"]
    assert [(r["kind"], r["amount"]) for r in runs] == [
        ("dense", 0.0),
        ("unstructured", 0.9),
        ("structured", 0.5),
    ]
    dense, unstructured, structured = runs
    assert unstructured["nonzeros"] < 0.2 * dense["nonzeros"]
    assert unstructured["bytes"] <= 0.25 * dense["bytes"]
    assert structured["parameters"] < dense["parameters"]
    assert all(r["latency_ms"] > 0 and r["speedup"] > 0 for r in runs)
    assert set(stored["breast_cancer/MLP"]["profiles"]) == {"unstructured:0.9", "structured:0.5"}
    assert "Pruning: accuracy, size and measured speed" in report.read_text()


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"unstructured": [1.2]}, r"`pruning.unstructured` must be a list of fractions"),
        ({"max_seeds": 0}, r"`pruning.max_seeds` must be an integer >= 1"),
        ({"models": ["digits/Nope"]}, r"pruning.models"),
    ],
)
def test_pruning_stage_config_errors(table, match):
    with pytest.raises(ConfigError, match=match):
        build_config({"pruning": table}, quick=True)
