"""THE chunked evaluation engine: rows -> model -> scores, ``batch_size`` rows at a time.

Perturbation methods describe their work as ``total`` virtual rows (examples x
perturbations) and a ``make_rows(start, stop)`` function that builds only one chunk, so
memory stays bounded by ``batch_size`` however many coalitions are asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from pellucid._validation import check_int

__all__ = ["DEFAULT_ELEMENT_BUDGET", "chunks", "map_chunks", "resolve_batch_size"]

#: Elements per chunk when the user gives no ``batch_size`` (16M float32 values = 64 MB).
DEFAULT_ELEMENT_BUDGET = 1 << 24


def resolve_batch_size(batch_size: int | None, row_numel: int, *, total: int) -> int:
    """Validate ``batch_size`` or pick one that keeps a chunk near 64 MB of inputs."""
    if batch_size is not None:
        return check_int("batch_size", batch_size, min_value=1)
    return max(1, min(total, DEFAULT_ELEMENT_BUDGET // max(1, row_numel)))


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
