"""The ``pellucid`` command: one module per command, one error wrapper (one line, exit 2)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

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
    for name in ("study", "explain", "diagnose", "stages", "serve"):
        assert name in sub.choices
        assert sub.choices[name].get_default("run").__module__ == f"pellucid.cli.{name}"


@pytest.mark.parametrize(
    "args",
    [
        ["bogus"],
        ["explain", "--n", "x"],
        ["study", "--seed", "1.5"],
        ["diagnose", "--nosuchflag"],
        ["serve", "--port", "x", "."],
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


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


# (argv, the flag the message must name, a word of the fix). Every user error path of every
# command: one line on stderr, exit code 2, no traceback.
BAD = [
    (["explain", "--quick", "--method", "grad_cam"], "--layer", "features.3"),
    (["explain", "--quick", "--method", "grad_cam", "--layer", "conv9"], "--layer", "conv9"),
    (
        ["explain", "--quick", "--model", "breast_cancer/MLP", "--method", "attention"],
        "--method attention",
        "Methods for tabular inputs",
    ),
    (
        ["explain", "--quick", "--model", "breast_cancer/MLP", "--method", "exact_shapley"],
        "--method exact_shapley",
        "kernel_shap",
    ),
    (["explain", "--quick", "--target", "12"], "--target", "0..9"),
    (["explain", "--quick", "--target", "cat"], "--target", "predicted"),
    (["explain", "--quick", "--n", "99999"], "--n", "only 450 test rows"),
    (["explain", "--quick", "--rows", "0:99999"], "--rows", "--rows 0:450"),
    (
        ["explain", "--quick", "--method", "saliency", "--n-samples", "8"],
        "--n-samples",
        "smoothgrad",
    ),
    (["explain", "--quick", "--method", "occlusion", "--baseline", "zero"], "--baseline", "'mean'"),
    (
        ["explain", "--quick", "--method", "feature_ablation", "--feature-mask", "missing.npy"],
        "--feature-mask",
        "missing.npy",
    ),
    (["explain", "--quick", "--method", "salincy"], "--method", "saliency"),
    (["explain", "--quick", "--model", "digits/SmallCN"], "--model", "digits/SmallCNN"),
    (["explain", "--quick", "--seed", "-1"], "--seed", ">= 0"),
    (["explain", "--quick", "--out", "."], "--out", "directory"),
    (["explain", "--quick", "--device", "gpu0"], "--device", "cuda:N"),
    (
        ["explain", "--quick", "--device", "cuda:99"],
        "--device",
        "cuda:0" if torch.cuda.is_available() else "--device cpu",
    ),
    (["explain", "--quick", "--out", "no/such/dir/e.safetensors"], "--out", "Create it"),
    (["show", "missing.safetensors"], "FILE", "existing file"),
    (["show", "x.safetensors", "--rows", "0"], "--rows", ">= 1"),
    (["diagnose", "--clip", "nrm"], "--clip", "norm"),
    (["diagnose", "--model", "Transformer"], "--model", "DeepPlainNet"),
    (["diagnose", "--nonfinite", "ignore"], "--nonfinite", "skip"),
    (["diagnose", "--dataset", "digts", "--epochs", "1"], "--dataset digts", "digits"),
    (["diagnose", "--optimizer", "adamm"], "--optimizer", "'adam'"),
    (["diagnose", "--lr", "0"], "--lr", "> 0"),
    (["diagnose", "--epochs", "0"], "--epochs", ">= 1"),
    (["diagnose", "--model", "SmallCNN", "--dataset", "wine"], "--model SmallCNN", "digits"),
    (["study", "--seed", "-2"], "--seed", ">= 0"),
    (["study", "--stages", "trainng"], "trainng", "training"),
    (["prune"], "--structured", "--unstructured"),
    (["prune", "--unstructured", "1.5"], "--unstructured", "(0, 1)"),
    (["prune", "--unstructured", "0.5", "--lr", "0"], "--lr", "> 0"),
    (["stages", "--bogus"], "--bogus", "--help"),
]


@pytest.mark.parametrize(("argv", "names", "fix"), BAD, ids=[" ".join(b[0]) for b in BAD])
def test_every_bad_flag_is_one_line_exit_2(argv, names, fix, cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PELLUCID_CACHE_DIR", str(cache))
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    error = [line for line in err if "error:" in line]
    assert len(error) == 1 and error[0] == err[-1], err
    assert f"pellucid {argv[0]}: error:" in error[0] or "pellucid: error:" in error[0]
    assert names in error[0] and fix in error[0], error[0]
    assert not list(tmp_path.iterdir())  # nothing written where the user stands


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "--quick", "--target", "12"], "`--target` must be a class index in 0..9"),
        (["show", "missing.safetensors"], "`FILE missing.safetensors`"),
        (["diagnose", "--nonfinite", "ignore"], "argument --nonfinite: invalid choice"),
        (["study", "--seed", "-2"], "`--seed` must be an integer >= 0"),
    ],
)
def test_bad_flags_through_the_console_entry_point(argv, message, cache, tmp_path):
    env = {**__import__("os").environ, "PELLUCID_CACHE_DIR": str(cache)}
    result = subprocess.run(
        [sys.executable, "-m", "pellucid.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_explain_layer_options_cache_and_show(cache, tmp_path, monkeypatch, capsys):
    from pellucid import Explanation

    monkeypatch.setenv("PELLUCID_CACHE_DIR", str(cache))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cam.safetensors"
    argv = ["explain", "--quick", "--method", "grad_cam", "--layer", "features.3", "--n", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"model weights: {cache / 'models'}" in captured.err  # says where it caches
    assert str(out) in captured.out  # and where it wrote
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.safetensors"]
    assert any((cache / "models").glob("*.safetensors"))
    e = Explanation.load(out)
    assert e.method == "grad_cam" and e.attributions.shape == (3, 1, 8, 8)
    assert main(["show", str(out)]) == 0
    png = tmp_path / "cam.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in capsys.readouterr().out
    # tabular: the top features per row, with the options the method takes
    tab = tmp_path / "ks.safetensors"
    argv = ["explain", "--quick", "--model", "breast_cancer/MLP", "--method", "kernel_shap"]
    opts = ["--n", "2", "--n-samples", "64", "--baseline", "mean", "--out", str(tab)]
    assert main([*argv, *opts]) == 0
    assert Explanation.load(tab).params["n_samples"] == 64
    capsys.readouterr()
    assert main(["show", str(tab), "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "kernel_shap: 2 rows x 30 features"
    assert lines[1].startswith("row 0: x[") and lines[1].count("x[") == 3


def test_explain_help_lists_the_methods(capsys):
    import pellucid

    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    text = capsys.readouterr().out
    for name in pellucid.list_methods():
        assert name in text
    assert "grad_cam [layer]" in text


def test_diagnose_nonfinite_policy(capsys):
    assert main(["diagnose", "--epochs", "1", "--nonfinite", "skip"]) == 0
    assert " 0 skipped" not in capsys.readouterr().out.splitlines()[0]
    assert main(["diagnose", "--epochs", "1", "--nonfinite", "raise"]) == 1
    assert capsys.readouterr().out.startswith("training stopped (--nonfinite raise)")
