"""The README's tour runs as written (in a temporary folder)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_tour_runs(tmp_path, monkeypatch, capsys):
    code = re.search(r"## A short tour\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert code is not None, "README.md lost its tour"
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), "README.md", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "ig.safetensors").is_file() and (tmp_path / "small.safetensors").is_file()
    assert "ChannelPruningPlan" in capsys.readouterr().out
