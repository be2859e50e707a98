"""Validation helpers used once at every public boundary.

Messages follow one template: ``"`name` must be ...; got ...."`` plus a hint when the fix
is obvious. TypeError for wrong types, ValueError for wrong values and shapes.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "check_choice",
    "check_finite_tensor",
    "check_float",
    "check_generator",
    "check_int",
    "check_layer",
    "check_model",
    "check_tensor",
    "describe_value",
    "did_you_mean",
]


def did_you_mean(value: str, options: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest option, or an empty string."""
    close = difflib.get_close_matches(str(value), list(options), n=3, cutoff=0.5)
    if not close:
        return ""
    if len(close) == 1:
        return f" Did you mean {close[0]!r}?"
    return " Did you mean one of " + ", ".join(repr(c) for c in close) + "?"


def describe_value(value: Any) -> str:
    """How an error message names a bad value: shape and dtype for tensors, else a short repr.

    The ``got ...`` half of every ``"`name` must be ...; got ...."`` message in pellucid.

    Example:
        >>> describe_value(3)
        '3 (int)'
        >>> describe_value(torch.zeros(2, 3))
        'a tensor of shape (2, 3) and dtype torch.float32'
    """
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})" if not isinstance(value, str) else text


def check_int(
    name: str,
    value: Any,
    *,
    min_value: int | None = None,
    max_value: int | None = None,
    hint: str = "",
) -> int:
    """Return ``value`` as an int, refusing bools, floats and out-of-range values.

    Raises:
        TypeError: `value` is not an integer (a bool is not one).
        ValueError: `value` is outside [`min_value`, `max_value`].
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer; got {describe_value(value)}.{hint}")
    value = int(value)
    if min_value is not None and value < min_value:
        raise ValueError(f"`{name}` must be an integer >= {min_value}; got {value}.{hint}")
    if max_value is not None and value > max_value:
        raise ValueError(f"`{name}` must be an integer <= {max_value}; got {value}.{hint}")
    return value


def check_float(
    name: str,
    value: Any,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    allow_inf: bool = False,
    hint: str = "",
) -> float:
    """Return ``value`` as a float; NaN is always refused, inf unless ``allow_inf``.

    Raises:
        TypeError: `value` is not a real number (a bool is not one).
        ValueError: `value` is NaN, infinite (unless allowed) or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
            value = float(value.item())
        else:
            raise TypeError(f"`{name}` must be a real number; got {describe_value(value)}.{hint}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"`{name}` must be a number, not NaN; got nan.{hint}")
    if math.isinf(value) and not allow_inf:
        raise ValueError(f"`{name}` must be finite; got {value}.{hint}")
    if min_value is not None:
        bad = value < min_value if min_inclusive else value <= min_value
        if bad:
            op = ">=" if min_inclusive else ">"
            raise ValueError(f"`{name}` must be {op} {min_value}; got {value}.{hint}")
    if max_value is not None:
        bad = value > max_value if max_inclusive else value >= max_value
        if bad:
            op = "<=" if max_inclusive else "<"
            raise ValueError(f"`{name}` must be {op} {max_value}; got {value}.{hint}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``; suggest the closest otherwise.

    Raises:
        TypeError: `value` is not a string.
        ValueError: `value` is not one of `choices` (the message suggests the closest).
    """
    if not isinstance(value, str):
        raise TypeError(
            f"`{name}` must be one of {', '.join(map(repr, choices))}; got {describe_value(value)}."
        )
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {', '.join(map(repr, choices))}; got {value!r}."
            + did_you_mean(value, choices)
        )
    return value


def check_tensor(
    name: str,
    value: Any,
    *,
    ndim: int | None = None,
    min_ndim: int | None = None,
    floating: bool = False,
    finite: bool = False,
    nonempty: bool = True,
) -> torch.Tensor:
    """Check that ``value`` is a tensor with the given rank/dtype properties.

    Raises:
        TypeError: `value` is not a tensor, or not floating point where required.
        ValueError: `value` has the wrong number of dimensions, is empty, or (``finite=True``)
            holds NaN or inf.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor; got {describe_value(value)}.")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimensions; got shape {tuple(value.shape)}.")
    if min_ndim is not None and value.ndim < min_ndim:
        raise ValueError(
            f"`{name}` must have at least {min_ndim} dimensions (batch first); "
            f"got shape {tuple(value.shape)}."
        )
    if nonempty and value.numel() == 0:
        raise ValueError(f"`{name}` must not be empty; got shape {tuple(value.shape)}.")
    if floating and not value.is_floating_point():
        raise TypeError(
            f"`{name}` must be a floating-point tensor; got dtype {value.dtype}. "
            "Convert with `.float()`, or explain token ids through `layer=` (the embedding), "
            "or with occlusion, feature_ablation, lime or kernel_shap and `mask_token=`."
        )
    if finite:
        check_finite_tensor(name, value)
    return value


def check_finite_tensor(name: str, value: torch.Tensor) -> torch.Tensor:
    """Raise ValueError naming the first non-finite entry of ``value``.

    Raises:
        ValueError: `value` holds NaN or inf (the message names the first index).
    """
    if value.is_floating_point() or value.is_complex():
        # One sum decides the usual case: it is finite only when every entry is (a finite
        # sum can't hide a NaN or inf); a non-finite sum may be an overflow, so the
        # element-wise test (several times slower on the CPU) then decides.
        if math.isfinite(abs(complex(value.detach().sum()))):
            return value
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            first = tuple(int(i) for i in torch.nonzero(bad)[0])
            count = int(bad.sum())
            raise ValueError(
                f"`{name}` must be finite; got {count} NaN/inf value(s), the first at index "
                f"{first} ({value[first].item()})."
            )
    return value


def check_generator(name: str, value: Any) -> torch.Generator | None:
    """``None`` or a ``torch.Generator`` (the random source of a stochastic method).

    Raises:
        TypeError: `value` is neither None nor a torch.Generator.
    """
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(
            f"`{name}` must be a torch.Generator or None; got {describe_value(value)}. "
            "Use e.g. torch.Generator().manual_seed(0)."
        )
    return value


def check_model(name: str, value: Any) -> Any:
    """A model is any callable; nn.Module is the usual case.

    Raises:
        TypeError: `value` is not callable.
    """
    if not callable(value):
        raise TypeError(
            f"`{name}` must be a callable model (usually an nn.Module); got {describe_value(value)}."
        )
    return value


def check_layer(model: Any, layer: Any, *, name: str = "layer") -> nn.Module:
    """Resolve ``layer`` (a module of ``model`` or its dotted name) to a submodule.

    Raises:
        TypeError: `model` is not an nn.Module, or `layer` is neither a module nor a name.
        ValueError: `layer` is not a submodule (or dotted name) of `model`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`{name}=` needs an nn.Module model; got {describe_value(model)}.")
    modules = dict(model.named_modules())
    if isinstance(layer, str):
        if layer not in modules:
            names = [n for n in modules if n]
            raise ValueError(
                f"`{name}` must name a submodule of the model; got {layer!r}."
                + did_you_mean(layer, names)
                + (" Available: " + ", ".join(names[:12]) + ("..." if len(names) > 12 else ""))
            )
        return modules[layer]
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in modules.values()):
            raise ValueError(
                f"`{name}` must be a submodule of the model; got a {type(layer).__name__} that "
                "is not part of it. Pass the layer object from this model, or its name."
            )
        return layer
    raise TypeError(f"`{name}` must be an nn.Module or a dotted name; got {describe_value(layer)}.")
