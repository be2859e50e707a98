"""Clipping across 2 gloo ranks: DDP equals one process; sharded global norm is global."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from conftest import gloo_group
from pellucid.clipping import clip_by_global_norm, clip_grad_norm_, total_norm
from pellucid.distributed import all_reduce_norm, global_norm, is_initialized

MAX_NORM = 0.05


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (12,), generator=g
    )


def _train(model, x, y, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    norms = []
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        norms.append(clip_grad_norm_(model.parameters(), MAX_NORM))
        opt.step()
    return torch.stack(norms)


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)  # two ranks on a 2-core machine
    with gloo_group(rank, world, os.path.join(folder, "store")):
        x, y = _batch()
        # 1. DDP on half of the global batch per rank, clipped after the gradient all-reduce
        ddp = torch.nn.parallel.DistributedDataParallel(_model())
        half = slice(rank * 6, rank * 6 + 6)
        norms = _train(ddp, x[half], y[half])
        ddp_params = [p.detach() for p in ddp.module.parameters()]
        del ddp  # its reducer lets go of the group before the group is destroyed
        # 2. the same model with its parameters sharded: rank 0 holds the first layer
        model = _model()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        params = list(model.parameters())
        shard = params[:2] if rank == 0 else params[2:]
        local = total_norm([p.grad for p in shard])
        inf_norm = global_norm(shard, norm_type=float("inf"))
        one_norm = all_reduce_norm(
            total_norm([p.grad for p in shard], norm_type=1.0), norm_type=1.0, process_group=True
        )
        transform = clip_by_global_norm(MAX_NORM, process_group=True)
        out = transform([p.grad for p in shard], shard)  # pure: grads unchanged
        sharded = clip_grad_norm_(shard, MAX_NORM, process_group=True)
        torch.save(
            {
                "ddp_params": ddp_params,
                "ddp_norms": norms,
                "local": local,
                "sharded": sharded,
                "shard_grads": [p.grad for p in shard],
                "transform_coef": out.stats.clip_coef,
                "inf": inf_norm,
                "one": one_norm,
                "initialized": is_initialized(),
            },
            os.path.join(folder, f"rank{rank}.pt"),
        )


@pytest.mark.distributed
def test_ddp_and_sharded_clipping_on_two_gloo_ranks(tmp_path):
    # Spawned, not forked: forks of the test process (whose threads may hold a lock at that
    # moment) hung now and then, also in CI. Spawning costs a few seconds.
    mp.start_processes(_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    x, y = _batch()

    # DDP: same clipped training as one process on the whole batch
    single = _model()
    single_norms = _train(single, x, y)
    for r in ranks:
        assert r["initialized"]
        torch.testing.assert_close(r["ddp_norms"], single_norms)
        for p, q in zip(r["ddp_params"], single.parameters(), strict=True):
            torch.testing.assert_close(p, q.detach())

    # sharded: each rank's norm is the global one, so the clip coefficient is the same
    model = _model()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    full = clip_grad_norm_(model.parameters(), MAX_NORM)
    for r in ranks:
        torch.testing.assert_close(r["sharded"], full)
        assert float(r["local"]) < float(full)
        torch.testing.assert_close(r["inf"], total_norm(grads, norm_type=float("inf")))
        torch.testing.assert_close(r["one"], total_norm(grads, norm_type=1.0))
        coef = MAX_NORM / (float(full) + 1e-6)
        torch.testing.assert_close(float(r["transform_coef"]), coef)
    clipped = [p.grad for p in model.parameters()]
    torch.testing.assert_close(ranks[0]["shard_grads"], clipped[:2])
    torch.testing.assert_close(ranks[1]["shard_grads"], clipped[2:])


def test_process_group_without_init_is_a_clear_error():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        clip_grad_norm_([p], 1.0, process_group=True)
    assert torch.equal(p.grad, torch.ones(2))
