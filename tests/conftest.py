"""Shared test setup: headless matplotlib, deterministic torch, small thread pools."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


def init_gloo(rank: int, world: int, store: str) -> None:
    """Join a gloo group through a file store (no TCP port to race for); a rank that cannot
    join fails in a minute instead of gloo's 30."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
