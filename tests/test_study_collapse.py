"""A collapsed model never counts as evidence: detection, and exclusion in the report."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pellucid.cli import main
from pellucid.pruning.collapse import detect_collapse


def test_detect_collapse_constant_one_class_and_majority_rate():
    torch.manual_seed(0)
    x = torch.randn(200, 4, dtype=torch.float64)
    labels = (x[:, 0] > 0).long()
    live = nn.Linear(4, 2).double()
    with torch.no_grad():
        live.weight.copy_(torch.tensor([[-3.0, 0, 0, 0], [3.0, 0, 0, 0]]))
    assert detect_collapse(live, x, labels=labels) is None
    dead = nn.Linear(4, 2).double()
    with torch.no_grad():
        dead.weight.zero_()
    assert detect_collapse(dead, x).startswith("constant predictions")
    one_class = nn.Linear(4, 2).double()  # varies a little, but always says class 1
    with torch.no_grad():
        one_class.weight.mul_(1e-3)
        one_class.bias.copy_(torch.tensor([0.0, 1.0]))
    assert (
        detect_collapse(one_class, x, labels=labels) == "predicts class 1 for 100% of 200 test rows"
    )
    # 3 classes, predictions spread over two of them but no better than the majority guess
    y3 = torch.zeros(200, dtype=torch.long)
    y3[:60], y3[60:100] = 1, 2  # majority class 0: 100/200
    guess = nn.Linear(4, 3).double()
    with torch.no_grad():
        guess.weight.zero_()
        guess.weight[2, 1] = 1.0  # class 2 when x1 > 0, else class 0/1 tie -> 0
    reason = detect_collapse(guess, x, labels=y3)
    assert reason is not None and "majority-class rate 0.500" in reason


@pytest.mark.slow
def test_default_study_excludes_a_collapsed_variant_from_the_verdicts(tmp_path):
    # 0.99 of the breast-cancer MLP's weights (a default interpretability level) leaves a
    # one-class model on every seed; the report must exclude it, not score it.
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "[interpretability]\n"
        'models = ["breast_cancer/MLP"]\n'
        'clip_models = []\nmethods = ["saliency"]\n'
        "unstructured = [0.99]\nstructured = []\n"
    )
    out = tmp_path / "study"
    args = ["study", "--quick", "--quiet", "--config", str(cfg), "--out", str(out)]
    assert main([*args, "--stages", "training,interpretability,findings"]) == 0
    stored = json.loads((out / "results" / "interpretability.json").read_text())["result"]
    runs = stored["models"]["breast_cancer/MLP"]["variants"]["unstructured:0.99"]["runs"]
    assert runs and all(r["collapsed"] for r in runs) and not any(r["methods"] for r in runs)
    html = (out / "report" / "index.html").read_text()
    assert "Excluded from the interpretability verdicts" in html
    assert "excluded from the explanation-quality verdicts" in html
    assert "unstructured:0.99 (collapsed on seed(s) 0:" in html


def test_default_config_contains_a_collapsing_level():
    from pellucid.study.stages import STAGES

    assert 0.99 in STAGES["interpretability"].defaults["unstructured"]
