"""Functional gradient clipping with torch's names and results.

The work is split as in ``torch.nn.utils``: computing norms (:func:`tensor_norms`,
:func:`total_norm`) is pure; clipping with a given norm (:func:`clip_grads_with_norm_`) is a
thin in-place step; :func:`clip_grad_norm_` does both and returns the same tensor as
``torch.nn.utils.clip_grad_norm_``, bit for bit. Norms use multi-tensor (``foreach``)
kernels grouped by device and dtype, and nothing branches on a device value, so there is no
host-device synchronisation unless ``error_if_nonfinite=True``.

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(4))
    >>> w.grad = torch.full((4,), 3.0)
    >>> clip_grad_norm_([w], max_norm=1.0)
    tensor(6.)
    >>> round(float(w.grad.norm()), 4)
    1.0
"""

from __future__ import annotations

import inspect
import math
import numbers
import types
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils._foreach_utils import (
    _device_has_foreach_support,
    _group_tensors_by_device_and_dtype,
    _has_foreach_support,
)

from pellucid._validation import check_float
from pellucid._warnings import PellucidWarning
from pellucid.clipping.reduce import all_reduce_norm

__all__ = [
    "GradNorms",
    "check_norm_type",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "global_norm",
    "tensor_norms",
    "total_norm",
]

Parameters = torch.Tensor | Iterable[torch.Tensor] | nn.Module


def as_tensor_list(parameters: Any, name: str = "parameters") -> list[torch.Tensor]:
    """Validate ``parameters`` (a tensor, an iterable of tensors or a module) into a list."""
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    if isinstance(parameters, nn.Module):
        return list(parameters.parameters())
    is_generator = isinstance(parameters, types.GeneratorType)
    if is_generator and inspect.getgeneratorstate(parameters) == inspect.GEN_CLOSED:
        raise ValueError(
            f"`{name}` must be an iterable of tensors; got a generator that is already "
            "exhausted, so nothing would be clipped. Call `model.parameters()` again, or "
            "pass a list."
        )
    if isinstance(parameters, str | bytes) or not isinstance(parameters, Iterable):
        raise TypeError(
            f"`{name}` must be a tensor, an iterable of tensors or an nn.Module; "
            f"got {type(parameters).__name__}."
        )
    items = list(parameters)
    for i, item in enumerate(items):
        if not isinstance(item, torch.Tensor):
            raise TypeError(
                f"`{name}` must hold tensors; item {i} is a {type(item).__name__}. "
                "Pass `model.parameters()` or a list of tensors."
            )
    if is_generator and not items:
        warnings.warn(
            f"`{name}` is an empty generator; no gradient clipping will occur.",
            PellucidWarning,
            stacklevel=3,
        )
    return items


def check_norm_type(norm_type: Any) -> float:
    """Return ``norm_type`` as a float: a positive number or ``inf`` (also the string).

    Raises:
        TypeError: `norm_type` is not a real number (or 'inf').
        ValueError: `norm_type` is not > 0, or is NaN.
    """
    if isinstance(norm_type, str) and norm_type.strip().lower() in ("inf", "infinity"):
        return math.inf
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real | torch.Tensor):
        raise TypeError(
            f"`norm_type` must be a positive number or inf; got {norm_type!r} "
            f"({type(norm_type).__name__})."
        )
    return check_float(
        "norm_type",
        norm_type,
        min_value=0.0,
        min_inclusive=False,
        allow_inf=True,
        hint=" Use 2.0 for the Euclidean norm or float('inf') for the max norm.",
    )


def _check_max_norm(max_norm: Any, name: str = "max_norm") -> float:
    return check_float(
        name,
        max_norm,
        min_value=0.0,
        min_inclusive=False,
        hint=" It is the largest gradient norm allowed after clipping.",
    )


def _use_foreach(foreach: bool | None, tensors: list[torch.Tensor], device: torch.device) -> bool:
    if foreach is None:
        return _has_foreach_support(tensors, device)
    if foreach and not _device_has_foreach_support(device):
        raise RuntimeError(
            f"foreach=True was passed, but can't use the foreach API on {device.type} tensors"
        )
    return bool(foreach)


