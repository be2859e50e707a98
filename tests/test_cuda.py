"""CUDA: every feature runs on the GPU, gives the CPU's numbers, keeps its results on the GPU
and leaves the model as it was; clipping takes no host sync.

Skipped where torch sees no CUDA device (CI). ``PELLUCID_TEST_DEVICE=cpu`` runs the same
checks with the CPU as the "device" (a check of this file itself; the host-sync checks then
skip). Every comparison is float64, where a GPU's kernels differ from the CPU's only in the
order of their sums.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

import pellucid
from pellucid import clipping, metrics, pruning
from pellucid.explanation import Explanation
from test_contract import (
    N_CLASSES,
    _assert_untouched,
    _dirty,
    _kwargs,
    _setup,
    _snapshot,
    _strided,
)

DEVICE = os.environ.get("PELLUCID_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "")
CUDA = DEVICE.startswith("cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not DEVICE, reason="no CUDA device (PELLUCID_TEST_DEVICE=cpu checks it)"),
]
METHODS = pellucid.list_methods()
CLOSE = {"rtol": 1e-6, "atol": 1e-9}


@contextmanager
def no_host_sync() -> Iterator[None]:
    """Raise on any operation that waits for the GPU (``.item()``, a copy to the host,
    ``nonzero``); a no-op off CUDA."""
    if not CUDA:
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _both(info: pellucid.MethodInfo, **extra):
    """The method's explanation of the contract's model and inputs on the CPU and on the
    device (same seeded generator, a CPU one: draws do not depend on the device)."""
    model, x, layer = _setup(info)
    kwargs = _kwargs(info, layer)
    kwargs.update(extra)
    want = info.fn(model, x, **kwargs)
    gpu_model = model.to(DEVICE)
    gpu_kwargs = {k: _to(v, DEVICE) for k, v in _kwargs(info, layer).items()}
    gpu_kwargs.update({k: _to(v, DEVICE) for k, v in extra.items()})
    _dirty(gpu_model)
    before = _snapshot(gpu_model)
    got = info.fn(gpu_model, x.to(DEVICE), **gpu_kwargs)
    _assert_untouched(gpu_model, before)
    return want, got, gpu_model, x.to(DEVICE), layer


#: Methods whose noise is drawn on the inputs' device (per example, from generators seeded by
#: one draw of the user's generator): a GPU's draws differ from the CPU's, so these are held
#: to determinism and batch invariance on the device instead of the CPU's numbers.
DEVICE_DRAWS = {"smoothgrad", "expected_gradients"}


@pytest.mark.parametrize("name", METHODS)
def test_method_matches_cpu_and_stays_on_the_device(name):
    info = pellucid.get_method(name)
    want, got, model, x, layer = _both(info)
    assert got.attributions.device.type == torch.device(DEVICE).type
    assert got.attributions.dtype == want.attributions.dtype
    if name not in DEVICE_DRAWS or not CUDA:
        torch.testing.assert_close(got.attributions.cpu(), want.attributions, **CLOSE)
        return
    from pellucid._random import example_offset

    kwargs = {k: _to(v, DEVICE) for k, v in _kwargs(info, layer).items()}
    again = info.fn(model, x, **_kwargs(info, layer)).attributions
    torch.testing.assert_close(again, got.attributions, rtol=0, atol=0)
    rows = []
    for i in range(x.shape[0]):
        with example_offset(i):
            rows.append(info.fn(model, x[i : i + 1], **{**kwargs, **_kwargs(info, layer)}))
    joined = torch.cat([r.attributions for r in rows])
    torch.testing.assert_close(joined, got.attributions, rtol=1e-7, atol=1e-9)


@pytest.mark.skipif(not CUDA, reason="the CPU's default chunks are sized for its caches")
@pytest.mark.parametrize("name", ["saliency", "grad_cam", "guided_backprop", "deeplift"])
def test_gpu_default_runs_the_batch_in_one_pass(name):
    """On a GPU a small chunk costs nearly what a large one does: by default a batch that
    fits in memory runs as one pass (the CPU default would split 16 images of 224 px in 3)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Conv2d(4, 4, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).to(DEVICE).eval()  # fmt: skip
    x = torch.rand(16, 3, 224, 224, device=DEVICE)
    sizes: list[int] = []
    handle = model[0].register_forward_hook(lambda m, a, out: sizes.append(a[0].shape[0]))
    try:
        extra = {"layer": "3"} if name == "grad_cam" else {}
        getattr(pellucid, name)(model, x, target=1, **extra)
    finally:
        handle.remove()
    # DeepLIFT also runs its reference row alone (one row): no pass splits the batch
    assert all(size == 1 or size >= 16 for size in sizes) and max(sizes) >= 16, sizes


