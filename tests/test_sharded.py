"""Sharded explanation over 2 gloo ranks equals the single-process explanation."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import init_gloo
from pellucid.sharded import explain_sharded


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _worker(rank: int, world: int, path: str) -> None:
    init_gloo(rank, world, f"{path}.store")
    try:
        x = torch.linspace(-1, 1, 7 * 5).reshape(7, 5)
        e = explain_sharded(_model(), x, method="input_x_gradient", target="predicted")
        if rank == 0:
            torch.save({"a": e.attributions, "t": e.target}, path)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_equal_one_process(tmp_path):
    path = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(2, path), nprocs=2, join=True)
    got = torch.load(path, weights_only=True)
    x = torch.linspace(-1, 1, 7 * 5).reshape(7, 5)
    expected = explain_sharded(_model(), x, method="input_x_gradient", target="predicted")
    torch.testing.assert_close(got["a"], expected.attributions)
    assert torch.equal(got["t"], expected.target)
