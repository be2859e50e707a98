"""The CLI on a user's model and data: explain, prune, diagnose, study (as subprocesses)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import pellucid
from pellucid.cli import main

SRC = str(Path(pellucid.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's folder: a factory module, a CSV with a categorical column, trained weights."""
    from tests.test_study_user import write_user_project

    folder = tmp_path_factory.mktemp("project")
    write_user_project(folder)
    sys.path.insert(0, str(folder))
    try:
        from pellucid.sources import load_data, load_model
        from pellucid.training import fit

        data = {"path": str(folder / "people.csv"), "target": "label", "categorical": ["city"]}
        ds = load_data({**data, "standardize": True})
        torch.manual_seed(0)
        net = load_model("userstudy:make_net")
        fit(net, ds.train, epochs=15, lr=0.03, batch_size=32, progress=False)
        save_file(net.state_dict(), str(folder / "net.safetensors"))
    finally:
        sys.path.remove(str(folder))
    (folder / "evil.pt").write_bytes(pickle.dumps({"weight": 1}))
    return folder


def pellucid_cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(project)])}
    return subprocess.run(
        [sys.executable, "-m", "pellucid.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=project,
        env=env,
    )


@pytest.fixture
def inside(project, monkeypatch):
    """Run ``main`` in process from the user's folder, with their package importable."""
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    return project


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if "warning:" not in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


DATA = ["--data", "people.csv", "--target-column", "label", "--categorical", "city"]
MODEL = ["--model", "userstudy:make_net", "--weights", "net.safetensors", "--standardize"]


@pytest.mark.slow
def test_explain_good_and_bad(project, inside, capsys):
    out = project / "e.safetensors"
    args = ["explain", *MODEL, *DATA, "--method", "kernel_shap", "--rows", "0:8"]
    result = pellucid_cli(project, *args, "--out", str(out), "--plot", "e.png")
    assert result.returncode == 0, result.stderr
    assert "kernel_shap on userstudy:make_net (rows 0:8" in result.stdout
    e = pellucid.Explanation.load(out)
    assert e.attributions.shape == (8, 5) and (project / "e.png").stat().st_size > 1000
    assert e.extras["feature_groups"] == ["a", "city", "b"]
    city = e.attributions[:, 1:4]  # the one-hot city columns share their group's value
    torch.testing.assert_close(city, city[:, :1].expand(-1, 3))
    bad = pellucid_cli(
        project, "explain", "--model", "userstudy:make_net", "--weights", "evil.pt", *DATA
    )
    assert "evil.pt" in one_error_line(bad) and "plain Python pickle" in bad.stderr
    # in process (same error wrapper), the other bad arguments
    for argv, message in (
        (["--rows", "9:3", *DATA], "`--rows` must be START:STOP with 0 <= START < STOP"),
        (["--data", "people.csv", "--target-column", "lable"], "got 'lable'"),
        (["--data", "nope.csv", "--target-column", "label"], "'nope.csv' does not exist"),
        ([*DATA, "--method", "kernal_shap"], "Did you mean one of 'kernel_shap'"),
    ):
        assert main(["explain", *MODEL, *argv]) == 2
        assert message in capsys.readouterr().err
    assert main(["explain", "--model", "userstudy:make_net", *DATA]) == 2
    assert "`--weights` is required" in capsys.readouterr().err
    assert not (project / "explanation.safetensors").exists()  # nothing written on errors


def test_explain_deprecated_n_alias(inside, capsys):
    project = inside
    out = project / "n.safetensors"
    assert (
        main(["explain", *MODEL, *DATA, "--method", "saliency", "--n", "4", "--out", str(out)]) == 0
    )
    assert "`--n` is deprecated" in capsys.readouterr().err
    assert len(pellucid.Explanation.load(out)) == 4


@pytest.mark.slow
def test_prune_good_and_bad(project):
    out = project / "small.safetensors"
    args = ["prune", *MODEL, *DATA, "--structured", "0.5", "--finetune-epochs", "2"]
    result = pellucid_cli(project, *args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = {line.split("  ")[0]: line.split() for line in result.stdout.splitlines()}
    params = lines["parameters"]
    assert int(params[2]) < int(params[1])  # channels removed: fewer parameters
    assert "MACs / example" in result.stdout and "test accuracy" in result.stdout
    assert "latency (ms, batch 32)" in result.stdout and out.is_file()
    bad = pellucid_cli(project, *args[:-4], "--structured", "1.5")
    assert "`--structured` must be a fraction in (0, 1); got 1.5." in one_error_line(bad)


@pytest.mark.slow
def test_diagnose_good_and_bad(project):
    args = ["diagnose", "--model", "userstudy:make_net", *DATA, "--epochs", "1"]
    result = pellucid_cli(
        project, *args, "--clip", "norm:1.0", "--optimizer", "adam", "--lr", "0.01"
    )
    assert result.returncode == 0, result.stderr
    assert "userstudy:make_net on csv people.csv" in result.stdout and "diagnosis" in result.stdout
    bad = pellucid_cli(project, *args, "--clip", "wieght:0.1")
    assert "`--clip` must be one of" in one_error_line(bad) and "'weight'" in bad.stderr


@pytest.mark.slow
def test_study_good_and_bad(project):
    config = project / "my.toml"
    config.write_text(
        textwrap.dedent(
            """
            seeds = [0]
            [training]
            models = []
            [[training.user_models]]
            name = "my-net"
            factory = "userstudy:make_net"
            weights = "net.safetensors"
            data = { path = "people.csv", target = "label", categorical = ["city"], standardize = true }
            """
        )
    )
    result = pellucid_cli(
        project, "study", "--config", "my.toml", "--quick", "--stages", "training", "--out", "s"
    )
    assert result.returncode == 0, result.stderr
    html = (project / "s" / "report" / "index.html").read_text()
    assert "my-net" in html and "people.csv" in html and "your weights" in html
    config.write_text(config.read_text().replace("weights =", "wieghts ="))
    bad = pellucid_cli(project, "study", "--config", "my.toml", "--quick", "--out", "s2")
    assert "unknown key 'wieghts'" in one_error_line(bad)
    assert not (project / "s2").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_ranks_equal_one_process_bit_for_bit(project):
    args = ["explain", *MODEL, *DATA, "--method", "kernel_shap", "--rows", "0:9"]
    one = pellucid_cli(project, *args, "--out", "one.safetensors")
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(project)])}
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    two = subprocess.run(
        [*launch, "-m", "pellucid.cli", *args, "--out", "two.safetensors"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=project,
        env=env,
    )
    assert two.returncode == 0, two.stderr
    a = pellucid.Explanation.load(project / "one.safetensors")
    b = pellucid.Explanation.load(project / "two.safetensors")
    assert b.params["world_size"] == 2
    # 5 one-hot columns in 3 groups: 6 coalitions, every one enumerated, and 9 rows split
    # 5 + 4 over the ranks; the values must not depend on the split
    assert torch.equal(a.attributions, b.attributions)
