"""torch.distributed helpers: gradient norms that are global across ranks.

When a model's parameters are sharded across ranks (tensor/pipeline parallel, FSDP-style
flat shards), each rank holds part of the gradient vector, and a clip coefficient computed
from the local norm alone differs between ranks. :func:`all_reduce_norm` turns a rank's
local total norm into the global one (``sum |g|^p`` over ranks, or the max for ``inf``);
:func:`pellucid.clipping.clip_grad_norm_` and :func:`~pellucid.clipping.clip_by_global_norm`
take ``process_group=`` and call it. With plain DDP the gradients are already identical on
every rank after ``backward``: clip without a group.

Example:
    >>> import torch
    >>> is_initialized()  # outside torchrun
    False
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_reduce_norm", "global_norm", "is_initialized"]


def is_initialized() -> bool:
    """Whether a default process group exists."""
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


@torch.no_grad()
def global_norm(
    parameters: Iterable[torch.Tensor] | torch.Tensor,
    *,
    norm_type: float = 2.0,
    process_group: Any = True,
) -> torch.Tensor:
    """The total gradient norm of this rank's ``parameters`` combined over the group."""
    from pellucid.clipping.functional import GradNorms, as_tensor_list, check_norm_type

    params = as_tensor_list(parameters)
    norm_type = check_norm_type(norm_type)
    local = GradNorms([p.grad for p in params if p.grad is not None]).total(norm_type)
    return all_reduce_norm(local, norm_type=norm_type, process_group=process_group)
