"""docs/recipes.md runs as written: every python block, in order, in a temporary folder."""

from __future__ import annotations

import re
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"


def test_every_recipe_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", RECIPES.read_text(), re.S)
    assert len(blocks) >= 3, "docs/recipes.md lost its recipes"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__recipes__"}
    for block in blocks:
        exec(compile(block, str(RECIPES), "exec"), namespace)
    out = capsys.readouterr().out
    assert "plain [" in out and "clipped [" in out and "fidelity" in out
    assert "gradients of" in out and (tmp_path / "probes.png").stat().st_size > 1000
    assert "SHAP vs LIME rank agreement" in out and "IG vs SHAP" in out
    assert (tmp_path / "sklearn_shap_lime.png").stat().st_size > 1000
    assert "suggested max_norm" in out and "structured: up to" in out
    assert (tmp_path / "sweeps.png").stat().st_size > 1000
