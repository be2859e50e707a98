"""The gradient engine: d target score / d rows, ``batch_size`` rows at a time.

``input_gradients`` differentiates given rows; ``path_gradients`` builds each chunk of
virtual rows lazily (integrated gradients' path points, expected gradients' samples), so
memory stays bounded by ``batch_size`` however many steps or samples are asked for;
``prepared_gradients`` reuses the graph of ``prepare``'s first forward when one backward
over all rows fits. ``target_scores`` evaluates rows without a graph. Every engine tells
the forward how many rows are coming (its layout policy measures only for large work).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from pellucid._evaluate._call import Evaluates
from pellucid._evaluate._chunks import chunks, map_chunks, resolve_batch_size
from pellucid._targets import ResolvedTarget

__all__ = [
    "GRAD_BUDGET_FACTOR",
    "first_forward_rows",
    "grad_batch_size",
    "graph_gradient",
    "score_gradient",
    "scored_gradient",
    "input_gradients",
    "path_gradients",
    "prepared_gradients",
    "target_scores",
]

#: Without ``batch_size``, a backward chunk holds 1/16 of the forward-only element budget:
#: the activations kept for the backward pass are many times the inputs.
GRAD_BUDGET_FACTOR = 16


#: On a GPU, without ``batch_size``, a backward chunk plans for this many times its input
#: bytes per row (torchvision's resnet18 keeps about 70 times its 224 px input for the
#: backward; a BERT-sized encoder at 128 tokens about 140 times its embeddings) ...
DEVICE_GRAD_FACTOR = 256
#: ... within this share of the memory the device has available (free, plus what torch's
#: allocator holds unused). A GPU runs small chunks at nearly the cost of large ones, so the
#: default there is as large as memory allows, not the CPU's cache-sized chunk.
DEVICE_MEMORY_SHARE = 0.5

#: The autograd engine's entry behind ``torch.autograd.grad``, without the Python layer in
#: front of it (argument normalisation, ``__torch_function__`` dispatch, batched
#: ``grad_outputs``): about 20 us of every gradient method's call on a small model. Tensor
#: subclasses, functorch transforms and a torch without it take ``torch.autograd.grad``.
_RUN_BACKWARD: Callable[..., tuple[torch.Tensor, ...]] | None = getattr(
    torch.autograd.graph, "_engine_run_backward", None
)
_TRANSFORMS_ACTIVE: Callable[[], bool] = getattr(
    torch._C, "_are_functorch_transforms_active", lambda: True
)


def score_gradient(score: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """``torch.autograd.grad(score, leaf)[0]`` for a scalar ``score`` (the graph is freed;
    ``leaf`` must be reached)."""
    if (
        _RUN_BACKWARD is None
        or type(score) is not torch.Tensor
        or type(leaf) is not torch.Tensor
        or _TRANSFORMS_ACTIVE()
    ):
        return torch.autograd.grad(score, leaf)[0]
    seed = torch.ones_like(score, memory_format=torch.preserve_format)
    return _RUN_BACKWARD((score,), (seed,), False, False, (leaf,), False, accumulate_grad=False)[0]


def grad_batch_size(
    batch_size: int | None, row_numel: int, *, total: int, like: torch.Tensor | None = None
) -> int:
    """Rows per forward+backward chunk: ``batch_size``, or a default bounded in memory
    (``like``, a tensor of the rows: on a GPU the default follows its available memory)."""
    if batch_size is not None:
        return resolve_batch_size(batch_size, row_numel, total=total)
    size = resolve_batch_size(None, row_numel * GRAD_BUDGET_FACTOR, total=total)
    if like is None or like.device.type != "cuda":
        return size
    row_bytes = max(1, row_numel * like.element_size() * DEVICE_GRAD_FACTOR)
    fits = int(DEVICE_MEMORY_SHARE * device_memory_available(like.device) // row_bytes)
    return max(size, min(total, fits))


def device_memory_available(device: torch.device) -> int:
    """Bytes a CUDA device can still give: free memory plus torch's cached, unused blocks."""
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(0, cached))


def _gradient(
    forward: Evaluates,
    target: ResolvedTarget,
    chunk: torch.Tensor,
    index: torch.Tensor | None,
) -> torch.Tensor:
    chunk = chunk.detach().requires_grad_(True)
    with torch.enable_grad():
        return graph_gradient(forward(chunk, index), chunk, index, target)


def graph_gradient(
    output: torch.Tensor,
    leaf: torch.Tensor,
    index: torch.Tensor | None,
    target: ResolvedTarget,
) -> torch.Tensor:
    """d target score / d ``leaf`` through the graph of ``output`` (the rows of ``leaf``,
    standing for the examples ``index``); the graph is freed.

    Raises:
        ValueError: the score does not depend on ``leaf``.
    """
    return scored_gradient(output, leaf, index, target)[0]