class GradNorms:
    """Per-tensor and total norms of a list of tensors, each computed once and cached.

    The clipper, the non-finite guard and :class:`~pellucid.monitoring.GradientMonitor`
    share one instance per step, so each norm is computed only once. Totals are bitwise
    equal to ``torch.nn.utils.get_total_norm``.

    Example:
        >>> import torch
        >>> n = GradNorms([torch.tensor([3.0, 4.0]), torch.tensor([12.0])])
        >>> n.total(2.0)
        tensor(13.)
    """

    def __init__(self, tensors: list[torch.Tensor], *, foreach: bool | None = None) -> None:
        self.tensors = tensors
        self.foreach = foreach
        self._groups: dict[Any, Any] = (
            _group_tensors_by_device_and_dtype([tensors], with_indices=True)  # type: ignore[list-item]
            if tensors
            else {}
        )
        self._grouped: dict[float, list[torch.Tensor]] = {}
        self._ordered: dict[float, list[torch.Tensor]] = {}
        self._totals: dict[float, torch.Tensor] = {}

    def matches(self, tensors: list[torch.Tensor]) -> bool:
        """Whether this cache was built for exactly these tensor objects."""
        return len(tensors) == len(self.tensors) and all(
            a is b for a, b in zip(tensors, self.tensors, strict=True)
        )

    def _compute(self, norm_type: float) -> list[torch.Tensor]:
        grouped: list[torch.Tensor] = []
        for (device, _), ([group], _) in self._groups.items():
            if norm_type == math.inf and any(t.numel() == 0 for t in group):
                grouped.extend(
                    torch.linalg.vector_norm(t, norm_type) if t.numel() else t.new_zeros(())
                    for t in group
                )
            elif _use_foreach(self.foreach, group, device):
                grouped.extend(torch._foreach_norm(group, norm_type))
            else:
                grouped.extend(torch.linalg.vector_norm(t, norm_type) for t in group)
        self._grouped[norm_type] = grouped
        return grouped

    def norms(self, norm_type: float = 2.0) -> list[torch.Tensor]:
        """One 0-d norm per tensor, in input order (each in its tensor's dtype)."""
        if norm_type not in self._ordered:
            grouped = self._grouped.get(norm_type) or self._compute(norm_type)
            if len(self._groups) == 1:
                ordered = grouped
            else:
                slots: list[torch.Tensor | None] = [None] * len(self.tensors)
                position = 0
                for _lists, indices in self._groups.values():
                    for i in indices:
                        slots[i] = grouped[position]
                        position += 1
                ordered = slots  # type: ignore[assignment]
            self._ordered[norm_type] = ordered
        return self._ordered[norm_type]

    @torch.no_grad()
    def scale_(self, coef: torch.Tensor) -> None:
        """Multiply every tensor by ``coef`` in place (one multi-tensor kernel per group)."""
        for (device, _), ([group], _) in self._groups.items():
            if _use_foreach(self.foreach, group, device):
                torch._foreach_mul_(group, coef.to(device))
            else:
                c = coef.to(device)
                for t in group:
                    t.mul_(c)

    def total(self, norm_type: float = 2.0) -> torch.Tensor:
        """The norm of all tensors viewed as one vector (torch's exact computation)."""
        if norm_type in self._totals:
            return self._totals[norm_type]
        if not self.tensors:
            total = torch.tensor(0.0)
        else:
            grouped = self._grouped.get(norm_type) or self._compute(norm_type)
            first = self.tensors[0].device
            total = torch.linalg.vector_norm(torch.stack([n.to(first) for n in grouped]), norm_type)
        self._totals[norm_type] = total
        return total


def _grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


