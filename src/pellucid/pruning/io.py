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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from pellucid._io import CorruptFileError, atomic_write_bytes, is_int, safetensors_metadata
from pellucid._validation import describe_value, did_you_mean
from pellucid.pruning._shrink import SHRINKABLE, empty_like_spec, module_spec

__all__ = [
    "FORMAT",
    "CorruptFileError",
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


def _corrupt(what: str) -> CorruptFileError:
    return CorruptFileError(f"Not a usable pellucid pruned-model file: {what}.")


def _decode(
    tensors: dict[str, torch.Tensor], key: str, info: Any, expected: torch.Tensor | None
) -> torch.Tensor:
    """Unpack a bitmask + values entry, after checking every declared size: the shape must
    be the model's (so a file cannot make us allocate more than the model holds) and the
    stored mask must have exactly one bit per element."""
    if expected is None:
        raise _corrupt(f"its sparse entry {key!r} names no weight of the model")
    if not isinstance(info, dict) or info.get("encoding") != "bitmask":
        raise _corrupt(f"its sparse entry {key!r} is not a bitmask description: {info!r:.80}")
    shape = info.get("shape")
    if not isinstance(shape, list) or [int(s) for s in shape if is_int(s)] != shape:
        raise _corrupt(f"its sparse entry {key!r} has shape {shape!r:.80}, not a list of ints")
    if tuple(shape) != tuple(expected.shape):
        raise _corrupt(
            f"its sparse entry {key!r} claims shape {tuple(shape)}, but the model's weight "
            f"there is {tuple(expected.shape)}"
        )
    bits, values = tensors.get(key + "::bits"), tensors.get(key + "::values")
    if bits is None or values is None:
        raise _corrupt(f"its sparse entry {key!r} lacks its '::bits' or '::values' tensor")
    n = expected.numel()
    if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != (n + 7) // 8:
        raise _corrupt(
            f"its sparse entry {key!r} stores {bits.numel()} {bits.dtype} mask bytes for "
            f"{n} elements (expected {(n + 7) // 8} uint8)"
        )
    if values.dim() != 1 or values.numel() > n or not values.is_floating_point():
        raise _corrupt(
            f"its sparse entry {key!r} has {tuple(values.shape)} {values.dtype} values for "
            f"{n} elements (expected at most {n} floating-point values)"
        )
    mask = torch.from_numpy(np.unpackbits(bits.numpy(), count=n).astype(bool))
    if int(mask.sum()) != values.numel():
        raise _corrupt(f"its sparse entry {key!r} has a mask and values that disagree")
    out = torch.zeros(n, dtype=values.dtype)
    out[mask] = values
    return out.reshape(shape)


def _user_metadata(metadata: Any) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise TypeError(
            f"`metadata` must be a dict of JSON values or None; got {describe_value(metadata)}."
        )
    try:
        return json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"`metadata` must hold only JSON values (str, int, finite float, bool, None, lists "
            f"and dicts of them); {err}. Convert tensors with `.tolist()`."
        ) from err


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
        TypeError: `model` is not an nn.Module, or `metadata` is not a dict of JSON values.
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
        "user": _user_metadata(metadata),
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
        TypeError: `model` is not an nn.Module, or `metadata` is not a dict of JSON values.
    """
    return atomic_write_bytes(path, to_bytes(model, sparse=sparse, metadata=metadata))


def _header(data: bytes) -> dict[str, Any]:
    """The file's metadata, after :func:`~pellucid._io.safetensors_metadata`'s checks."""
    meta = safetensors_metadata(data, "pellucid pruned-model")
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"Not a pellucid pruned-model file (format {meta.get('format')!r:.60}, expected "
            f"{FORMAT!r}); write it with pellucid.pruning.io.save."
        )
    return meta


def _json_field(meta: dict[str, Any], name: str) -> dict[str, Any]:
    """A JSON object stored as a string in the metadata (``spec``, ``sparse``, ``user``)."""
    text = meta.get(name)
    if not isinstance(text, str):
        raise _corrupt(f"its metadata has no {name!r} entry")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise _corrupt(f"its metadata {name!r} is not readable JSON") from err
    if not isinstance(value, dict):
        raise _corrupt(f"its metadata {name!r} is not a JSON object")
    return value


def _check_spec(name: str, wanted: Any, current: dict[str, Any]) -> dict[str, Any]:
    """One module's saved spec: the factory's keys, positive ints no larger than the
    factory's (a file can only shrink a module)."""
    if not isinstance(wanted, dict) or set(wanted) != set(current):
        raise _corrupt(f"its spec for {name!r} is {wanted!r:.80}; the model's is {current}")
    for k, v in wanted.items():
        if k == "type":
            continue
        if not is_int(v) or v < 1:
            raise _corrupt(f"its spec for {name!r} has {k}={v!r:.30}, not a positive integer")
        if k in ("in", "out") and v > current[k]:
            raise ValueError(
                f"The file's spec does not fit the model from `factory`: {name!r} is "
                f"{wanted} in the file but only {current} in the factory's model."
            )
    return wanted