def scored_gradient(
    output: torch.Tensor,
    leaf: torch.Tensor,
    index: torch.Tensor | None,
    target: ResolvedTarget,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`graph_gradient` and the target scores it differentiated (detached).

    Raises:
        ValueError: the score does not depend on ``leaf``.
    """
    with torch.enable_grad():
        scores = target.scores(output, index)
        if not scores.requires_grad:
            raise ValueError(
                "The target score does not depend on the explained inputs (no gradient path); "
                "check `target`, `output` and `layer`."
            )
        grad = score_gradient(scores.sum(), leaf)
    return grad, scores.detach()


def input_gradients(
    forward: Evaluates,
    target: ResolvedTarget,
    rows: torch.Tensor,
    *,
    example_index: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """d score / d rows for every row (rows may repeat examples, see ``example_index``)."""
    size = grad_batch_size(batch_size, rows[0].numel(), total=rows.shape[0], like=rows)
    forward.expect(rows.shape[0])
    grads = []
    for start, stop in chunks(rows.shape[0], size):
        index = example_index[start:stop] if example_index is not None else None
        if index is None and stop - start != forward.n_examples:
            index = torch.arange(start, stop, device=rows.device)
        grads.append(_gradient(forward, target, rows[start:stop], index))
    return grads[0] if len(grads) == 1 else torch.cat(grads)


def path_gradients(
    forward: Evaluates,
    target: ResolvedTarget,
    like: torch.Tensor,
    *,
    per_example: int,
    make_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    combine: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int | None = None,
) -> torch.Tensor:
    """Sum ``combine(grad, example, step)`` over ``per_example`` rows of every example.

    Row ``r`` of the virtual ``len(like) * per_example`` rows belongs to example
    ``r // per_example`` and step ``r % per_example``; ``make_rows(example, step)`` builds only
    the rows of one chunk, so at most ``batch_size`` rows exist at a time.

    Returns:
        A tensor shaped like ``like``: the per-example sums.
    """
    n = like.shape[0]
    total = n * per_example
    size = grad_batch_size(batch_size, like[0].numel(), total=total, like=like)
    forward.expect(total)
    result = torch.zeros_like(like)
    for start, stop in chunks(total, size):
        rows_index = torch.arange(start, stop, device=like.device)
        example, step = rows_index // per_example, rows_index % per_example
        rows = make_rows(example, step)
        grad = _gradient(forward, target, rows, example)
        contribution = combine(grad, example, step)
        if stop - start == total:  # one chunk: a reshape-sum is cheaper than index_add
            result += contribution.reshape(n, per_example, *like.shape[1:]).sum(dim=1)
        else:
            result.index_add_(0, example, contribution)
    return result


def first_forward_rows(inputs: Any, batch_size: int | None) -> int | None:
    """Rows per chunk of a first forward that keeps its graph (one backward's worth:
    ``batch_size``, else the default bounded in memory), or None when ``inputs`` is not a
    non-empty tensor (``prepare`` then reports it)."""
    if not isinstance(inputs, torch.Tensor) or inputs.ndim == 0 or inputs.shape[0] == 0:
        return None
    n = inputs.shape[0]
    return grad_batch_size(batch_size, math.prod(inputs.shape[1:]), total=n, like=inputs)


def prepared_gradients(prep: Any, batch_size: int | None) -> torch.Tensor:
    """d score / d inputs: from the graph ``prepare(track_grad=True)`` kept, or from the
    gradients its first forward took chunk by chunk, else chunked now."""
    if prep.chunk_results is not None:
        return torch.cat(prep.chunk_results)
    if prep.graph_output is None or prep.leaf is None:
        return input_gradients(prep.forward, prep.target, prep.inputs, batch_size=batch_size)
    return graph_gradient(prep.graph_output, prep.leaf, None, prep.target)


def target_scores(
    forward: Evaluates,
    target: ResolvedTarget,
    rows: torch.Tensor,
    example_index: torch.Tensor,
    *,
    batch_size: int | None = None,
) -> torch.Tensor:
    """The target score of every row (no gradient), ``batch_size`` rows at a time."""
    size = resolve_batch_size(batch_size, rows[0].numel(), total=rows.shape[0])
    forward.expect(rows.shape[0])

    def run(start: int, stop: int) -> torch.Tensor:
        index = example_index[start:stop]
        return target.scores(forward(rows[start:stop], index), index)

    with torch.no_grad():
        return map_chunks(run, rows.shape[0], size, grad=True)
