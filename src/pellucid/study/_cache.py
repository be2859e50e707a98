"""The study's on-disk caches: stage results and trained models, each with a checksum.

A cached file is used only when it is intact: a stage result (``results/<stage>.json``) is
a JSON object whose ``checksum`` is the SHA-256 of its config hash and result; a trained
model is a safetensors file plus a JSON record holding the SHA-256 of those weights. A
truncated, garbled or hand-edited file is never read as complete: it is reported with a
:class:`StudyCacheWarning` naming the file and recomputed. Temporary files a killed write
left behind (``.NAME.*.tmp``, see :func:`pellucid._io.atomic_write`) are removed when the
study starts.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from pellucid._io import atomic_write, atomic_write_json, jsonable
from pellucid._warnings import PellucidWarning

__all__ = [
    "StudyCacheWarning",
    "checksum",
    "read_model",
    "read_stage",
    "remove_orphans",
    "write_model",
    "write_stage",
]


class StudyCacheWarning(PellucidWarning):
    """A cached study file was unreadable or failed its checksum and is recomputed."""


def checksum(obj: Any) -> str:
    """SHA-256 of the canonical JSON text of ``obj`` (after :func:`jsonable`)."""
    text = json.dumps(jsonable(obj), sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _warn(path: Path, why: str) -> None:
    warnings.warn(
        f"The study cache file {str(path)!r} {why}; it is recomputed.",
        StudyCacheWarning,
        stacklevel=3,
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def read_stage(path: Path, config_hash: str) -> dict[str, Any] | None:
    """The cached result at ``path`` if intact and made with ``config_hash``, else None.

    A missing file or one from another configuration is silently recomputed; a corrupt
    one (unreadable, not an object, missing keys, wrong checksum) warns first.
    """
    if not path.is_file():
        return None
    stored = _read_json(path)
    keys = ("config_hash", "result", "checksum")
    if not isinstance(stored, dict) or any(k not in stored for k in keys):
        _warn(path, "is truncated or not a stage result")
        return None
    if stored["checksum"] != checksum([stored["config_hash"], stored["result"]]):
        _warn(path, "fails its checksum (changed or partly written)")
        return None
    if stored["config_hash"] != config_hash or not isinstance(stored["result"], dict):
        return None
    return stored["result"]


def write_stage(path: Path, record: dict[str, Any]) -> None:
    """Write a stage record (with ``config_hash`` and ``result``) and its checksum."""
    record = jsonable(record)
    record["checksum"] = checksum([record["config_hash"], record["result"]])
    atomic_write_json(path, record)


def read_model(weights: Path, meta: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """``(state dict, record)`` of a cached trained model if both files are intact."""
    if not (weights.is_file() and meta.is_file()):
        return None
    stored = _read_json(meta)
    if not isinstance(stored, dict) or not isinstance(stored.get("record"), dict):
        _warn(meta, "is truncated or not a model record")
        return None
    data = weights.read_bytes()
    if stored.get("weights_sha256") != hashlib.sha256(data).hexdigest():
        _warn(weights, "does not match the checksum in its record")
        return None
    from safetensors.torch import load

    try:
        state = load(data)
    except Exception:  # safetensors raises its own error type
        _warn(weights, "is not a readable safetensors file")
        return None
    return state, stored["record"]


def write_model(
    weights: Path, meta: Path, state: dict[str, torch.Tensor], record: dict[str, Any]
) -> None:
    """Write the weights, then the record with the weights' checksum (so a kill between
    the two leaves weights without a record, which is retrained)."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous() for k, v in state.items()})

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    atomic_write(weights, _write)
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_json(meta, {"weights_sha256": digest, "record": record})


_ORPHAN = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")


def remove_orphans(out_dir: Path) -> list[Path]:
    """Delete the temporary files of killed writes under the study's folders."""
    removed = []
    for sub in ("results", "models", "report", ""):
        folder = out_dir / sub if sub else out_dir
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if _ORPHAN.match(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
