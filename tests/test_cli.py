"""The ``pellucid`` command: one module per command, one error wrapper (one line, exit 2)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pellucid.cli import build_parser, main


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pellucid.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_every_command_is_registered_from_its_module():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("study", "explain", "diagnose", "stages"):
        assert name in sub.choices
        assert sub.choices[name].get_default("run").__module__ == f"pellucid.cli.{name}"


@pytest.mark.parametrize(
    "args",
    [
        ["bogus"],
        ["explain", "--n", "x"],
        ["study", "--seed", "1.5"],
        ["diagnose", "--nosuchflag"],
    ],
)
def test_parse_errors_are_one_line_exit_2(args):
    result = _run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "--help" in lines[0]
    assert "Traceback" not in result.stderr


def test_internal_errors_keep_their_traceback(monkeypatch):
    import pellucid.cli.stages as stages

    def broken(args):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(stages, "run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["stages"])


def test_user_error_raised_deep_inside_is_one_line(capsys):
    assert main(["diagnose", "--model", "Transformer"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("pellucid diagnose: error: `--model` must be")
