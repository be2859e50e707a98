"""Save and load pruned models without pickle.

One safetensors file holds the weights and, in its JSON metadata, the pruned-shape spec of
every Linear, convolution, BatchNorm and LayerNorm. Loading builds the model from the
original factory, resizes the modules to the spec and loads the weights strictly. Weights
with many zeros are stored as a packed bitmask plus the non-zero values, so an unstructured
90%-sparse model's file really is small. Files are written atomically.

Example:
    >>> import tempfile, os, torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> path = os.path.join(tempfile.mkdtemp(), "net.safetensors")
    >>> _ = save(net, path)
    >>> back = load(path, lambda: torch.nn.Sequential(
    ...     torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)))
    >>> torch.equal(back[0].weight, net[0].weight)
    True
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from pellucid._io import atomic_write_bytes
from pellucid._validation import did_you_mean
from pellucid.pruning._shrink import SHRINKABLE, empty_like_spec, module_spec

__all__ = [
    "FORMAT",
    "effective_state_dict",
    "from_bytes",
    "load",
    "model_spec",
    "read_metadata",
    "save",
    "to_bytes",
]

FORMAT = "pellucid.pruned/1"


def effective_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with ``weight_orig``/``weight_mask`` folded into ``weight``.

    Example:
        >>> from torch.nn.utils import prune
        >>> net = prune.l1_unstructured(torch.nn.Linear(2, 2), "weight", amount=0.5)
        >>> sorted(effective_state_dict(net))
        ['bias', 'weight']
    """
    state = model.state_dict()
    result: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state:
            base = key[: -len("_orig")]
            result[base] = (value * state[base + "_mask"]).detach()
            continue
        result[key] = value.detach()
    return result