@pytest.mark.parametrize("name", METHODS)
def test_method_float32_and_raising_calls_on_the_device(name, tmp_path):
    info = pellucid.get_method(name)
    model, x, layer = _setup(info, torch.float32)
    model, x = model.to(DEVICE), x.to(DEVICE)
    kwargs = {k: _to(v, DEVICE) for k, v in _kwargs(info, layer).items()}
    e = info.fn(model, x, **kwargs)
    assert e.attributions.shape == x.shape and e.attributions.dtype == torch.float32
    assert torch.isfinite(e.attributions).all()
    loaded = Explanation.load(e.save(tmp_path / "e.safetensors"))
    torch.testing.assert_close(loaded.attributions, e.attributions.cpu(), rtol=0, atol=0)
    _dirty(model)
    before = _snapshot(model)
    with pytest.raises((ValueError, TypeError), match="target"):
        info.fn(model, x, **{**kwargs, "target": N_CLASSES + 5})
    _assert_untouched(model, before)


@pytest.mark.parametrize("name", METHODS)
def test_method_takes_strided_device_inputs(name):
    info = pellucid.get_method(name)
    model, x, layer = _setup(info)
    model, x = model.to(DEVICE), x.to(DEVICE)
    odd = _strided(x)
    assert not odd.is_contiguous() and torch.equal(odd, x)
    kwargs = {k: _to(v, DEVICE) for k, v in _kwargs(info, layer).items()}
    got = info.fn(model, odd, **kwargs).attributions
    want = info.fn(model, x, **{**kwargs, **_kwargs(info, layer)}).attributions
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_a_device_generator_gives_reproducible_draws():
    info = pellucid.get_method("smoothgrad")
    model, x, layer = _setup(info)
    model, x = model.to(DEVICE), x.to(DEVICE)
    kwargs = _kwargs(info, layer)
    runs = [
        info.fn(model, x, **{**kwargs, "generator": torch.Generator(DEVICE).manual_seed(3)})
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0].attributions, runs[1].attributions, rtol=0, atol=0)


def _grads(seed: int = 0, device: str = "cpu") -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 32, 3, 3), (64,), (128, 64), (128,), (10, 128), (10,)]
    params = []
    for i, shape in enumerate(shapes):
        p = nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64))
        p.grad = torch.randn(shape, generator=g, dtype=torch.float64) * (10.0 if i == 2 else 1.0)
        params.append(p)
    return [_param_to(p, device) for p in params]


def _param_to(p: nn.Parameter, device: str) -> nn.Parameter:
    q = nn.Parameter(p.detach().to(device))
    q.grad = p.grad.to(device)
    return q


CLIPS = {
    "clip_grad_norm_": lambda ps: clipping.clip_grad_norm_(ps, 1.0),
    "clip_grad_norm_inf": lambda ps: clipping.clip_grad_norm_(ps, 1.0, norm_type=float("inf")),
    "clip_grad_value_": lambda ps: clipping.clip_grad_value_(ps, 0.5),
    "adaptive_clip_grad_": lambda ps: clipping.adaptive_clip_grad_(ps, 0.01),
    "per_tensor": lambda ps: clipping.clip_grad_norm_per_tensor_(ps, 1.0),
    "per_layer": lambda ps: clipping.clip_grad_norm_per_layer_({"a": ps[:2], "b": ps[2:]}, 1.0),
}


