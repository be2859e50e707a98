"""Sharded explanation over 2 gloo ranks equals the single-process explanation."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from conftest import gloo_group
from pellucid.sharded import explain_sharded


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _worker(rank: int, world: int, path: str) -> None:
    with gloo_group(rank, world, f"{path}.store"):
        x = torch.linspace(-1, 1, 7 * 5).reshape(7, 5)
        e = explain_sharded(_model(), x, method="input_x_gradient", target="predicted")
        occ = explain_sharded(_model(), x, method="occlusion", target=0, window=(2,))
        if rank == 0:
            n_eval = torch.tensor(occ.extras["n_evaluations"])
            torch.save({"a": e.attributions, "t": e.target, "n_eval": n_eval}, path)


@pytest.mark.distributed
def test_two_ranks_equal_one_process(tmp_path):
    path = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(2, path), nprocs=2, join=True)
    got = torch.load(path, weights_only=True)
    x = torch.linspace(-1, 1, 7 * 5).reshape(7, 5)
    expected = explain_sharded(_model(), x, method="input_x_gradient", target="predicted")
    torch.testing.assert_close(got["a"], expected.attributions)
    assert torch.equal(got["t"], expected.target)
    # counts of work are summed over the ranks (rank 0's count alone was 4 of 7 rows' worth)
    single = explain_sharded(_model(), x, method="occlusion", target=0, window=(2,))
    assert int(got["n_eval"]) == single.extras["n_evaluations"]


# Stochastic methods draw from one random stream per example (pellucid._random), keyed by the
# row's index in the whole input: 1, 2 and 3 ranks, and any batch_size, give the same result
# (the same random draws; only the float rounding of differently sized batched matmuls
# differs). The in-process shard test below is bit for bit.
_STOCHASTIC = {
    "kernel_shap": {"n_samples": 40},
    "lime": {"n_samples": 40},
    "sampling_shapley": {"n_samples": 3},
    "smoothgrad": {"n_samples": 4},
    "expected_gradients": {"n_samples": 4, "background": "zeros(3, 5)"},
    "integrated_gradients": {"baseline": "uniform", "n_steps": 8},
}
# LIME's batched weighted least-squares solve rounds differently when the batch holds other
# rows (float64: about 1e-17); everything else must be bit for bit across shards.
# The regressions (KernelSHAP, LIME) and sampling Shapley sum rows in float64 through BLAS,
# whose kernels may round differently for different row counts on some CPUs (seen with
# torch 2.11 on a 16-core x86 machine: 3e-17). Different random draws would move values by
# about 1e-2, so 1e-12 still tells the two apart.
_TOLERANCE = {"lime": 1e-12, "kernel_shap": 1e-12, "sampling_shapley": 1e-12}


def _stochastic(method: str, x: torch.Tensor, **extra) -> torch.Tensor:
    kwargs = dict(_STOCHASTIC[method])
    if kwargs.get("background") == "zeros(3, 5)":
        kwargs["background"] = torch.linspace(-1, 1, 15, dtype=x.dtype).reshape(3, 5)
    generator = torch.Generator().manual_seed(7)
    e = explain_sharded(
        _model().double(), x, method=method, target=1, generator=generator, **kwargs, **extra
    )
    return e.attributions


def _x() -> torch.Tensor:
    return torch.linspace(-1, 1, 7 * 5, dtype=torch.float64).reshape(7, 5).sin()


def _stochastic_worker(rank: int, world: int, path: str) -> None:
    with gloo_group(rank, world, f"{path}.store"):
        results = {m: _stochastic(m, _x()) for m in _STOCHASTIC}
        if rank == 0:
            torch.save(results, path)


def _assert_same(method: str, got: torch.Tensor, expected: torch.Tensor, tol: float = 0.0) -> None:
    tol = max(tol, _TOLERANCE.get(method, 0.0))
    diff = (got - expected).abs().max().item() if got.shape == expected.shape else None
    torch.testing.assert_close(
        got, expected, rtol=0, atol=tol, msg=f"{method}: max |difference| {diff}"
    )


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_stochastic_methods_equal_one_process_on_any_number_of_ranks(tmp_path, world):
    path = str(tmp_path / "rank0.pt")
    mp.spawn(_stochastic_worker, args=(world, path), nprocs=world, join=True)
    got = torch.load(path, weights_only=True)
    for method in _STOCHASTIC:
        # The random draws are the same (other draws move values by ~1e-2); the model's
        # batched forward rounds a row differently when its batch has another row count
        # (float64: ~1e-17), so this is equality up to that rounding.
        _assert_same(method, got[method], _stochastic(method, _x()), tol=1e-12)


@pytest.mark.parametrize("method", list(_STOCHASTIC))
def test_stochastic_methods_do_not_depend_on_batch_size_or_shards(method):
    from pellucid._random import example_offset

    whole = _stochastic(method, _x())
    # Other chunk sizes change only the BLAS kernels' rounding (float64: ~1e-17), never the
    # random draws (those would move values by ~1e-2).
    _assert_same(method, _stochastic(method, _x(), batch_size=3), whole, tol=1e-12)
    parts = []
    for lo, hi in ((0, 2), (2, 7)):
        with example_offset(lo):
            parts.append(_stochastic(method, _x()[lo:hi]))
    _assert_same(method, torch.cat(parts), whole)


def _kernel_worker(rank: int, world: int, path: str) -> None:
    with gloo_group(rank, world, f"{path}.store"):
        torch.manual_seed(5 + rank)  # ranks differ; the seed comes from rank 0 (broadcast)
        x = torch.linspace(-1, 1, 7 * 5, dtype=torch.float64).reshape(7, 5)
        e = explain_sharded(_model().double(), x, method="kernel_shap", target=1, n_samples=24)
        if rank == 0:
            torch.save({"a": e.attributions}, path)


@pytest.mark.distributed
def test_kernel_shap_without_generator_on_ranks_with_different_rng_states(tmp_path):
    path = str(tmp_path / "rank0.pt")
    mp.spawn(_kernel_worker, args=(2, path), nprocs=2, join=True)
    got = torch.load(path, weights_only=True)
    torch.manual_seed(5)
    x = torch.linspace(-1, 1, 7 * 5, dtype=torch.float64).reshape(7, 5)
    # 24 of the 30 coalitions of 5 players: sampled, so the random draws must be shared
    expected = explain_sharded(_model().double(), x, method="kernel_shap", target=1, n_samples=24)
    _assert_same("kernel_shap", got["a"], expected.attributions)
