"""``Explanation``: the one result type of every attribution method, and its safe file format.

Files are safetensors: every tensor (attributions, inputs, baseline, target, tensor-valued
params and extras) is stored as a tensor, everything else as JSON in the header metadata.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from pellucid._io import CorruptFileError, atomic_write, is_int, safetensors_metadata

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

    def to(self, device: torch.device | str) -> Explanation:
        """A copy whose tensors (attributions, inputs, baseline, a tensor target, tensors in
        ``extras``) are on ``device``, e.g. ``e.to("cpu")`` to plot a GPU's result.

        Raises:
            ValueError: `device` is not a device name (``"cpu"``, ``"cuda:0"``) or is one
                torch cannot use here.
            TypeError: `device` is neither a string nor a torch.device.

        Example:
            >>> e = Explanation(torch.ones(2, 3), torch.zeros(2, 3), "saliency")
            >>> e.to("cpu").attributions.device.type
            'cpu'
        """
        if not isinstance(device, str | torch.device):
            raise TypeError(
                f"`device` must be a device name such as 'cpu' or 'cuda:0', or a torch.device; "
                f"got {type(device).__name__}."
            )
        try:
            device = torch.device(device)
            torch.empty(0, device=device)  # a device this process can use
        except (RuntimeError, AssertionError) as exc:  # a CPU-only torch asserts on "cuda"
            raise ValueError(
                f"`device` must be a device torch can use here ('cpu', 'cuda:0'); got "
                f"{str(device)!r} ({str(exc).splitlines()[0][:120]})."
            ) from None

        def move(value: Any) -> Any:
            return value.to(device) if isinstance(value, torch.Tensor) else value

        return replace(
            self,
            attributions=move(self.attributions),
            inputs=move(self.inputs),
            target=move(self.target),
            baseline=move(self.baseline),
            extras={key: move(value) for key, value in self.extras.items()},
        )

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the explanation to ``path`` (safetensors), atomically.

        Tensors that share memory (Grad-CAM's ``extras["cam"]`` of a 1-channel input is its
        attributions) are stored as separate copies.
        """
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
        _store(self.attributions, "attributions", tensors)
        _store(self.inputs, "inputs", tensors)
        metadata = {"pellucid": json.dumps(meta)}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Explanation:
        """Read an explanation written by :meth:`save`; refuses other files clearly.

        Raises:
            FileNotFoundError: ``path`` is not a file.
            ValueError: the file is not a readable pellucid explanation (truncated, crafted,
                another format or a newer version: :class:`~pellucid._io.CorruptFileError`).
        """
        from safetensors.torch import load as st_load

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"`path` must be an existing file; got {str(path)!r}.")
        data = path.read_bytes()
        try:
            metadata = safetensors_metadata(data, "pellucid explanation")
            tensors = st_load(data)
        except CorruptFileError as exc:
            reason = str(exc).split(": ", 1)[-1]
            raise CorruptFileError(
                f"{str(path)!r} is not a pellucid explanation file (safetensors): {reason}"
            ) from None
        except Exception as exc:  # safetensors raises its own error types
            raise CorruptFileError(
                f"{str(path)!r} is not a pellucid explanation file (safetensors): {exc}"
            ) from exc
        if "pellucid" not in metadata:
            raise ValueError(f"{str(path)!r} is a safetensors file but not a pellucid explanation.")
        try:
            return cls._from_parts(metadata["pellucid"], tensors)
        except (KeyError, TypeError, ValueError, RecursionError) as exc:
            if isinstance(exc, CorruptFileError):
                raise CorruptFileError(f"{str(path)!r}: {exc}") from None
            raise CorruptFileError(
                f"{str(path)!r} is not a readable pellucid explanation: its metadata is "
                f"malformed ({type(exc).__name__}: {str(exc)[:120]})."
            ) from None

    @classmethod
    def _from_parts(cls, text: str, tensors: dict[str, torch.Tensor]) -> Explanation:
        meta = json.loads(text)
        if not isinstance(meta, dict):
            raise CorruptFileError("its metadata is not a JSON object.")
        version = meta.get("version")
        readable = isinstance(version, int) and is_int(version) and 1 <= version <= FORMAT_VERSION
        if meta.get("format") != FORMAT_NAME or not readable:
            raise CorruptFileError(
                f"it has format {meta.get('format')!r:.60} version {version!r:.20}; this "
                f"pellucid reads {FORMAT_NAME!r} up to version {FORMAT_VERSION}."
            )
        attributions, inputs = tensors.get("attributions"), tensors.get("inputs")
        if attributions is None or inputs is None:
            raise CorruptFileError("it lacks the 'attributions' or 'inputs' tensor.")
        if attributions.shape != inputs.shape:
            raise CorruptFileError(
                f"its attributions {tuple(attributions.shape)} do not have the shape of its "
                f"inputs {tuple(inputs.shape)}."
            )
        if not isinstance(meta.get("method"), str):
            raise CorruptFileError(f"its method is {meta.get('method')!r:.40}, not a name.")
        return cls(
            attributions=attributions,
            inputs=inputs,
            method=meta["method"],
            target=_decode(meta.get("target"), tensors),
            baseline=_decode(meta.get("baseline"), tensors),
            params=_decode(meta.get("params", {}), tensors),
            extras=_decode(meta.get("extras", {}), tensors),
        )


def _store(value: torch.Tensor, key: str, tensors: dict[str, torch.Tensor]) -> str:
    """Put ``value`` in ``tensors`` under a free name (``key``, else ``key~1``, ...), as its
    own contiguous CPU copy when it shares memory with a tensor already stored."""
    name, i = key, 0
    while name in tensors:
        i += 1
        name = f"{key}~{i}"
    tensor = value.detach().cpu().contiguous()
    if tensor.numel() and any(
        t.numel() and t.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()
        for t in tensors.values()
    ):
        tensor = tensor.clone()
    tensors[name] = tensor
    return name


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-encode ``value``; tensors go to ``tensors`` under ``key`` and leave a reference."""
    if isinstance(value, torch.Tensor):
        return {"__tensor__": _store(value, key, tensors)}
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
    """The inverse of :func:`_encode`; a reference to a missing tensor is a KeyError."""
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__dict__" in value:
            return {str(k): _decode(v, tensors) for k, v in value["__dict__"]}
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        if "__float__" in value:
            return float(value["__float__"])
        if "__repr__" in value:
            return value["__repr__"]
    return value
