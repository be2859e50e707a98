"""pruning.io against hostile and broken files: each is refused with a clear ValueError (a
``CorruptFileError`` when the file itself is bad) before anything large is allocated."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys

import pytest
import torch
from torch import nn

from pellucid._io import CorruptFileError
from pellucid.pruning import io, prune_magnitude_


def _factory() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))


def _sparse_model() -> nn.Module:
    torch.manual_seed(0)
    return prune_magnitude_(_factory(), amount=0.8)


def _split(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _pack(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


def _with_meta(data: bytes, **changes: str) -> bytes:
    header, payload = _split(data)
    header["__metadata__"].update(changes)
    return _pack(header, payload)


def _with_sparse(data: bytes, key: str, info: object) -> bytes:
    header, payload = _split(data)
    sparse = json.loads(header["__metadata__"]["sparse"])
    sparse[key] = info
    header["__metadata__"]["sparse"] = json.dumps(sparse)
    return _pack(header, payload)


def _with_entry(data: bytes, key: str, **changes: object) -> bytes:
    header, payload = _split(data)
    header[key].update(changes)
    return _pack(header, payload)


@pytest.fixture(scope="module")
def good() -> bytes:
    data = io.to_bytes(_sparse_model(), sparse=True)
    assert "0.weight::bits" in _split(data)[0]  # the file holds a bitmask entry
    return data


def _hostile(good: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, a pattern the error must match)."""
    header, payload = _split(good)
    deep = "[" * 5000 + "]" * 5000
    return {
        "empty": (b"", "too short"),
        "truncated header": (good[:40], "header claims"),
        "truncated data": (good[:-10], "outside the file"),
        "header length past the end": (b"\xff" * 8 + good[8:], "header claims"),
        "garbage header": (struct.pack("<Q", 4) + b"\x00\x01{[", "not readable JSON"),
        "header nested 5000 deep": (
            _pack({"__metadata__": {}, "x": []}, b"")[:8] + deep.encode(),
            "header claims|not readable",
        ),
        "header is a list": (_pack([], b""), "JSON object"),  # type: ignore[arg-type]
        "pickle renamed .safetensors": (
            pickle.dumps({"0.weight": torch.zeros(8, 16)}),
            "header claims|too short|not readable",
        ),
        "torch.save file": (_torch_saved(), "header claims|not readable"),
        "huge shape claimed": (_with_entry(good, "0.bias", shape=[20000, 20000]), "claims shape"),
        "offsets past the end": (
            _with_entry(good, "0.bias", data_offsets=[0, 10**12]),
            "outside the file",
        ),
        "negative shape": (_with_entry(good, "0.bias", shape=[-8]), "not a list of sizes"),
        "unknown dtype": (_with_entry(good, "0.bias", dtype="F128"), "unknown dtype"),
        "sparse shape memory bomb": (
            _with_sparse(good, "0.weight", {"encoding": "bitmask", "shape": [20000, 20000]}),
            "claims shape",
        ),
        "sparse shape of strings": (
            _with_sparse(good, "0.weight", {"encoding": "bitmask", "shape": ["x"]}),
            "not a list of ints",
        ),
        "empty sparse entry": (_with_sparse(good, "0.weight", {}), "not a bitmask"),
        "sparse entry for no weight": (
            _with_sparse(good, "nope.weight", {"encoding": "bitmask", "shape": [2]}),
            "names no weight",
        ),
        "missing spec": (_drop_meta(good, "spec"), "no 'spec'"),
        "spec not JSON": (_with_meta(good, spec="{not json"), "'spec' is not readable JSON"),
        "spec a list": (_with_meta(good, spec="[1, 2]"), "'spec' is not a JSON object"),
        "bad out": (
            _with_meta(good, spec=json.dumps({"0": {"type": "Linear", "in": 16, "out": "x"}})),
            "out='x'",
        ),
        "negative out": (
            _with_meta(good, spec=json.dumps({"0": {"type": "Linear", "in": 16, "out": -1}})),
            "out=-1",
        ),
        "huge out": (
            _with_meta(good, spec=json.dumps({"0": {"type": "Linear", "in": 16, "out": 10**9}})),
            "only",
        ),
        "user metadata not JSON": (_with_meta(good, user="]"), None),
        "another model's metadata": (io.to_bytes(nn.Sequential(nn.Linear(3, 3))), "fit"),
        "weight stored as integers": (_int_weights(), "stored as torch.int"),
        "stray tensor": (_stray(good), "belongs to no sparse entry"),
        "another format": (_with_meta(good, format="other/1"), "Not a pellucid pruned-model"),
    }


