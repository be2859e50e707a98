"""torch.distributed helpers: gradient norms that are global across ranks.

When a model's parameters are sharded across ranks (tensor/pipeline parallel, FSDP-style
flat shards), each rank holds part of the gradient vector, and a clip coefficient computed
from the local norm alone differs between ranks. :func:`all_reduce_norm` turns a rank's
local total norm into the global one (``sum |g|^p`` over ranks, or the max for ``inf``);
:func:`pellucid.clipping.clip_grad_norm_` and :func:`~pellucid.clipping.clip_by_global_norm`
take ``process_group=`` and call it. With plain DDP the gradients are already identical on
every rank after ``backward``: clip without a group.

Clipping owns the norms and their reduce (:mod:`pellucid.clipping.reduce`); this module is
the distributed entry point that names them, so the arrow points one way only.

Example:
    >>> import torch
    >>> is_initialized()  # outside torchrun
    False
"""

from __future__ import annotations

from pellucid.clipping import all_reduce_norm, global_norm
from pellucid.clipping.reduce import is_initialized

__all__ = ["all_reduce_norm", "global_norm", "is_initialized"]
