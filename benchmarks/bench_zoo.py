"""The zoo: pellucid vs Torch-Pruning (structured pruning) and vs captum (attribution) on
random-weight torchvision/timm models, in one process.

Needs torchvision, timm, torch-pruning and captum (``.venv-zoo``, built by
``scripts/check.sh``). Run from the repository root:

    PYTHONPATH=src .venv-zoo/bin/python benchmarks/bench_zoo.py [--ratio 0.3] [--models a,b]
        [--skip-prune] [--skip-explain]

Pruning, per model: handled or not (plan, apply, the pruned model runs with the dense
output shape), parameters kept, measured latency speed-up (dense / pruned, batch 8,
median of repeats) at the same ratio, and time to plan. Attribution, per model x method,
float64, on models calibrated to explain like trained ones (``zoo_models.calibrate``: batch
norm statistics of a random batch, a zero-initialized head drawn at random; with
torchvision's default statistics mobilenet_v2's gradients are ~1e-11): cosine agreement
with captum (scale-free, computed in float64 without torch's norm clamp, which turns the
cosine of two equal vectors of norm < 1e-8 into ~0), the largest difference relative to
captum's largest value, the completeness gap (|sum(attr) - (f(x) - f(0))| / |f(x) - f(0)|;
LRP: |sum(attr) + absorbed - f(x)| / |f(x)| for pellucid, |sum(attr) - f(x)| / |f(x)| for
captum, which does not account for what biases absorb) of both, and the time ratio
pellucid / captum (median of 3, same process).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pellucid import attribution
from pellucid.pruning import plan_channel_pruning
from zoo.zoo_models import ZOO, build, calibrate

warnings.filterwarnings("ignore")


def latency(model: nn.Module, x: torch.Tensor, repeats: int = 7) -> float:
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def pellucid_prune(model: nn.Module, x: torch.Tensor, ratio: float) -> tuple[nn.Module, float]:
    start = time.perf_counter()
    plan = plan_channel_pruning(model, x, amount=ratio)
    elapsed = time.perf_counter() - start
    return plan.apply_(model), elapsed


def torch_pruning_prune(model: nn.Module, x: torch.Tensor, ratio: float) -> tuple[nn.Module, float]:
    import torch_pruning as tp

    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    num_heads = {}
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            num_heads[m] = m.num_heads
        elif isinstance(getattr(m, "qkv", None), nn.Linear) and hasattr(m, "num_heads"):
            num_heads[m.qkv] = m.num_heads
    start = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=ignored,
        num_heads=num_heads,
    )
    elapsed = time.perf_counter() - start
    pruner.step()
    for m in model.modules():  # the attribute fix-ups of Torch-Pruning's own examples
        qkv = getattr(m, "qkv", None)
        if qkv in pruner.num_heads:
            m.num_heads = pruner.num_heads[qkv]
            if hasattr(m, "head_dim") and not isinstance(m, nn.MultiheadAttention):
                m.head_dim = qkv.out_features // (3 * m.num_heads)
            if hasattr(m, "attn_dim"):
                m.attn_dim = m.num_heads * m.head_dim
    if hasattr(model, "hidden_dim") and hasattr(model, "conv_proj"):
        model.hidden_dim = model.conv_proj.out_channels
    return model, elapsed


def prune_row(source: str, name: str, side: int, ratio: float, batch: int) -> str:
    model, x = build(source, name, side)
    side = x.shape[-1]
    total = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        shape = model(x).shape
    xb = torch.randn(batch, *x.shape[1:])
    dense = latency(model, xb)
    cells = []
    for prune in (pellucid_prune, torch_pruning_prune):
        try:
            small, plan_s = prune(copy.deepcopy(model), x, ratio)
            with torch.no_grad():
                ok = small(x).shape == shape
            kept = sum(p.numel() for p in small.parameters()) / total
            speed = dense / latency(small, xb)
            cells.append((ok, kept, speed, plan_s))
        except Exception as err:
            cells.append((False, float("nan"), float("nan"), float("nan")))
            print(
                f"    {prune.__name__} on {source}:{name}: {type(err).__name__}: "
                f"{str(err).splitlines()[0][:150]}",
                flush=True,
            )
    (po, pk, ps, pt), (to, tk, ts, tt) = cells
    diff = f"{(pk - tk) * 100:+.1f}" if po and to else "  -"
    return (
        f"{source + ':' + name:28s} {'yes' if po else 'NO ':>3s} {pk:6.3f} {ps:5.2f}x {pt:6.2f}s"
        f"   {'yes' if to else 'NO ':>3s} {tk:6.3f} {ts:5.2f}x {tt:6.2f}s   {diff}"
    )


def _captum(method: str, model: nn.Module):
    import captum.attr as ca

    return {
        "saliency": lambda x, t: ca.Saliency(model).attribute(x, target=t, abs=True),
        "input_x_gradient": lambda x, t: ca.InputXGradient(model).attribute(x, target=t),
        "integrated_gradients": lambda x, t: ca.IntegratedGradients(model).attribute(
            x, target=t, n_steps=32, method="gausslegendre"
        ),
        "deeplift": lambda x, t: ca.DeepLift(model).attribute(x, target=t),
        "lrp": lambda x, t: ca.LRP(model).attribute(x, target=t),
    }[method]


def _ours(method: str, model: nn.Module):
    kwargs = {"n_steps": 32} if method == "integrated_gradients" else {}
    fn = getattr(attribution, method)

    def run(x: torch.Tensor, t: int) -> torch.Tensor:
        e = fn(model, x, target=t, **kwargs)
        run.absorbed = sum(
            e.extras.get("absorbed", {}).values(), torch.zeros(x.shape[0], dtype=x.dtype)
        )
        return e.attributions

    run.absorbed = 0.0
    return run


def agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Cosine similarity (min over rows, float64, no norm clamp) and the largest difference
    relative to ``b``'s largest value."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    cosine = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    return cosine.min().item(), ((a - b).abs().max() / b.abs().max()).item()


def _timed(fn, x, t, repeats: int = 3):
    out, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(x, t)
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def explain_rows(models: list[tuple[str, str, int]], methods: list[str]) -> Iterator[str]:
    """One row per model x method, as soon as it is measured."""
    for source, name, side in models:
        model, _ = build(source, name, side)
        model = calibrate(model.double(), side)
        x = torch.randn(
            2, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
        )
        with torch.no_grad():
            f_x = model(x)[:, 0]
            delta = f_x - model(torch.zeros_like(x))[:, 0]
        for method in methods:
            results = []
            for make in (_ours, _captum):
                try:
                    fn = make(method, copy.deepcopy(model))
                    attr, secs = _timed(fn, x, 0)
                    summed = attr.detach().flatten(1).sum(1) + getattr(fn, "absorbed", 0.0)
                    ref = f_x if method == "lrp" else delta
                    gap = ((summed - ref).abs() / ref.abs()).max().item()
                    results.append((attr.detach(), secs, gap))
                except Exception as err:
                    results.append((None, float("nan"), float("nan")))
                    print(
                        f"    {make.__name__[1:]} {method} on {name}: {type(err).__name__}: "
                        f"{str(err).splitlines()[0][:120]}",
                        flush=True,
                    )
            (a, ta, ga), (b, tb, gb) = results
            agree, diff = (
                agreement(a, b) if a is not None and b is not None else (float("nan"),) * 2
            )
            complete = method in ("integrated_gradients", "deeplift", "lrp")
            gaps = f"{ga:9.2e} {gb:9.2e}" if complete else f"{'-':>9s} {'-':>9s}"
            yield (
                f"{source + ':' + name:28s} {method:22s} {agree:7.4f} {diff:9.2e} {gaps} "
                f"{ta / tb:6.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--models", default="")
    parser.add_argument("--side", type=int, default=0, help="image side (default: per model)")
    parser.add_argument("--skip-explain", action="store_true")
    parser.add_argument("--skip-prune", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    chosen = [
        (s, n, args.side or side)
        for s, n, side in ZOO
        if not args.models or n in args.models.split(",")
    ]
    if not args.skip_prune:
        print(
            f"Structured pruning at ratio {args.ratio} (batch {args.batch} latency, CPU, "
            f"{torch.get_num_threads()} threads)"
        )
        print(
            f"{'model':28s} {'pellucid: ok  kept  speed   plan':34s}   "
            f"{'Torch-Pruning: ok  kept  speed   plan':36s} kept diff (pts)"
        )
        for source, name, side in chosen:
            print(prune_row(source, name, side, args.ratio, args.batch), flush=True)
    if args.skip_explain:
        return
    print(
        "\nAttribution vs captum (float64, calibrated batch norms, target 0, 2 images): cosine "
        "agreement (min over images), max difference / max |captum|, completeness gap "
        "pellucid / captum, time ratio pellucid / captum"
    )
    print(
        f"{'model':28s} {'method':22s} {'cosine':>7s} {'max diff':>9s} {'gap ours':>9s} "
        f"{'gap captum':>9s} {'time':>7s}"
    )
    explain = [
        m for m in chosen if m[1] in ("resnet18", "mobilenet_v2", "convnext_tiny", "vit_b_16")
    ]
    methods = ["saliency", "input_x_gradient", "integrated_gradients", "deeplift", "lrp"]
    for row in explain_rows([m for m in explain if m[0] == "tv"], methods):
        print(row, flush=True)


if __name__ == "__main__":
    main()
