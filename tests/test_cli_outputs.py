"""CLI outputs are checked before any work starts."""

from __future__ import annotations

from pellucid.cli import main


def test_diagnose_out_directory_is_refused_before_training(capsys, tmp_path):
    """It used to train first and fail when writing the monitor history."""
    assert main(["diagnose", "--epochs", "1", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "`--out` must be a file path" in captured.err and not captured.out
    assert main(["diagnose", "--epochs", "1", "--out", str(tmp_path / "no" / "m.json")]) == 2
    captured = capsys.readouterr()
    assert "`--out` must be in an existing folder" in captured.err and not captured.out
