"""``Explanation``: the one result type of every attribution method, and its safe file format.

Files are safetensors: every tensor (attributions, inputs, baseline, target, tensor-valued
params and extras) is stored as a tensor, everything else as JSON in the header metadata.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pellucid._io import atomic_write

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Explanation"]

FORMAT_NAME = "pellucid.explanation"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Explanation:
    """Attributions for a batch of inputs, with everything needed to reproduce them.

    Attributes:
        attributions: one value per input feature, the shape of ``inputs``.
        inputs: the explained inputs (detached).
        method: the registered method name.
        target: what was explained: a tensor of class indices (one per example), a name, or
            None when the model has one output per example.
        baseline: the reference input used (None for methods without one).
        params: exactly the parameters used, after defaults were filled in.
        extras: diagnostics, e.g. ``completeness_gap`` per example, standard errors, R².

    Example:
        >>> import torch
        >>> e = Explanation(torch.ones(2, 3), torch.zeros(2, 3), "saliency")
        >>> e.attributions.shape
        torch.Size([2, 3])
    """

    attributions: torch.Tensor
    inputs: torch.Tensor
    method: str
    target: Any = None
    baseline: torch.Tensor | None = None
    params: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.attributions, torch.Tensor):
            raise TypeError("`attributions` must be a torch.Tensor.")

    def __len__(self) -> int:
        return int(self.attributions.shape[0])

    def __repr__(self) -> str:
        return (
            f"Explanation(method={self.method!r}, attributions={tuple(self.attributions.shape)}, "
            f"dtype={self.attributions.dtype}, extras={sorted(self.extras)})"
        )

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the explanation to ``path`` (safetensors), atomically."""
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "method": self.method,
            "target": _encode(self.target, "target", tensors),
            "baseline": _encode(self.baseline, "baseline", tensors),
            "params": _encode(self.params, "params", tensors),
            "extras": _encode(self.extras, "extras", tensors),
        }
        tensors["attributions"] = self.attributions.detach().cpu().contiguous()
        tensors["inputs"] = self.inputs.detach().cpu().contiguous()
        storages: set[int] = set()
        for key, tensor in tensors.items():  # safetensors refuses tensors sharing memory
            ptr = tensor.untyped_storage().data_ptr()
            if ptr in storages and tensor.numel():
                tensors[key] = tensor.clone()
            storages.add(ptr)
        metadata = {"pellucid": json.dumps(meta)}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Explanation:
        """Read an explanation written by :meth:`save`; refuses other files clearly.

        Raises:
            FileNotFoundError: `path` is not an existing file.
            ValueError: the file is not a pellucid explanation (safetensors with pellucid metadata),
                or has a newer format version.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"`path` must be an existing file; got {str(path)!r}.")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(
                f"{str(path)!r} is not a pellucid explanation file (safetensors): {exc}"
            ) from exc
        if "pellucid" not in metadata:
            raise ValueError(f"{str(path)!r} is a safetensors file but not a pellucid explanation.")
        meta = json.loads(metadata["pellucid"])
        if meta.get("format") != FORMAT_NAME or int(meta.get("version", -1)) > FORMAT_VERSION:
            raise ValueError(
                f"{str(path)!r} has format {meta.get('format')!r} version {meta.get('version')}; "
                f"this pellucid reads {FORMAT_NAME!r} up to version {FORMAT_VERSION}."
            )
        return cls(
            attributions=tensors["attributions"],
            inputs=tensors["inputs"],
            method=meta["method"],
            target=_decode(meta["target"], tensors),
            baseline=_decode(meta["baseline"], tensors),
            params=_decode(meta["params"], tensors),
            extras=_decode(meta["extras"], tensors),
        )


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-encode ``value``; tensors go to ``tensors`` under ``key`` and leave a reference."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {"__dict__": [[str(k), _encode(v, f"{key}.{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        items = [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, float) and value != value:
        return {"__float__": "nan"}
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return {"__float__": str(value)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return {"__repr__": repr(value)}


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__dict__" in value:
            return {k: _decode(v, tensors) for k, v in value["__dict__"]}
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        if "__float__" in value:
            return float(value["__float__"])
        if "__repr__" in value:
            return value["__repr__"]
    return value
