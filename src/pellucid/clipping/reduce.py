"""The cross-rank reduce behind global-norm clipping of sharded gradients.

When a model's parameters are sharded across ranks (tensor/pipeline parallel, FSDP-style
flat shards), each rank holds part of the gradient vector, and a clip coefficient computed
from the local norm alone differs between ranks. :func:`all_reduce_norm` turns a rank's
local total norm into the global one (``sum |g|^p`` over ranks, or the max for ``inf``);
:func:`~pellucid.clipping.clip_grad_norm_` and :func:`~pellucid.clipping.clip_by_global_norm`
call it when given ``process_group=``. It lives in clipping, which owns the norms, so that
nothing here imports :mod:`pellucid.distributed` (that module re-exports these names).

Example:
    >>> is_initialized()  # outside torchrun
    False
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_reduce_norm", "is_initialized"]


def is_initialized() -> bool:
    """Whether a default process group exists.

    Example:
        >>> isinstance(is_initialized(), bool)
        True
    """
    return dist.is_available() and dist.is_initialized()


def _group(process_group: Any) -> Any:
    if not is_initialized():
        raise RuntimeError(
            "`process_group` was given but torch.distributed is not initialized; call "
            "torch.distributed.init_process_group(...) first (torchrun does it for you)."
        )
    return None if process_group is True else process_group


@torch.no_grad()
def all_reduce_norm(
    local_norm: torch.Tensor, *, norm_type: float = 2.0, process_group: Any = None
) -> torch.Tensor:
    """The global p-norm from each rank's local p-norm (a collective: every rank calls it).

    ``process_group=True`` means the default (world) group.

    Args:
        local_norm: this rank's total gradient norm (0-d tensor).
        norm_type: the order p of the norm; ``inf`` takes the maximum over ranks.
        process_group: a process group, or ``True`` for the default group.

    Returns:
        The norm over all ranks, in ``local_norm``'s dtype.

    Raises:
        RuntimeError: torch.distributed is not initialized.
    """
    group = _group(process_group)
    norm_type = float(norm_type)
    value = local_norm.detach().to(torch.float64).reshape(())
    if norm_type == math.inf:
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
        return value.to(local_norm.dtype)
    value = value.pow(norm_type)
    dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
    return value.pow(1.0 / norm_type).to(local_norm.dtype)