@pytest.mark.parametrize("name", list(CLIPS))
def test_clipping_matches_cpu_without_host_sync(name):
    cpu, dev = _grads(), _grads(device=DEVICE)
    CLIPS[name](cpu)
    CLIPS[name](dev)  # warm-up: cached groupings are built once, then every step is sync-free
    cpu, dev = _grads(), _grads(device=DEVICE)
    CLIPS[name](cpu)
    with no_host_sync():
        CLIPS[name](dev)
    for a, b in zip(cpu, dev, strict=True):
        assert b.grad.device.type == torch.device(DEVICE).type
        torch.testing.assert_close(b.grad.cpu(), a.grad, **CLOSE)


@pytest.mark.parametrize("make", [clipping.AutoClip, clipping.ZClip], ids=["autoclip", "zclip"])
def test_adaptive_clippers_keep_their_state_on_the_device(make):
    cpu_clip, dev_clip = make(), make()
    for step in range(30):
        cpu, dev = _grads(step), _grads(step, DEVICE)
        cpu_stats = cpu_clip.clip_(cpu)
        if step < 2:
            dev_stats = dev_clip.clip_(dev)
        else:
            with no_host_sync():
                dev_stats = dev_clip.clip_(dev)
        for a, b in zip(cpu, dev, strict=True):
            torch.testing.assert_close(b.grad.cpu(), a.grad, **CLOSE)
    assert float(dev_stats.norm_before) == pytest.approx(float(cpu_stats.norm_before), rel=1e-9)


def _xy(n: int = 96, device: str = "cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x.to(device), y.to(device)


def _mlp(device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2)).to(device)


@pytest.mark.parametrize("data_on", ["cpu", "device"])
def test_fit_with_monitor_and_clipper_matches_cpu(data_on):
    from pellucid.training import fit

    runs = {}
    for where in ("cpu", DEVICE):
        model = _mlp(where)
        monitor = pellucid.GradientMonitor(log_every=1)
        clipper = clipping.GradientClipper(clipping.clip_by_global_norm(0.5))
        data = _xy(device=where if data_on == "device" else "cpu")
        history = fit(
            model, data, epochs=2, batch_size=32, monitor=monitor, clipper=clipper, progress=False
        )
        runs[where] = (model, history, monitor)
    (cpu_model, cpu_hist, cpu_mon), (dev_model, dev_hist, dev_mon) = runs["cpu"], runs[DEVICE]
    assert next(dev_model.parameters()).device.type == torch.device(DEVICE).type
    for a, b in zip(cpu_model.parameters(), dev_model.parameters(), strict=True):
        torch.testing.assert_close(b.detach().cpu(), a.detach(), rtol=1e-4, atol=1e-5)
    assert dev_hist.step_losses == pytest.approx(cpu_hist.step_losses, rel=1e-4, abs=1e-6)
    assert dev_mon.layers == cpu_mon.layers
    assert len(dev_mon.steps) == len(cpu_mon.steps)


class _Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.relu(self.b2(self.c2(h)) + h)
        return self.fc(h.mean((2, 3)))


