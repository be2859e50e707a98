"""Explanation.save/load against hostile and broken files and awkward contents."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from torch import nn

import pellucid
from pellucid._io import CorruptFileError
from pellucid.explanation import Explanation


def _explanation() -> Explanation:
    return Explanation(
        torch.arange(6.0).view(2, 3),
        torch.ones(2, 3),
        "saliency",
        target=torch.tensor([0, 1]),
        params={"n": 3, "t": torch.zeros(2)},
        extras={"gap": torch.ones(2)},
    )


def _split(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _pack(header: object, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


def _with_meta(data: bytes, edit) -> bytes:
    header, payload = _split(data)
    header["__metadata__"]["pellucid"] = json.dumps(
        edit(json.loads(header["__metadata__"]["pellucid"]))
    )
    return _pack(header, payload)


def _raw_meta(data: bytes, text: str) -> bytes:
    header, payload = _split(data)
    header["__metadata__"]["pellucid"] = text
    return _pack(header, payload)


def _meta_text(data: bytes) -> str:
    return _split(data)[0]["__metadata__"]["pellucid"]


def _with_entry(data: bytes, key: str, **changes) -> bytes:
    header, payload = _split(data)
    header[key].update(changes)
    return _pack(header, payload)


def _cases(good: bytes) -> dict[str, tuple[bytes, str]]:
    def drop(key):
        return lambda m: {k: v for k, v in m.items() if k != key}

    def setting(key, value):
        return lambda m: {**m, key: value}

    header, payload = _split(good)
    swapped = dict(header)
    swapped["attributions"], swapped["inputs"] = header["inputs"], dict(header["inputs"])
    swapped["attributions"] = {**header["attributions"], "shape": [3, 2]}
    nested = "[" * 5000 + "]" * 5000
    return {
        "empty": (b"", "too short"),
        "truncated": (good[: len(good) // 2], "outside the file|header claims"),
        "pickle renamed .safetensors": (pickle.dumps({"a": 1}), "header claims|not readable"),
        "huge shape": (_with_entry(good, "inputs", shape=[100000, 100000]), "claims shape"),
        "offsets past the end": (_with_entry(good, "inputs", data_offsets=[0, 10**15]), "outside"),
        "not JSON metadata": (_raw_meta(good, "{oops"), "malformed"),
        "metadata a list": (_raw_meta(good, "[1, 2]"), "not a JSON object"),
        "metadata nested 5000 deep": (_raw_meta(good, nested), "malformed|not a JSON object"),
        "params nested 5000 deep": (
            _raw_meta(good, _meta_text(good)[:-1] + ', "params": ' + nested + "}"),
            "malformed",
        ),
        "no method": (_with_meta(good, drop("method")), "method"),
        "method a number": (_with_meta(good, setting("method", 5)), "method"),
        "version not a number": (_with_meta(good, setting("version", "x")), "version"),
        "newer version": (_with_meta(good, setting("version", 99)), "up to version"),
        "another format": (_with_meta(good, setting("format", "other")), "format"),
        "missing tensor reference": (
            _with_meta(good, setting("extras", {"__tensor__": "nope"})),
            "malformed",
        ),
        "bad dict entries": (_with_meta(good, setting("params", {"__dict__": [[1]]})), "malformed"),
        "bad float": (_with_meta(good, setting("params", {"__float__": "x"})), "malformed"),
        "attributions of another shape": (_pack(swapped, payload), "shape of its inputs"),
        "no pellucid metadata": (
            _pack({**header, "__metadata__": {"other": "1"}}, payload),
            "not a pellucid explanation",
        ),
    }


def test_hostile_explanation_files_are_refused_clearly(tmp_path):
    good_path = _explanation().save(tmp_path / "good.safetensors")
    good = good_path.read_bytes()
    cases = _cases(good)
    for name, (data, pattern) in cases.items():
        path = tmp_path / "bad.safetensors"
        path.write_bytes(data)
        with pytest.raises(ValueError, match=pattern) as info:
            Explanation.load(path)
        assert str(path) in str(info.value), name
    # every prefix of the file (step 11): refused as corrupt, never another exception
    for cut in range(0, len(good), 11):
        path = tmp_path / "cut.safetensors"
        path.write_bytes(good[:cut])
        with pytest.raises(CorruptFileError):
            Explanation.load(path)
    assert len(cases) >= 18


def test_colliding_keys_round_trip(tmp_path):
    """``{"a.b": t1, "a": {"b": t0}}`` used to flatten both tensors to one name."""
    e = Explanation(
        torch.ones(1, 2),
        torch.ones(1, 2),
        "saliency",
        params={"a.b": torch.tensor([1.0]), "a": {"b": torch.tensor([0.0])}},
        extras={"x": [torch.tensor([2.0]), {"0": torch.tensor([3.0])}], "x.0": torch.tensor([4.0])},
    )
    back = Explanation.load(e.save(tmp_path / "e.safetensors"))
    assert back.params["a.b"].item() == 1.0 and back.params["a"]["b"].item() == 0.0
    assert back.extras["x"][0].item() == 2.0 and back.extras["x"][1]["0"].item() == 3.0
    assert back.extras["x.0"].item() == 4.0


def test_shared_memory_tensors_save(tmp_path):
    """Grad-CAM of a 1-channel input: ``extras["cam"]`` is the attributions' memory."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2)
    ).eval()
    e = pellucid.grad_cam(model, torch.randn(2, 1, 4, 4), target=0, layer="0")
    back = Explanation.load(e.save(tmp_path / "cam.safetensors"))
    torch.testing.assert_close(back.attributions, e.attributions, rtol=0, atol=0)
    for key, value in e.extras.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(back.extras[key], value, rtol=0, atol=0)
