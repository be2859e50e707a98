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


def test_bring_your_own_flow_runs(tmp_path, monkeypatch, capsys):
    """The "Your model, your data" section: its factory, Python API, TOML and every command."""
    import shlex

    from tests.test_study_user import write_user_project

    from pellucid.cli import main

    text = README.read_text()
    section = text[text.index("## Your model, your data") : text.index("## A short tour")]
    blocks = re.findall(r"```(python|bash|toml)\n(.*?)```", section, re.S)
    kinds = [kind for kind, _ in blocks]
    assert kinds == ["python", "bash", "toml", "python"], "README lost a part of the flow"
    (factory, commands, toml, api) = (code for _, code in blocks)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    write_user_project(tmp_path)  # people.csv: columns a, city, b, label
    (tmp_path / "my_nets.py").write_text(factory)
    (tmp_path / "my.toml").write_text(toml)
    exec(compile(api, "README.md", "exec"), {"__name__": "__readme__"})  # writes net.safetensors
    for line in commands.strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "pellucid"
        if argv[1] == "study":  # the whole quick study is test_study*'s job: one stage here
            argv += ["--stages", "training"]
        assert main(argv[1:]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "MACs / example" in out and "diagnosis" in out
    for name in ("e.safetensors", "e.png", "small.safetensors"):
        assert (tmp_path / name).is_file()
    assert "my-net" in (tmp_path / "pellucid-study" / "report" / "index.html").read_text()
