"""Explain a dataset across ``torch.distributed`` ranks and merge the results.

Launched with ``torchrun``, every rank explains a contiguous shard of the inputs and the
attributions are gathered so that every rank holds the same :class:`Explanation` as a
single process would compute. A stochastic method given no ``generator`` gets one seeded
from the global RNG of rank 0 (broadcast; in one process too), and draws per-example
streams from it (``pellucid._random``), so its results are bit-identical on any number of
ranks. Without an initialized process group it explains everything locally.

Example:
    >>> import torch
    >>> e = explain_sharded(torch.nn.Linear(3, 1), torch.ones(4, 3), method="saliency")
    >>> e.attributions.shape
    torch.Size([4, 3])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from pellucid._random import example_offset
from pellucid._registry import attribute, get_method
from pellucid._validation import check_tensor
from pellucid.explanation import Explanation

__all__ = ["SUMMED_EXTRAS", "explain_sharded"]

#: Integer extras that count work done per shard: the merged value is their sum over ranks.
SUMMED_EXTRAS = ("n_evaluations",)


def _split_target(target: Any, n: int, bounds: Sequence[tuple[int, int]], rank: int) -> Any:
    if isinstance(target, torch.Tensor | list | tuple) and len(target) == n:
        start, stop = bounds[rank]
        return target[start:stop]
    return target


def _shared_generator(method: str, kwargs: dict[str, Any], group: Any) -> dict[str, Any]:
    """``kwargs`` with a ``generator`` seeded identically on every rank (from rank 0's global
    RNG) for a stochastic method that was given none."""
    if not get_method(method).stochastic or kwargs.get("generator") is not None:
        return kwargs
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64)
    if dist.is_available() and dist.is_initialized():
        source = 0 if group is None else dist.get_global_rank(group, 0)
        dist.broadcast(seed, src=source, group=group)
    return {**kwargs, "generator": torch.Generator().manual_seed(int(seed))}


def _gather_rows(local: torch.Tensor, counts: list[int], group: Any) -> torch.Tensor:
    """All-gather tensors whose first dimension differs by rank (padded to the largest);
    gloo gathers only CPU tensors, so a GPU result travels through a CPU copy."""
    if local.device.type != "cpu" and dist.get_backend(group) == "gloo":
        return _gather_rows(local.cpu(), counts, group).to(local.device)
    width = max(counts)
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])


def explain_sharded(
    model: Any,
    inputs: torch.Tensor,
    *,
    method: str = "integrated_gradients",
    process_group: Any = None,
    **kwargs: Any,
) -> Explanation:
    """Explain ``inputs`` with ``method``, sharding rows across the ranks of a process group.

    Args:
        model: the model (the same weights on every rank).
        inputs: the full batch (the same on every rank); rank ``r`` explains the ``r``-th of
            ``world_size`` contiguous shards.
        method: a registered method name (see ``pellucid.list_methods()``).
        process_group: the group to use (default: the global group).
        **kwargs: passed to the method; a per-example ``target`` is sharded with the rows.

    Returns:
        The merged explanation, identical on every rank and to a single-process run, also
        for stochastic methods (their random streams are per example, keyed by the row's
        index in ``inputs``; a method given no ``generator`` gets one seeded from rank 0's
        global RNG, so ranks whose RNG states differ still agree).

    Raises:
        TypeError: `inputs` is not a tensor, or the method refuses an argument.
        ValueError: `inputs` has fewer rows than there are ranks, `method` is not registered (with
            the closest names), or the method refuses an argument.
    """
    check_tensor("inputs", inputs, min_ndim=1)
    kwargs = _shared_generator(method, dict(kwargs), process_group)
    if not (dist.is_available() and dist.is_initialized()):
        return attribute(model, inputs, method=method, **kwargs)
    world = dist.get_world_size(process_group)
    rank = dist.get_rank(process_group)
    n = inputs.shape[0]
    sizes = [len(part) for part in torch.arange(n).tensor_split(world)]
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    if n < world:
        raise ValueError(
            f"`inputs` must have at least one row per rank; got {n} rows for {world} ranks. "
            "Explain small batches in one process."
        )
    lo, hi = bounds[rank]
    kwargs = dict(kwargs)
    if "target" in kwargs:
        kwargs["target"] = _split_target(kwargs["target"], n, bounds, rank)
    with example_offset(lo):  # per-example random streams keyed by global row index
        local = attribute(model, inputs[lo:hi], method=method, **kwargs)

    fields = {
        "attributions": local.attributions,
        "target": local.target,
        "baseline": local.baseline,
        **{f"extras.{k}": v for k, v in sorted(local.extras.items())},
    }
    rows = _per_example_fields(fields, hi - lo, world, process_group)

    def merge(name: str) -> Any:
        # per-example tensors (on every rank) are gathered in rank order; the rest is shared
        value = fields[name]
        return _gather_rows(value.detach(), sizes, process_group) if name in rows else value

    extras = {k: merge(f"extras.{k}") for k in sorted(local.extras)}
    for key in SUMMED_EXTRAS:  # counts of work: every rank's share
        if isinstance(extras.get(key), int) and not isinstance(extras[key], bool):
            total = torch.tensor([extras[key]], dtype=torch.int64)
            dist.all_reduce(total, group=process_group)
            extras[key] = int(total.item())
    return Explanation(
        attributions=merge("attributions"),
        inputs=inputs.detach(),
        method=local.method,
        target=merge("target"),
        baseline=merge("baseline"),
        params={**local.params, "world_size": world},
        extras={**extras, "shard_sizes": sizes},
    )


def _per_example_fields(fields: dict[str, Any], n_local: int, world: int, group: Any) -> set[str]:
    """The fields that hold one row per example on every rank.

    Decided together: a tensor whose length matches this rank's row count only by
    coincidence (say 4 samples on a rank of 4 rows) must not be gathered on one rank and
    kept on another, which would mismatch the collectives.
    """
    mine = sorted(
        name
        for name, value in fields.items()
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n_local
    )
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine, group=group)
    return set.intersection(*(set(names) for names in everyone))