def _drop_meta(data: bytes, name: str) -> bytes:
    header, payload = _split(data)
    del header["__metadata__"][name]
    return _pack(header, payload)


def _torch_saved() -> bytes:
    import io as _io

    buffer = _io.BytesIO()
    torch.save(_factory().state_dict(), buffer)
    return buffer.getvalue()


def _int_weights() -> bytes:
    model = _factory()
    data = io.to_bytes(model, sparse=False)
    header, payload = _split(data)
    header["2.bias"]["dtype"] = "I32"  # same byte count, integer values
    return _pack(header, payload)


def _stray(good: bytes) -> bytes:
    header, payload = _split(good)
    header["x::bits"] = {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}
    return _pack(header, payload)


def test_every_hostile_file_is_refused_clearly(good, tmp_path):
    cases = _hostile(good)
    for name, (data, pattern) in cases.items():
        path = tmp_path / "m.safetensors"
        path.write_bytes(data)
        if pattern is None:  # the weights load; reading the user metadata is refused
            io.load(path, _factory)
            with pytest.raises(CorruptFileError, match="'user'"):
                io.read_metadata(path)
            continue
        with pytest.raises(ValueError, match=pattern) as info:
            io.load(path, _factory)
        assert "Traceback" not in str(info.value), name
    assert len(cases) >= 25


def test_truncated_and_flipped_files_never_escape_as_other_errors(good):
    """Every prefix length (step 7) and single-byte corruption of the header: a model or
    a ValueError, nothing else."""
    tried = 0
    for cut in range(0, len(good), 7):
        with pytest.raises(ValueError):
            io.from_bytes(good[:cut], _factory)
        tried += 1
    (length,) = struct.unpack("<Q", good[:8])
    for pos in range(8, 8 + length, 3):
        for byte in (0x00, 0x22, 0x7B, 0x39):
            data = good[:pos] + bytes([byte]) + good[pos + 1 :]
            try:
                io.from_bytes(data, _factory)
            except ValueError:
                pass
            tried += 1
    assert tried > 500


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(TypeError, match=r"`metadata` must hold only JSON values.*tolist"):
        io.save(_factory(), tmp_path / "m.safetensors", metadata={"t": torch.ones(2)})
    with pytest.raises(TypeError, match="`metadata` must be a dict"):
        io.save(_factory(), tmp_path / "m.safetensors", metadata=[1])  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


BOMB = r"""
import json, resource, struct, sys, time, tracemalloc
import torch
from torch import nn
from pellucid.pruning import io, prune_magnitude_

factory = lambda: nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
torch.manual_seed(0)
data = io.to_bytes(prune_magnitude_(factory(), amount=0.8), sparse=True)
(length,) = struct.unpack("<Q", data[:8])
header = json.loads(data[8 : 8 + length])
sparse = json.loads(header["__metadata__"]["sparse"])
sparse["0.weight"]["shape"] = [20000, 20000]
header["__metadata__"]["sparse"] = json.dumps(sparse)
text = json.dumps(header).encode()
path = sys.argv[1]
open(path, "wb").write(data)
io.load(path, factory)  # warm-up on the intact file: imports and first-call costs
open(path, "wb").write(struct.pack("<Q", len(text)) + text + data[8 + length :])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
start = time.perf_counter()
try:
    io.load(path, factory)
    message = "loaded"
except ValueError as err:
    message = str(err)
elapsed = time.perf_counter() - start
peak = tracemalloc.get_traced_memory()[1]
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"message": message, "seconds": elapsed, "traced": peak, "rss_kb": grown,
                  "size": len(open(path, "rb").read())}))
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in kilobytes on Linux")
def test_sparse_memory_bomb_allocates_nothing_large(tmp_path):
    """A ~1.5 KB file whose sparse entry claims [20000, 20000] (3.7 GB and 10 s before)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run(
        [sys.executable, "-c", BOMB, str(tmp_path / "bomb.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["size"] < 4096
    assert "claims shape (20000, 20000)" in result["message"]
    assert result["traced"] < 10 * 2**20  # Python and numpy allocations
    assert result["rss_kb"] < 10 * 1024  # everything, torch's allocator included