def model_spec(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: shape spec}`` of every Linear, convolution, BatchNorm and LayerNorm.

    Example:
        >>> model_spec(torch.nn.Sequential(torch.nn.Linear(3, 2)))
        {'0': {'type': 'Linear', 'in': 3, 'out': 2}}
    """
    return {n: module_spec(m) for n, m in model.named_modules() if isinstance(m, SHRINKABLE)}


def _encode(tensor: torch.Tensor, sparse: bool | None) -> tuple[dict[str, torch.Tensor], Any]:
    tensor = tensor.detach().cpu().contiguous()
    if sparse is False or not tensor.is_floating_point() or tensor.numel() < 64:
        return {"": tensor}, None
    nonzero = tensor != 0
    nnz = int(nonzero.sum())
    dense_bytes = tensor.numel() * tensor.element_size()
    sparse_bytes = (tensor.numel() + 7) // 8 + nnz * tensor.element_size()
    if sparse is None and sparse_bytes > 0.9 * dense_bytes:
        return {"": tensor}, None
    bits = torch.from_numpy(np.packbits(nonzero.reshape(-1).numpy()))
    info = {"encoding": "bitmask", "shape": list(tensor.shape)}
    return {"::bits": bits, "::values": tensor[nonzero].contiguous()}, info


def _decode(tensors: dict[str, torch.Tensor], key: str, info: dict[str, Any]) -> torch.Tensor:
    shape = [int(s) for s in info["shape"]]
    values = tensors[key + "::values"]
    n = int(np.prod(shape)) if shape else 1
    bits = np.unpackbits(tensors[key + "::bits"].numpy(), count=n).astype(bool)
    mask = torch.from_numpy(bits)
    if int(mask.sum()) != values.numel():
        raise ValueError(f"Corrupt sparse entry {key!r}: mask and values disagree.")
    out = torch.zeros(n, dtype=values.dtype)
    out[mask] = values
    return out.reshape(shape)


def to_bytes(
    model: nn.Module, *, sparse: bool | None = None, metadata: dict[str, Any] | None = None
) -> bytes:
    """The file :func:`save` writes, as bytes.

    Args:
        model: the (pruned) model.
        sparse: ``None`` stores a weight as bitmask + values when that is at least 10%
            smaller; ``True`` whenever it has zeros; ``False`` never.
        metadata: extra JSON-able information kept in the file.

    Raises:
        TypeError: `model` is not an nn.Module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}.")
    tensors: dict[str, torch.Tensor] = {}
    encoded: dict[str, Any] = {}
    for key, value in effective_state_dict(model).items():
        parts, info = _encode(value, sparse)
        for suffix, part in parts.items():
            tensors[key + suffix] = part
        if info is not None:
            encoded[key] = info
    header = {
        "format": FORMAT,
        "spec": json.dumps(model_spec(model)),
        "sparse": json.dumps(encoded),
        "user": json.dumps(metadata or {}),
    }
    return st_save(tensors, metadata=header)


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    sparse: bool | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (pruned or not) to ``path`` atomically; see :func:`to_bytes`.

    Raises:
        TypeError: `model` is not an nn.Module.
    """
    return atomic_write_bytes(path, to_bytes(model, sparse=sparse, metadata=metadata))


def _header(data: bytes) -> dict[str, str]:
    if len(data) < 8:
        raise ValueError("Not a pellucid pruned-model file: it is too short.")
    (length,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError as err:
        raise ValueError("Not a pellucid pruned-model file: unreadable header.") from err
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"Not a pellucid pruned-model file (format {meta.get('format')!r}, expected "
            f"{FORMAT!r}); write it with pellucid.pruning.io.save."
        )
    return meta


def from_bytes(data: bytes, factory: Callable[[], nn.Module]) -> nn.Module:
    """Rebuild a model from :func:`to_bytes` output through the original ``factory``.

    Raises:
        TypeError: `factory` is not callable (or is a model instead of a builder), or does not
            return an nn.Module.
        ValueError: `data` is not a pellucid pruned-model file, is corrupt, or its weights do not
            fit the model from `factory`.
    """
    if isinstance(factory, nn.Module) or not callable(factory):
        raise TypeError(
            f"`factory` must be a callable that builds the original (unpruned) model, such "
            f"as the model class or `lambda: Net(...)`; got {type(factory).__name__}."
        )
    meta = _header(data)
    spec = json.loads(meta["spec"])
    sparse = json.loads(meta["sparse"])
    raw = st_load(data)
    model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"`factory` must return an nn.Module; got {type(model).__name__}.")
    modules = dict(model.named_modules())
    replacements: dict[str, nn.Module] = {}
    for name, wanted in spec.items():
        module = modules.get(name)
        if module is None or type(module).__name__ != wanted["type"]:
            found = "nothing" if module is None else f"a {type(module).__name__}"
            raise ValueError(
                f"The file's spec does not fit the model from `factory`: it expects a "
                f"{wanted['type']} at {name!r}, the factory built {found} there."
                + did_you_mean(name, [n for n in modules if n])
            )
        current = module_spec(module)
        if current == wanted:
            continue
        if any(wanted.get(k, 0) > current.get(k, 0) for k in ("in", "out")):
            raise ValueError(
                f"The file's spec does not fit the model from `factory`: {name!r} is "
                f"{wanted} in the file but only {current} in the factory's model."
            )
        replacements[name] = empty_like_spec(module, wanted)
    for name, module in replacements.items():
        parent, _, attr = name.rpartition(".")
        setattr(modules[parent] if parent else model, attr, module)
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if "::" not in key:
            state[key] = value
    for key, info in sparse.items():
        state[key] = _decode(raw, key, info)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"The file's weights do not fit the model from `factory`: {err}") from err
    model.eval()
    return model


def load(path: str | os.PathLike[str], factory: Callable[[], nn.Module]) -> nn.Module:
    """Load a model written by :func:`save`, rebuilt through ``factory`` (returns eval mode).

    Args:
        path: the file.
        factory: builds the original, unpruned model (e.g. ``lambda: TinyResNet(width=32)``);
            its layers are resized to the saved spec before the weights are loaded.

    Raises:
        TypeError: `factory` is not callable (or is a model instead of a builder), or does not
            return an nn.Module.
        ValueError: the file is not a pellucid pruned-model file, is corrupt, or its weights do not
            fit the model from `factory`.
    """
    return from_bytes(Path(path).read_bytes(), factory)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The user metadata stored by :func:`save`."""
    return json.loads(_header(Path(path).read_bytes())["user"])
