"""Shared test setup: headless matplotlib, deterministic torch, one intra-op thread."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

os.environ.setdefault("MPLBACKEND", "Agg")
# Subprocesses (CLI runs, kill-and-resume, torchrun ranks) take the same thread count.
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("PELLUCID_TEST_THREADS", "1"))

import torch

# One intra-op thread by default: the suite's tensors are small, so on a shared machine more
# threads mostly add synchronisation and contention (and results do not depend on it).
# PELLUCID_TEST_THREADS overrides it; the gloo tests' spawned ranks import this module and
# use one thread each too (two ranks on two cores). No test relies on more than one.
torch.set_num_threads(int(os.environ.get("PELLUCID_TEST_THREADS", "1")))


@contextlib.contextmanager
def gloo_group(rank: int, world: int, store: str) -> Iterator[None]:
    """Join a gloo group through a file store (no TCP port to race for) for the block, then
    leave it together: a rank that cannot join fails in a minute instead of gloo's 30.

    Both ranks meet at a barrier before either destroys the group. Without it the rank that
    finished first tore its connections down while the other's gloo threads still used
    them, and that rank aborted now and then ("terminate called without an active
    exception", SIGABRT), also in CI. A block that raised skips the barrier, so the other
    rank's timeout reports it instead of a second hang."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def model_rows(model: torch.nn.Module) -> Iterator[list[int]]:
    """Within the block, the number of rows of every call of ``model`` (a forward pre-hook,
    removed on exit, also when the block raises)."""
    rows: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        yield rows
    finally:
        handle.remove()