def _conv(device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    model = _Conv().double().eval()
    with torch.no_grad():
        for bn in (model.b1, model.b2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return model.to(device)


def test_channel_pruning_on_the_device_matches_cpu(tmp_path):
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    outs = {}
    for where in ("cpu", DEVICE):
        model = _conv(where)
        plan = pruning.plan_channel_pruning(model, x[:1].to(where), amount=0.5)
        plan.apply_(model)
        assert all(p.device.type == torch.device(where).type for p in model.parameters())
        with torch.no_grad():
            outs[where] = model(x.to(where)).cpu()
        if where == DEVICE:
            path = pruning.io.save(model, tmp_path / "pruned.safetensors")
            loaded = pruning.io.load(path, _Conv).double().eval()
            with torch.no_grad():
                torch.testing.assert_close(loaded(x), outs[where], **CLOSE)
    torch.testing.assert_close(outs[DEVICE], outs["cpu"], **CLOSE)


def test_magnitude_pruning_on_the_device_matches_cpu():
    masks = {}
    for where in ("cpu", DEVICE):
        model = _conv(where)
        pruning.prune_magnitude_(model, amount=0.6)
        masks[where] = {n: b.cpu() for n, b in model.named_buffers() if n.endswith("_mask")}
        assert all(b.device.type == torch.device(where).type for b in model.buffers())
    assert masks["cpu"] and masks[DEVICE].keys() == masks["cpu"].keys()
    for name, mask in masks["cpu"].items():
        assert torch.equal(masks[DEVICE][name], mask), name


def test_latency_waits_for_the_device():
    """Without a sync the host clock would time only the kernel launches."""
    n = 2048 if CUDA else 256
    model = nn.Sequential(*[nn.Linear(n, n, bias=False) for _ in range(8)]).to(DEVICE)
    x = torch.randn(n, n, device=DEVICE)
    lat = pruning.measure.latency(model, x, batch_size=n, warmup=2, n_repeats=5)
    with torch.inference_mode():
        model(x)  # warm
        if CUDA:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(x)
            end.record()
            end.synchronize()
            kernel_seconds = start.elapsed_time(end) / 1000
        else:
            kernel_seconds = 0.0
    assert lat.median >= 0.5 * kernel_seconds


def _explained(device: str):
    model = _conv(device)
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = x.to(device)
    return model, x, pellucid.saliency(model, x, target=1).attributions


METRICS = {
    "deletion": lambda m, x, a: metrics.deletion_curve(m, x, a, target=1, step=16).scores,
    "insertion": lambda m, x, a: metrics.insertion_curve(m, x, a, target=1, step=16).scores,
    "faithfulness": lambda m, x, a: metrics.faithfulness_correlation(
        m, x, a, target=1, n_samples=20, generator=torch.Generator().manual_seed(0)
    ),
    "infidelity": lambda m, x, a: metrics.infidelity(
        m, x, a, target=1, n_samples=8, generator=torch.Generator().manual_seed(0)
    ),
    "sensitivity": lambda m, x, a: metrics.avg_sensitivity(
        m, x, "saliency", target=1, n_samples=4, generator=torch.Generator().manual_seed(0)
    ),
    "sparseness": lambda m, x, a: metrics.sparseness(a),
    "completeness": lambda m, x, a: metrics.completeness_gap(
        m, x, pellucid.integrated_gradients(m, x, target=1, n_steps=16), target=1
    ),
}


@pytest.mark.parametrize("name", list(METRICS))
def test_metric_matches_cpu(name):
    want = METRICS[name](*_explained("cpu"))
    model, x, a = _explained(DEVICE)
    before = _snapshot(model)
    got = torch.as_tensor(METRICS[name](model, x, a))
    _assert_untouched(model, before)
    if name == "infidelity" and CUDA:  # its noise is drawn on the device
        torch.testing.assert_close(torch.as_tensor(METRICS[name](model, x, a)), got)
        assert torch.isfinite(got).all() and got.shape == torch.as_tensor(want).shape
        return
    torch.testing.assert_close(got.cpu(), torch.as_tensor(want), rtol=1e-6, atol=1e-8)


def test_infidelity_on_the_device_ignores_batch_size():
    model, x, a = _explained(DEVICE)
    values = [
        metrics.infidelity(
            model,
            x,
            a,
            target=1,
            n_samples=6,
            batch_size=size,
            generator=torch.Generator().manual_seed(4),
        )
        for size in (5, 24)
    ]
    torch.testing.assert_close(values[0], values[1], rtol=1e-7, atol=1e-9)


def test_randomization_check_on_the_device():
    model, x, _ = _explained(DEVICE)
    before = _snapshot(model)
    check = metrics.model_randomization_check(
        model, x, "saliency", target=1, generator=torch.Generator().manual_seed(0)
    )
    _assert_untouched(model, before)
    assert len(check.layers) > 0


def test_inspection_on_the_device_matches_cpu():
    from pellucid.inspection import permutation_importance, record_activations

    results = {}
    for where in ("cpu", DEVICE):
        model, x = _mlp(where).double(), _xy(device=where)[0].double()
        labels = _xy(device=where)[1]
        acts = record_activations(model, x)
        imp = permutation_importance(
            model, x, labels, n_repeats=3, generator=torch.Generator().manual_seed(0)
        )
        results[where] = ({k: v.cpu() for k, v in acts.items()}, imp)
    (acts_c, imp_c), (acts_d, imp_d) = results["cpu"], results[DEVICE]
    for k in acts_c:
        torch.testing.assert_close(acts_d[k], acts_c[k], **CLOSE)
    torch.testing.assert_close(
        torch.as_tensor(imp_d.importances_mean).cpu(), torch.as_tensor(imp_c.importances_mean)
    )


@pytest.mark.skipif(not CUDA, reason="GPU memory is only measured on CUDA")
@pytest.mark.parametrize("name", ["kernel_shap", "occlusion", "integrated_gradients"])
def test_max_memory_holds_on_the_gpu(name):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).to(DEVICE).eval()  # fmt: skip
    x = torch.rand(2, 3, 96, 96, device=DEVICE)
    kwargs = {
        "kernel_shap": {"n_samples": 512, "feature_mask": "grid"},
        "occlusion": {"window": 8},
        "integrated_gradients": {"n_steps": 256},
    }[name]
    if name == "kernel_shap":
        kwargs["generator"] = torch.Generator().manual_seed(0)
    budget = 64 * 2**20
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = getattr(pellucid, name)(model, x, target=1, max_memory=budget, **kwargs)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak <= budget, (name, e.params.get("batch_size"), peak)


def test_explain_command_runs_on_the_device(tmp_path, monkeypatch, capsys):
    from pellucid.cli import main

    monkeypatch.setenv("PELLUCID_CACHE_DIR", str(tmp_path / "cache"))
    got = {}
    for where in ("cpu", DEVICE):
        out = tmp_path / f"{where.replace(':', '_')}.safetensors"
        argv = ["explain", "--quick", "--rows", "0:8", "--device", where, "--out", str(out)]
        assert main(argv) == 0, capsys.readouterr().err
        got[where] = Explanation.load(out).attributions
    # float32 convolutions: cuDNN may use TF32 on the GPU (about 1e-3 relative)
    gap = (got[DEVICE] - got["cpu"]).norm() / got["cpu"].norm()
    assert gap < 1e-2, float(gap)


def test_explanation_to_moves_every_tensor():
    e = pellucid.integrated_gradients(_mlp(DEVICE), _xy(device=DEVICE)[0], target=1, n_steps=8)
    moved = e.to("cpu")
    tensors = [moved.attributions, moved.inputs, moved.baseline]
    tensors += [v for v in moved.extras.values() if isinstance(v, torch.Tensor)]
    assert all(t.device.type == "cpu" for t in tensors if t is not None)
    torch.testing.assert_close(moved.attributions, e.attributions.cpu(), rtol=0, atol=0)


def _sharded(method: str) -> pellucid.Explanation:
    from pellucid.sharded import explain_sharded

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double().to(DEVICE)
    x = torch.linspace(-1, 1, 7 * 5, dtype=torch.float64).reshape(7, 5).to(DEVICE)
    extra = {"n_samples": 4, "generator": torch.Generator().manual_seed(3)}
    return explain_sharded(
        model, x, method=method, target=1, **(extra if method != "saliency" else {})
    )


def _sharded_worker(rank: int, world: int, path: str) -> None:

    from conftest import gloo_group

    with gloo_group(rank, world, f"{path}.store"):
        got = {m: _sharded(m).attributions for m in ("saliency", "smoothgrad")}
        if rank == 0:
            torch.save({m: a.cpu() for m, a in got.items()}, path)


@pytest.mark.distributed
def test_two_gloo_ranks_on_the_device_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    path = str(tmp_path / "rank0.pt")
    mp.spawn(_sharded_worker, args=(2, path), nprocs=2, join=True)
    got = torch.load(path, weights_only=True)
    for method, attributions in got.items():
        want = _sharded(method).attributions.cpu()
        torch.testing.assert_close(attributions, want, rtol=1e-7, atol=1e-9, msg=method)
