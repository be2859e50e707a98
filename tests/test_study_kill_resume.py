"""`pellucid study --quick` SIGKILLed during training, pruning and report writing resumes to
the results of an uninterrupted run; no partial file is ever read as complete; a corrupted
stage cache is detected by its checksum and recomputed with a warning naming the file.

Each run is a subprocess calling the ``pellucid`` entry point. The kill points are made
exact by a small wrapper in that subprocess (so nothing depends on timing): it SIGKILLs its
own process just before the first model's weights are renamed into place (training), at
the second prune-and-finetune (pruning) or just before the report is renamed into place
(report writing).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pellucid.study._cache import read_stage

CHILD = r"""
import os, signal, sys

point, argv = sys.argv[1], sys.argv[2:]
suffix = {"training": ".safetensors", "report": "index.html"}.get(point)
real_replace = os.replace

def replace(src, dst, *args, **kwargs):
    if suffix and str(dst).endswith(suffix):
        os.kill(os.getpid(), signal.SIGKILL)  # the temp file is written, not yet renamed
    return real_replace(src, dst, *args, **kwargs)

os.replace = replace
if point == "pruning":
    import pellucid.pruning as pruning

    real, calls = pruning.prune_and_finetune, []

    def prune_and_finetune(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    pruning.prune_and_finetune = prune_and_finetune

from pellucid.cli import main

sys.exit(main(argv))
"""

CONFIG = """
stages = ["training", "pruning"]
[training]
models = ["breast_cancer/MLP"]
[pruning]
models = ["breast_cancer/MLP"]
"""

#: Measured times differ between runs; everything else must be identical.
_TIMED = ("latency", "speedup", "seconds", "time")


def _run(point: str, out: Path, config: Path) -> subprocess.CompletedProcess:
    argv = ["study", "--quick", "--config", str(config), "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", CHILD, point, *argv],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )


def _untimed(obj):
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if not any(t in k for t in _TIMED)}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _results(out: Path) -> dict:
    return {
        stage: _untimed(json.loads((out / "results" / f"{stage}.json").read_text())["result"])
        for stage in ("training", "pruning")
    }


def _assert_complete_or_absent(out: Path) -> None:
    """Every stage file present is complete (its checksum holds): nothing partial."""
    for path in (out / "results").glob("*.json"):
        stored = json.loads(path.read_text())
        assert read_stage(path, stored["config_hash"]) is not None, path


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_study_resumes_to_the_uninterrupted_results(tmp_path):
    config = tmp_path / "small.toml"
    config.write_text(CONFIG)
    reference = tmp_path / "reference"
    done = _run("none", reference, config)
    assert done.returncode == 0, done.stderr

    out = tmp_path / "killed"
    killed = _run("training", out, config)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "results" / "training.json").exists()
    assert not list((out / "models").glob("*.safetensors"))  # only its temp file
    assert list((out / "models").glob(".*.tmp"))

    killed = _run("pruning", out, config)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "removed" in killed.stderr and "interrupted write" in killed.stderr
    assert "stage pruning: running" in killed.stderr
    assert (out / "results" / "training.json").exists()
    assert not (out / "results" / "pruning.json").exists()
    _assert_complete_or_absent(out)

    killed = _run("report", out, config)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "stage training: cached" in killed.stderr
    assert not (out / "report" / "index.html").exists()
    assert list((out / "report").glob(".index.html.*.tmp"))
    _assert_complete_or_absent(out)

    resumed = _run("none", out, config)
    assert resumed.returncode == 0, resumed.stderr
    assert "stage training: cached" in resumed.stderr
    assert "stage pruning: cached" in resumed.stderr
    assert (out / "report" / "index.html").read_text().startswith("<!DOCTYPE html>")
    assert not list(out.rglob(".*.tmp"))
    assert _results(out) == _results(reference)

    # a corrupted stage cache: detected, named, recomputed to the same results
    training = out / "results" / "training.json"
    training.write_text(training.read_text()[:-40])
    again = _run("none", out, config)
    assert again.returncode == 0, again.stderr
    assert "StudyCacheWarning" in again.stderr and str(training) in again.stderr
    assert "stage training: running" in again.stderr
    assert "stage pruning: cached" in again.stderr
    assert _results(out) == _results(reference)
