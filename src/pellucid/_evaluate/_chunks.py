"""Chunked evaluation: rows -> model -> scores, ``batch_size`` rows at a time.

Perturbation methods describe their work as ``total`` virtual rows (examples x
perturbations) and a ``make_rows(start, stop)`` function that builds only one chunk, so
memory stays bounded by ``batch_size`` however many coalitions are asked for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from pellucid._validation import check_int

if TYPE_CHECKING:
    from pellucid._evaluate._call import Evaluates
    from pellucid._targets import ResolvedTarget

__all__ = [
    "CPU_CHUNK_ELEMENTS",
    "CPU_SPATIAL_CHUNK_ELEMENTS",
    "DEFAULT_ELEMENT_BUDGET",
    "block_scores",
    "chunk_rows",
    "chunks",
    "map_chunks",
    "resolve_batch_size",
]

#: Elements per chunk when the user gives no ``batch_size`` (16M float32 values = 64 MB).
DEFAULT_ELEMENT_BUDGET = 1 << 24


def resolve_batch_size(batch_size: int | None, row_numel: int, *, total: int) -> int:
    """Validate ``batch_size`` or pick one that keeps a chunk near 64 MB of inputs."""
    if batch_size is not None:
        return check_int("batch_size", batch_size, min_value=1)
    return max(1, min(total, DEFAULT_ELEMENT_BUDGET // max(1, row_numel)))


#: On CPU, chunks of about this many input values keep the model's activations in cache:
#: one huge call spills them, many tiny calls pay per-call overhead, and a middle size beats
#: both (``benchmarks/bench_perturbation_attribution.py`` measures the whole method against
#: its peer). Examples with a spatial shape (images) feed convolutions whose activations are
#: many times their inputs: for them the smaller budget.
CPU_CHUNK_ELEMENTS, CPU_SPATIAL_CHUNK_ELEMENTS = 1 << 17, 1 << 15


def chunk_rows(
    batch_size: int | None, row_numel: int | tuple[int, ...], *, total: int, device: Any
) -> int:
    """Rows per forward pass: ``batch_size`` if given, else a cache-friendly size on CPU
    (64 to 4,096 rows, split into equal chunks) and
    :func:`resolve_batch_size`'s elsewhere. ``row_numel`` is the size
    of one example, or its shape (a spatial shape selects the smaller CPU budget)."""
    shape = (row_numel,) if isinstance(row_numel, int) else tuple(row_numel)
    numel = math.prod(shape)
    size = resolve_batch_size(batch_size, numel, total=total)
    if batch_size is not None or torch.device(device).type != "cpu":
        return size
    budget = CPU_CHUNK_ELEMENTS if len(shape) <= 1 else CPU_SPATIAL_CHUNK_ELEMENTS
    size = min(size, max(64, min(4096, budget // max(1, numel))))
    return -(-total // -(-total // size)) if total > size else size  # equal chunks


def chunks(total: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """Yield ``(start, stop)`` pairs that cover ``range(total)`` in ``batch_size`` steps."""
    for start in range(0, total, batch_size):
        yield start, min(total, start + batch_size)


def map_chunks(
    fn: Callable[[int, int], torch.Tensor],
    total: int,
    batch_size: int,
    *,
    grad: bool = False,
) -> torch.Tensor:
    """Concatenate ``fn(start, stop)`` over all chunks (under inference mode unless ``grad``).

    Example:
        >>> import torch
        >>> map_chunks(lambda a, b: torch.arange(a, b) * 2, 5, 2)
        tensor([0, 2, 4, 6, 8])
    """
    if total == 0:
        raise ValueError("There is nothing to evaluate: `total` rows must be >= 1; got 0.")
    outputs = []
    for start, stop in chunks(total, batch_size):
        if grad:
            outputs.append(fn(start, stop))
        else:
            with torch.inference_mode():
                outputs.append(fn(start, stop))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)


def block_scores(
    forward: Evaluates,
    target: ResolvedTarget,
    block: Callable[[int, int, int, int], torch.Tensor],
    n: int,
    s: int,
    rows: int,
    *,
    device: Any = None,
    balance: bool = True,
) -> torch.Tensor:
    """Scores (n * s,) of ``n`` examples x ``s`` perturbations, in blocks of about ``rows``.

    ``block(e0, e1, j0, j1)`` builds the model rows ``((e1 - e0) * (j1 - j0), ...)`` of
    examples ``e0:e1`` and perturbations ``j0:j1``, example-major: whole examples per block
    when ``s <= rows``, else one example at a time. With ``balance``, ``rows`` is a cache
    size rather than a memory bound, and the blocks are made equal. Runs in inference mode.

    Example:
        >>> import torch
        >>> from pellucid._evaluate import Forward
        >>> from pellucid._targets import resolve_target
        >>> x = torch.ones(2, 3)
        >>> fwd = Forward(lambda t: t.sum(1, keepdim=True), n_examples=2)
        >>> shift = torch.arange(4.0).unsqueeze(1)  # 4 perturbations: add 0, 1, 2, 3
        >>> def block(e0, e1, j0, j1):
        ...     return (x[e0:e1].unsqueeze(1) + shift[j0:j1].unsqueeze(0)).view(-1, 3)
        >>> block_scores(fwd, resolve_target(None, fwd(x)), block, 2, 4, rows=3)
        tensor([ 3.,  6.,  9., 12.,  3.,  6.,  9., 12.])
    """
    # Rows need their example's index only for a per-example target or batch-aligned
    # model arguments; otherwise none is built.
    forward.expect(n * s)
    needs_index = target.per_example or forward.aligned
    ex_all = torch.arange(n, device=device).repeat_interleave(s) if needs_index else None
    per = max(1, rows // s)  # whole examples per block, else perturbations per block
    if balance and per < n:
        per = -(-n // -(-n * s // rows))
    step = min(rows, s)
    outputs = []
    with torch.inference_mode():
        for e0 in range(0, n, per):
            e1 = min(n, e0 + per)
            for j0 in range(0, s, step):
                j1 = min(s, j0 + step)
                lo = e0 * s + j0
                ex = ex_all[lo : lo + (e1 - e0) * (j1 - j0)] if ex_all is not None else None
                outputs.append(target.scores(forward(block(e0, e1, j0, j1), ex), ex))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
