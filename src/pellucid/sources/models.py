"""Models a user brings: factories by import path, weight files, exported and scripted programs.

* ``"my_pkg.nets:make_net"`` is imported and called with keyword arguments; its weights come
  from a ``.safetensors`` file or a ``torch.save`` checkpoint read with
  ``torch.load(weights_only=True)`` (a ``state_dict``, or a dict holding one under a key
  the user names).
* A ``torch.export`` program (``.pt2``) or a TorchScript file, for users who ship no code.

Nothing is unpickled beyond ``weights_only=True``: a file that is a plain pickle is refused
from its first bytes. Every error names the file, what was expected and what was found.
"""

from __future__ import annotations

import importlib
import os
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["SourceError", "file_kind", "import_object", "load_model", "load_weights"]


class SourceError(ValueError):
    """A user's model or data could not be loaded (names the file, the expectation, the find)."""


def import_object(path: str, *, name: str = "factory") -> Any:
    """Import ``"package.module:attribute"`` (the attribute may be dotted).

    Raises:
        SourceError: `path` is not `module:attribute`, the module cannot be imported, or it has no
            such attribute.
    """
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise SourceError(
            f"`{name}` must be an import path 'package.module:function'; got {path!r}."
        )
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SourceError(
            f"`{name}` {path!r}: module {module_name!r} could not be imported ({exc}). Check "
            "the spelling and that its folder is on PYTHONPATH (or installed)."
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SourceError(
                f"`{name}` {path!r}: module {module_name!r} has no attribute {attr!r}."
            )
        obj = getattr(obj, part)
    return obj


def file_kind(path: Path) -> str:
    """What a model/weights file is, from its bytes: ``safetensors``, ``torchscript``,
    ``export``, ``checkpoint`` (a ``torch.save`` zip), ``pickle`` or ``unknown``."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        return "safetensors"
    if head[:1] == b"\x80" or head[:2] in (b"(d", b"}q", b"(l", b"]q"):
        return "pickle"
    if not zipfile.is_zipfile(path):
        return "unknown"
    names = zipfile.ZipFile(path).namelist()
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("archive_format") for n in names) or any("/models/" in n for n in names):
        return "export"
    if any(n.endswith("data.pkl") for n in names):
        return "checkpoint"
    return "unknown"


_FOUND = {
    "pickle": "a plain Python pickle (refused: unpickling can run code)",
    "unknown": "neither a safetensors file nor a torch.save archive",
    "torchscript": "a TorchScript program",
    "export": "a torch.export program",
    "checkpoint": "a torch.save checkpoint",
    "safetensors": "a safetensors file",
}


def _existing(path: str | os.PathLike[str], name: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise SourceError(
            f"`{name}` must be an existing file; {str(file)!r} "
            + ("is a directory." if file.is_dir() else "does not exist.")
        )
    return file


def load_weights(
    path: str | os.PathLike[str], *, key: str | None = None
) -> dict[str, torch.Tensor]:
    """A ``state_dict`` from ``.safetensors`` or a ``weights_only`` checkpoint.

    Args:
        path: the file.
        key: the entry holding the ``state_dict`` when the checkpoint is a dict of several
            things (e.g. ``"model_state_dict"``).

    Raises:
        SourceError: the file does not exist, is not a safetensors or weights-only torch file, holds
            no state dict under `key`, or its weights do not fit `model`.
    """
    file = _existing(path, "weights")
    kind = file_kind(file)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(file))
        except Exception as exc:  # safetensors raises its own error types
            raise SourceError(
                f"{str(file)!r}: expected a safetensors file; it could not be read ({exc})."
            ) from exc
    elif kind == "checkpoint":
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for anything beyond tensors and containers
            raise SourceError(
                f"{str(file)!r}: expected a weights-only checkpoint; it holds objects that "
                f"torch.load(weights_only=True) refuses ({str(exc).splitlines()[0]}). Save "
                "`model.state_dict()` instead (torch.save or safetensors)."
            ) from exc
    else:
        raise SourceError(
            f"{str(file)!r}: expected weights (.safetensors or a torch.save state_dict); found "
            f"{_FOUND[kind]}."
            + (
                " Pass it as the model itself, without a factory."
                if kind in ("torchscript", "export")
                else ""
            )
        )
    return _state_dict(state, file, key)


def _state_dict(state: Any, file: Path, key: str | None) -> dict[str, torch.Tensor]:
    if key is not None:
        if not isinstance(state, Mapping) or key not in state:
            keys = list(state) if isinstance(state, Mapping) else []
            raise SourceError(
                f"{str(file)!r}: `weights_key` {key!r} is not an entry of the checkpoint; "
                f"found keys {keys[:10]}."
            )
        state = state[key]
    if not isinstance(state, Mapping):
        raise SourceError(
            f"{str(file)!r}: expected a state_dict (a dict of tensors); found "
            f"{type(state).__name__}."
        )
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        nested = [str(k) for k, v in state.items() if isinstance(v, Mapping)]
        raise SourceError(
            f"{str(file)!r}: expected a state_dict (a dict of tensors); found a dict with "
            f"non-tensor entries. Name the entry holding the weights with `weights_key`"
            + (f" (candidates: {', '.join(repr(n) for n in nested)})." if nested else ".")
        )
    return {str(k): v for k, v in state.items()}


def _check_module(model: Any, where: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise SourceError(
            f"{where} must return a torch.nn.Module; it returned {type(model).__name__}."
        )
    return model


def load_model(
    source: str | os.PathLike[str],
    *,
    kwargs: Mapping[str, Any] | None = None,
    weights: str | os.PathLike[str] | None = None,
    weights_key: str | None = None,
) -> nn.Module:
    """Load a user's model, in eval mode.

    Args:
        source: ``"package.module:factory"`` (called with ``kwargs``), or the path of a
            ``torch.export`` program (``.pt2``) or a TorchScript file.
        kwargs: keyword arguments of the factory.
        weights: a ``.safetensors`` file or a ``torch.save`` checkpoint for the factory's
            model (loaded strictly: every parameter must match by name and shape).
        weights_key: the checkpoint entry holding the ``state_dict``.

    Raises:
        SourceError: the import, the call or a file failed; the message names it.

    Example:
        >>> net = load_model("torch.nn:Linear", kwargs={"in_features": 3, "out_features": 2})
        >>> net.weight.shape
        torch.Size([2, 3])
    """
    text = os.fspath(source)
    if ":" in text and not Path(text).exists() and not (len(text) > 1 and text[1] == ":"):
        factory = import_object(text, name="model")
        if not callable(factory):
            raise SourceError(f"`model` {text!r} is not callable; name a function or class.")
        try:
            model = factory(**dict(kwargs or {}))
        except TypeError as exc:
            raise SourceError(
                f"`model` {text!r} could not be called with {dict(kwargs or {})}: {exc}"
            ) from exc
        model = _check_module(model, f"`model` {text!r}")
        if weights is not None:
            state = load_weights(weights, key=weights_key)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise SourceError(
                    f"{os.fspath(weights)!r} does not fit the model of {text!r}: "
                    + " ".join(str(exc).split())[:600]
                ) from exc
        return model.eval()
    if kwargs or weights is not None:
        raise SourceError(
            "`kwargs`/`weights` apply to a factory 'package.module:function'; got the file "
            f"{text!r}, which holds a whole model."
        )
    file = _existing(text, "model")
    kind = file_kind(file)
    if kind == "torchscript":
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; users still ship it
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(file), map_location="cpu").eval()
    if kind == "export":
        try:
            program = torch.export.load(str(file))
        except Exception as exc:  # export raises several types on a broken archive
            raise SourceError(f"{text!r}: expected a torch.export program; {exc}") from exc
        return _StaticBatch.wrap(program)
    raise SourceError(
        f"`model` {text!r}: expected a torch.export program (.pt2), a TorchScript file or a "
        f"factory 'package.module:function'; found {_FOUND[kind]}."
        + (
            " Weights need the code that builds the model: pass a factory and `weights`."
            if kind in ("checkpoint", "safetensors")
            else ""
        )
    )


class _StaticBatch(nn.Module):
    """An exported program whose batch size was fixed at export: any batch is run in
    chunks of that size (the last one padded by repeating its final row)."""

    def __init__(self, module: nn.Module, batch: int) -> None:
        super().__init__()
        self.module = module
        self.batch = batch

    @staticmethod
    def wrap(program: Any) -> nn.Module:
        module = program.module()
        inputs = [
            n
            for n in program.graph.nodes
            if n.op == "placeholder" and n.name in set(program.graph_signature.user_inputs)
        ]
        if len(inputs) == 1 and "val" in inputs[0].meta:
            first = inputs[0].meta["val"].shape[0]
            if isinstance(first, int):
                return _StaticBatch(module, first)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, outs = x.shape[0], []
        for start in range(0, n, self.batch):
            rows = x[start : start + self.batch]
            short = self.batch - rows.shape[0]
            if short:
                rows = torch.cat([rows, rows[-1:].expand(short, *rows.shape[1:])])
            outs.append(self.module(rows)[: self.batch - short])
        return torch.cat(outs)