def _resize(model: nn.Module, spec: dict[str, Any]) -> None:
    """Resize the factory's modules to the file's spec (validated first, then applied)."""
    modules = dict(model.named_modules())
    replacements: dict[str, nn.Module] = {}
    for name, wanted in spec.items():
        module = modules.get(name)
        kind = wanted.get("type") if isinstance(wanted, dict) else None
        if module is None or not isinstance(module, SHRINKABLE) or type(module).__name__ != kind:
            found = "nothing" if module is None else f"a {type(module).__name__}"
            raise ValueError(
                f"The file's spec does not fit the model from `factory`: it expects a "
                f"{kind!r:.40} at {name!r:.80}, the factory built {found} there."
                + did_you_mean(name, [n for n in modules if n])
            )
        current = module_spec(module)
        if _check_spec(name, wanted, current) != current:
            replacements[name] = empty_like_spec(module, wanted)
    for name, module in replacements.items():
        parent, _, attr = name.rpartition(".")
        setattr(modules[parent] if parent else model, attr, module)


def _state(raw: dict[str, torch.Tensor], sparse: dict[str, Any], model: nn.Module) -> dict:
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if "::" in key:
            base, _, part = key.rpartition("::")
            if base not in sparse or part not in ("bits", "values"):
                raise _corrupt(f"tensor {key!r:.80} belongs to no sparse entry")
        else:
            state[key] = value
    for key, info in sparse.items():
        state[key] = _decode(raw, key, info, expected.get(key))
    for key, value in state.items():
        want = expected.get(key)
        if want is not None and value.is_floating_point() != want.is_floating_point():
            raise _corrupt(
                f"tensor {key!r:.80} is stored as {value.dtype}, the model's is {want.dtype}"
            )
    return state


def from_bytes(data: bytes, factory: Callable[[], nn.Module]) -> nn.Module:
    """Rebuild a model from :func:`to_bytes` output through the original ``factory``.

    Raises:
        TypeError: ``factory`` is not a callable returning an ``nn.Module``.
        ValueError: the data is not a usable pruned-model file (truncated, crafted, written
            by something else: :class:`CorruptFileError`) or does not fit the factory's model.
    """
    if isinstance(factory, nn.Module) or not callable(factory):
        raise TypeError(
            f"`factory` must be a callable that builds the original (unpruned) model, such "
            f"as the model class or `lambda: Net(...)`; got {type(factory).__name__}."
        )
    meta = _header(data)
    spec, sparse = _json_field(meta, "spec"), _json_field(meta, "sparse")
    try:
        raw = st_load(data)
    except Exception as err:  # safetensors raises its own error type
        raise _corrupt(f"safetensors cannot read it ({err})") from err
    model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"`factory` must return an nn.Module; got {type(model).__name__}.")
    _resize(model, spec)
    state = _state(raw, sparse, model)
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
    return _json_field(_header(Path(path).read_bytes()), "user")
