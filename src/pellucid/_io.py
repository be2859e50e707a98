"""Atomic file writes (a temp file in the same folder, fsync, then rename) and the checks a
safetensors file passes before anything in it is read or allocated."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "CorruptFileError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "is_int",
    "jsonable",
    "safetensors_metadata",
]


class CorruptFileError(ValueError):
    """A file that is truncated, crafted or not the kind pellucid wrote."""


def is_int(value: Any) -> bool:
    """Whether ``value`` is a plain int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


#: safetensors dtype names and their element sizes (a header's claims are checked with these).
_DTYPE_SIZES = dict.fromkeys(("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3"), 1)
_DTYPE_SIZES.update(dict.fromkeys(("I16", "U16", "F16", "BF16"), 2))
_DTYPE_SIZES.update(dict.fromkeys(("I32", "U32", "F32"), 4))
_DTYPE_SIZES.update(dict.fromkeys(("I64", "U64", "F64"), 8))


def safetensors_metadata(data: bytes, kind: str) -> dict[str, Any]:
    """The ``__metadata__`` of safetensors ``data``, after checking its header.

    Every tensor the header declares must have a known dtype, a shape of sizes, and data
    offsets inside the file spanning exactly the bytes that dtype and shape need, so that
    nothing is ever allocated from a claimed size. ``kind`` names the expected file in
    the :class:`CorruptFileError` raised otherwise.

    Example:
        >>> safetensors_metadata(b"\\x02" + bytes(7) + b"{}", "test")
        {}
        >>> safetensors_metadata(b"\\xff" * 8 + b"{}", "test")
        Traceback (most recent call last):
        ...
        pellucid._io.CorruptFileError: Not a usable test file: its header claims ...
    """

    def corrupt(what: str) -> CorruptFileError:
        return CorruptFileError(f"Not a usable {kind} file: {what}.")

    if len(data) < 8:
        raise corrupt(f"it is {len(data)} bytes long, too short for a safetensors header")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise corrupt(
            f"its header claims {length} bytes but the file has {len(data) - 8} after the "
            "length field (truncated, or not a safetensors file)"
        )
    try:
        header = json.loads(data[8 : 8 + length])
    except (ValueError, RecursionError) as err:
        raise corrupt("its header is not readable JSON (truncated, or not safetensors)") from err
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise corrupt("its header is not a JSON object with a '__metadata__' of strings")
    payload = len(data) - 8 - length
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise corrupt(f"its header entry {key!r:.60} is not an object")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        size = _DTYPE_SIZES.get(str(entry.get("dtype")))
        if size is None:
            raise corrupt(f"tensor {key!r:.60} has unknown dtype {entry.get('dtype')!r:.30}")
        if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
            raise corrupt(f"tensor {key!r:.60} has shape {shape!r:.60}, not a list of sizes")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= payload
        ):
            raise corrupt(
                f"tensor {key!r:.60} has data offsets {offsets!r:.60} outside the file's "
                f"{payload} data bytes"
            )
        numel = 1
        for d in shape:
            numel *= d
        if numel * size != offsets[1] - offsets[0]:
            raise corrupt(
                f"tensor {key!r:.60} claims shape {shape} ({numel * size} bytes) but stores "
                f"{offsets[1] - offsets[0]} bytes"
            )
    return meta


def atomic_write(path: str | os.PathLike[str], writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the finished file to ``path`` in one rename."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"`path` must be a file path; got the directory {str(target)!r}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        writer(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the folder (where the platform allows opening one)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return atomic_write(path, _write)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(obj: Any) -> Any:
    """Turn tensors, numpy values and tuples into JSON values; NaN and inf become None."""
    import math

    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().tolist()
    elif isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> Path:
    """Serialize ``obj`` as JSON (via :func:`jsonable`) and write it atomically."""
    text = json.dumps(jsonable(obj), indent=indent, allow_nan=False)
    return atomic_write_text(path, text + "\n")
