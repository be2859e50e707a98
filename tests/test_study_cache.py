"""The study's caches: a corrupt stage result or model file is detected by its checksum and
recomputed with a warning naming the file; killed writes' temp files are removed."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pellucid.study._cache import (
    StudyCacheWarning,
    read_model,
    read_stage,
    remove_orphans,
    write_model,
    write_stage,
)


def _stage(tmp_path):
    path = tmp_path / "results" / "training.json"
    write_stage(path, {"stage": "training", "config_hash": "abc", "result": {"acc": [0.5, 1]}})
    return path


def test_intact_stage_is_read_and_other_configs_are_silently_recomputed(tmp_path, recwarn):
    path = _stage(tmp_path)
    assert read_stage(path, "abc") == {"acc": [0.5, 1]}
    assert read_stage(path, "other") is None
    assert read_stage(tmp_path / "missing.json", "abc") is None
    assert not [w for w in recwarn if issubclass(w.category, StudyCacheWarning)]


def _corruptions(text: str) -> dict[str, str]:
    stored = json.loads(text)
    no_result = {k: v for k, v in stored.items() if k != "result"}
    edited = {**stored, "result": {"acc": [0.9, 1]}}
    missing_key = {**stored, "result": {}}
    return {
        "truncated": text[: len(text) // 2],
        "empty": "",
        "a list": "[]",
        "not JSON": "\x00\x01garbage",
        "no result": json.dumps(no_result),
        "edited value": json.dumps(edited),
        "missing key under an intact hash": json.dumps(missing_key),
        "nested 5000 deep": "[" * 5000 + "]" * 5000,
    }


@pytest.mark.parametrize("case", list(_corruptions('{"a": 1}')))
def test_corrupt_stage_file_warns_with_its_name(tmp_path, case):
    path = _stage(tmp_path)
    path.write_text(_corruptions(path.read_text())[case])
    with pytest.warns(StudyCacheWarning, match=f"'{path}'.*recomputed"):
        assert read_stage(path, "abc") is None


def _model(tmp_path):
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    weights, meta = tmp_path / "m.safetensors", tmp_path / "m.json"
    write_model(weights, meta, net.state_dict(), {"test": {"accuracy": 0.5}})
    return net, weights, meta


def test_intact_model_round_trips(tmp_path):
    net, weights, meta = _model(tmp_path)
    state, record = read_model(weights, meta)
    assert record == {"test": {"accuracy": 0.5}}
    for key, value in net.state_dict().items():
        assert torch.equal(state[key], value)


@pytest.mark.parametrize(
    ("which", "content", "named"),
    [
        ("weights", b"garbage", "weights"),
        ("weights", b"", "weights"),
        ("meta", b'{"record": ', "meta"),
        ("meta", b"[]", "meta"),
        ("meta", b'{"weights_sha256": "0", "record": {}}', "weights"),
    ],
)
def test_corrupt_model_cache_warns_with_its_name(tmp_path, which, content, named):
    _, weights, meta = _model(tmp_path)
    {"weights": weights, "meta": meta}[which].write_bytes(content)
    name = {"weights": weights, "meta": meta}[named]
    with pytest.warns(StudyCacheWarning, match=f"'{name}'"):
        assert read_model(weights, meta) is None


def test_weights_without_record_are_not_used(tmp_path):
    _, weights, meta = _model(tmp_path)
    meta.unlink()  # a kill between the two writes
    assert read_model(weights, meta) is None


def test_orphaned_temp_files_are_removed(tmp_path):
    (tmp_path / "results").mkdir()
    orphan = tmp_path / "results" / ".training.json.k2j3h4_x.tmp"
    orphan.write_bytes(b"x" * 100)
    keep = [tmp_path / "results" / "training.json", tmp_path / "results" / ".hidden"]
    for path in keep:
        path.write_text("{}")
    assert remove_orphans(tmp_path) == [orphan]
    assert not orphan.exists() and all(p.exists() for p in keep)
