from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from pellucid.cli import main
from pellucid.report.html import Paragraph, Section, Table, render_report
from pellucid.study.config import ConfigError, build_config, read_config_file


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert main(["study", "--quick", "--out", str(out), "--quiet"]) == 0
    return out


def test_quick_study_writes_report_and_json(quick_study):
    html = (quick_study / "report" / "index.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html
    assert "<link" not in html and "<script" not in html  # self-contained, nothing to run
    summary = json.loads((quick_study / "results" / "study.json").read_text())
    for stage in summary["config"]["stages"]:
        stored = json.loads((quick_study / "results" / f"{stage}.json").read_text())
        assert stored["stage"] == stage and "result" in stored
    training = json.loads((quick_study / "results" / "training.json").read_text())["result"]
    assert training["digits/SmallCNN"]["runs"][0]["test"]["accuracy"] > 0.5


def test_quick_study_writes_the_explorer_next_to_the_report(quick_study):
    html = (quick_study / "report" / "explorer.html").read_text()
    manifest = re.search(r'<script type="application/json" id="px-manifest">(.*?)</script>', html)
    datasets = json.loads(manifest.group(1))["datasets"]
    interp = json.loads((quick_study / "results" / "interpretability.json").read_text())
    assert [d["title"] for d in datasets] == list(interp["result"]["models"])
    assert datasets[0]["variants"][0] == "dense" and datasets[0]["has_curves"]


def test_rerun_resumes_from_cache(quick_study, capsys):
    assert main(["study", "--quick", "--out", str(quick_study)]) == 0
    assert "stage training: cached" in capsys.readouterr().err
    summary = json.loads((quick_study / "results" / "study.json").read_text())
    assert "training" in summary["cached"]


def test_report_escapes_user_strings():
    evil = "<script>alert(1)</script>"
    html = render_report(evil, [Section(evil, [Paragraph(evil), Table([evil], [[evil]])])])
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_config_unknown_keys_suggest(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'seeds'"):
        build_config({"seed": [1]})
    with pytest.raises(ConfigError, match=r"Unknown config key `training.model`.*'models'"):
        build_config({"training": {"model": ["digits/SmallCNN"]}})
    with pytest.raises(ConfigError, match="must be list"):
        build_config({"training": {"models": "digits/SmallCNN"}})
    with pytest.raises(ConfigError, match="Unknown stage 'trainng'"):
        build_config(stages=["trainng"])


def test_config_file_errors_point_at_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("seeds = [0, 1]\n[training\nmodels = []\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_config_file(bad)
    good = tmp_path / "good.toml"
    good.write_text('seeds = [4]\n[training]\nmodels = ["wine/MLP"]\n')
    config = build_config(read_config_file(good))
    assert config["seeds"] == [4] and config["training"]["models"] == ["wine/MLP"]


def test_cli_bad_input_exit_2(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["study", "--out", str(a_file)]) == 2
    assert "is an existing file" in capsys.readouterr().err
    cfg = tmp_path / "c.toml"
    cfg.write_text("[training]\nmodelz = 1\n")
    out = tmp_path / "never"
    assert main(["study", "--config", str(cfg), "--out", str(out)]) == 2
    assert "Did you mean one of 'models', 'user_models'?" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written
    cfg.write_text('[training]\nmodels = ["digits/SmallCN"]\n')
    assert main(["study", "--config", str(cfg), "--out", str(out), "--quiet"]) == 2
    assert "'digits/SmallCNN'" in capsys.readouterr().err
    assert main(["study", "--config", str(tmp_path / "missing.toml")]) == 2


def test_version_and_help():
    from pellucid import __version__

    result = subprocess.run(
        [sys.executable, "-m", "pellucid.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == f"pellucid {__version__}"
    result = subprocess.run(
        [sys.executable, "-m", "pellucid.cli", "study", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--quick" in result.stdout and "--out" in result.stdout


def test_cli_explain_writes_loadable_file(quick_study, tmp_path, capsys):
    from pellucid import Explanation

    out = tmp_path / "e.safetensors"
    args = ["explain", "--quick", "--study-dir", str(quick_study), "--method", "saliency"]
    assert main([*args, "--n", "4", "--out", str(out)]) == 0
    e = Explanation.load(out)
    assert e.attributions.shape == (4, 1, 8, 8) and e.method == "saliency"
    assert main([*args[:-1], "salincy"]) == 2
    assert "'saliency'" in capsys.readouterr().err
    assert main([*args, "--n", "0"]) == 2


def test_cli_diagnose_finds_the_explosion(tmp_path, capsys):
    out = tmp_path / "monitor.json"
    assert main(["diagnose", "--epochs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "[nonfinite]" in text or "[exploding]" in text
    assert json.loads(out.read_text())
    assert main(["diagnose", "--epochs", "1", "--clip", "norm:1.0"]) == 0
    assert "non-finite" not in capsys.readouterr().out.split("\n")[1]
    assert main(["diagnose", "--clip", "nrm"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean" in err and "'norm'" in err.split("Did you mean", 1)[1]


def test_changed_upstream_stage_invalidates_later_ones(tmp_path):
    from pellucid.study.runner import _stage_hash

    config = build_config(quick=True)
    first = _stage_hash("training", config)
    later = _stage_hash("findings", config, first)
    config["training"]["models"] = ["wine/MLP"]
    changed = _stage_hash("training", config)
    assert changed != first
    assert _stage_hash("findings", config, changed) != later


def test_study_refuses_an_out_folder_it_cannot_create(capsys):
    # issue 17 item 10: an unwritable --out used to end in a raw errno message
    assert main(["study", "--quick", "--out", "/proc/pellucid-nope/x"]) == 2
    err = capsys.readouterr().err
    assert "`--out` must be a folder pellucid can create and write" in err
    assert "/proc" in err