@torch.no_grad()
def tensor_norms(
    tensors: Iterable[torch.Tensor] | torch.Tensor, *, norm_type: float = 2.0
) -> list[torch.Tensor]:
    """The norm of each tensor (a pure function; pass gradients, not parameters).

    Raises:
        TypeError: `tensors` is not a tensor or an iterable of tensors, or `norm_type` is not a
            number.
        ValueError: `norm_type` is not > 0.

    Example:
        >>> import torch
        >>> [float(n) for n in tensor_norms([torch.ones(4), torch.ones(9)])]
        [2.0, 3.0]
    """
    items = as_tensor_list(tensors, "tensors")
    return GradNorms(items).norms(check_norm_type(norm_type))


@torch.no_grad()
def total_norm(
    tensors: Iterable[torch.Tensor] | torch.Tensor,
    *,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> torch.Tensor:
    """The norm of all ``tensors`` viewed as one vector; same as ``torch.nn.utils.get_total_norm``.

    Raises:
        TypeError: `tensors` is not a tensor or an iterable of tensors, or `norm_type` is not a
            number.
        ValueError: `norm_type` is not > 0.
        RuntimeError: `error_if_nonfinite=True` and the norm is NaN/inf; or `foreach=True` on a
            device without foreach kernels.

    Example:
        >>> import torch
        >>> total_norm([torch.tensor([3.0]), torch.tensor([4.0])])
        tensor(5.)
    """
    items = as_tensor_list(tensors, "tensors")
    result = GradNorms(items, foreach=foreach).total(check_norm_type(norm_type))
    if error_if_nonfinite:
        _raise_if_nonfinite(result, norm_type)
    return result


@torch.no_grad()
def global_norm(
    parameters: Parameters, *, norm_type: float = 2.0, process_group: Any = True
) -> torch.Tensor:
    """The total gradient norm of this rank's ``parameters`` combined over the group.

    A collective: every rank of ``process_group`` (``True``: the default group) calls it.

    Raises:
        RuntimeError: torch.distributed is not initialized.
    """
    params = as_tensor_list(parameters)
    norm_type = check_norm_type(norm_type)
    local = GradNorms(_grads(params)).total(norm_type)
    return all_reduce_norm(local, norm_type=norm_type, process_group=process_group)


def _raise_if_nonfinite(total: torch.Tensor, norm_type: float) -> None:
    if bool(torch.logical_or(total.isnan(), total.isinf())):
        raise RuntimeError(
            f"The total norm of order {float(norm_type)} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale the "
            "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`, or use "
            "pellucid.clipping's `nonfinite=` policy (raise / skip / zero)."
        )


def _scale_(grads: list[torch.Tensor], coef: torch.Tensor, foreach: bool | None) -> None:
    groups = _group_tensors_by_device_and_dtype([grads])  # type: ignore[list-item]
    for (device, _), ([group], _) in groups.items():
        if _use_foreach(foreach, group, device):  # type: ignore[arg-type]
            torch._foreach_mul_(group, coef.to(device))  # type: ignore[arg-type]
        else:
            c = coef.to(device)
            for g in group:
                g.mul_(c)  # type: ignore[union-attr]


@torch.no_grad()
def clip_grads_with_norm_(
    parameters: Parameters,
    max_norm: float,
    total_norm: torch.Tensor,
    *,
    foreach: bool | None = None,
) -> torch.Tensor:
    """Scale gradients by ``min(max_norm / (total_norm + 1e-6), 1)``, in place.

    Same as ``torch.nn.utils.clip_grads_with_norm_``; returns the coefficient used (a
    device tensor, no synchronisation).

    Raises:
        TypeError: `parameters` is not a tensor, an iterable of tensors or an nn.Module, or a number
            argument is not a real number.
        ValueError: `parameters` is an exhausted generator, or a number is out of range (`max_norm`
            <= 0, `norm_type` <= 0, NaN).
        RuntimeError: `foreach=True` on a device without foreach kernels.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(2)); w.grad = torch.tensor([3.0, 4.0])
        >>> round(float(clip_grads_with_norm_([w], 1.0, torch.tensor(5.0))), 4)
        0.2
    """
    params = as_tensor_list(parameters)
    max_norm = _check_max_norm(max_norm)
    coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    grads = _grads(params)
    if grads:
        _scale_(grads, coef, foreach)
    return coef


@torch.no_grad()
def clip_grad_norm_(
    parameters: Parameters,
    max_norm: float,
    *,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    process_group: Any = None,
) -> torch.Tensor:
    """Clip the gradients' total norm to ``max_norm`` in place; return the norm before.

    Identical to ``torch.nn.utils.clip_grad_norm_`` (same total norm, same scaled
    gradients) for any ``norm_type``, ``None`` gradients, mixed dtypes and empty inputs.
    With ``process_group``, the parameters are taken as this rank's shard and the total
    norm is the global one over the group (sharded / tensor-parallel training).

    Args:
        parameters: a tensor, an iterable of tensors, or an ``nn.Module``.
        max_norm: largest total norm allowed (> 0, finite).
        norm_type: the p of the p-norm (> 0), or ``inf``.
        error_if_nonfinite: raise if the total norm is NaN/inf (one host sync).
        foreach: use multi-tensor kernels (None: where the device supports them).
        process_group: a ``torch.distributed`` group over which the norm is reduced.

    Returns:
        The total norm before clipping (0-d tensor on the first gradient's device).

    Raises:
        TypeError: `parameters` is not a tensor, an iterable of tensors or an nn.Module, or a number
            argument is not a real number.
        ValueError: `parameters` is an exhausted generator, or a number is out of range (`max_norm`
            <= 0, `norm_type` <= 0, NaN).
        RuntimeError: `error_if_nonfinite=True` and the total norm is NaN/inf; `process_group` given
            without torch.distributed initialized; `foreach=True` on a device without foreach
            kernels.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(2)); w.grad = torch.tensor([3.0, 4.0])
        >>> clip_grad_norm_([w], 10.0)
        tensor(5.)
    """
    params = as_tensor_list(parameters)
    max_norm = _check_max_norm(max_norm)
    norm_type = check_norm_type(norm_type)
    grads = _grads(params)
    norms = GradNorms(grads, foreach=foreach)
    total = norms.total(norm_type)
    if process_group is not None:
        total = all_reduce_norm(total, norm_type=norm_type, process_group=process_group)
    if error_if_nonfinite:
        _raise_if_nonfinite(total, norm_type)
    if grads:
        norms.scale_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


@torch.no_grad()
def clip_grad_value_(
    parameters: Parameters, clip_value: float, *, foreach: bool | None = None
) -> None:
    """Clamp every gradient entry to ``[-clip_value, clip_value]`` in place (as torch does).

    Raises:
        TypeError: `parameters` is not a tensor, an iterable of tensors or an nn.Module, or
            `clip_value` is not a number.
        ValueError: `clip_value` is negative or NaN, or `parameters` is an exhausted generator.
        RuntimeError: `foreach=True` on a device without foreach kernels.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(3)); w.grad = torch.tensor([-5.0, 0.5, 5.0])
        >>> clip_grad_value_([w], 1.0); w.grad
        tensor([-1.0000,  0.5000,  1.0000])
    """
    params = as_tensor_list(parameters)
    clip_value = check_float(
        "clip_value",
        clip_value,
        min_value=0.0,
        allow_inf=True,
        hint=" Gradients are clamped to [-clip_value, clip_value].",
    )
    grads = _grads(params)
    groups = _group_tensors_by_device_and_dtype([grads])  # type: ignore[list-item]
    for (device, _), ([group], _) in groups.items():
        if _use_foreach(foreach, group, device):  # type: ignore[arg-type]
            torch._foreach_clamp_min_(group, -clip_value)  # type: ignore[arg-type]
            torch._foreach_clamp_max_(group, clip_value)  # type: ignore[arg-type]
        else:
            for g in group:
                g.clamp_(min=-clip_value, max=clip_value)  # type: ignore[union-attr]
