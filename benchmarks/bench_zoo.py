"""The zoo: pellucid vs Torch-Pruning (structured pruning) and vs captum (attribution) on
random-weight torchvision/timm models, in one process.

Needs torchvision, timm, torch-pruning and captum (``.venv-zoo``, built by
``scripts/check.sh``). Run from the repository root:

    PYTHONPATH=src .venv-zoo/bin/python benchmarks/bench_zoo.py [--ratio 0.3] [--models a,b]
        [--side 224] [--batch 0 (parameters only, no latency)] [--skip-prune] [--skip-explain]

Pruning, per model: handled or not (plan, apply, the pruned model runs with the dense
output shape), parameters kept, measured latency speed-up (dense / pruned, batch 8,
median of repeats) at the same ratio, time to plan, and pellucid's parameters relative to
Torch-Pruning's (issue 13 asks for 2% or closer where both run). Torch-Pruning is set up as
its own examples set up each family (``tests/zoo/zoo_peers.py``); each library runs in its
own process under a time limit (Torch-Pruning does not finish on Swin).
Attribution, per model x method,
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
import json
import statistics
import subprocess
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
from zoo.zoo_peers import torch_pruning_prune

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


PRUNERS = {"pellucid": pellucid_prune, "torch_pruning": torch_pruning_prune}


def prune_worker(which: str, source: str, name: str, side: int, ratio: float, batch: int) -> None:
    """One library on one model (in its own process, so that a peer that hangs or runs out
    of memory is stopped by the parent's timeout); prints one JSON line."""
    model, x = build(source, name, side)
    total = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        shape = model(x).shape
    result: dict = {"ok": False, "kept": None, "speed": None, "plan_s": None, "error": None}
    try:
        small, result["plan_s"] = PRUNERS[which](copy.deepcopy(model), x, ratio)
        with torch.no_grad():
            out_shape = small(x).shape
        result["kept"] = sum(p.numel() for p in small.parameters()) / total
        result["ok"] = out_shape == shape
        if not result["ok"]:
            result["error"] = f"output shape {tuple(out_shape)}, dense {tuple(shape)}"
        elif batch > 0:
            xb = torch.randn(batch, *x.shape[1:])
            result["speed"] = latency(model, xb) / latency(small, xb)
    except Exception as err:
        result["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:150]}"
    print("RESULT " + json.dumps(result), flush=True)


def run_pruner(
    which: str, source: str, name: str, side: int, ratio: float, batch: int, timeout: float
) -> dict:
    command = [sys.executable, __file__, "--worker", which, "--source", source]
    command += ["--models", name, "--side", str(side), "--ratio", str(ratio)]
    command += ["--batch", str(batch)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "kept": None, "error": f"did not finish in {timeout:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {"ok": False, "kept": None, "error": f"crashed: {tail[:150]}"}
    return json.loads(lines[-1][len("RESULT ") :])


def _cell(r: dict) -> str:
    kept = f"{r['kept']:6.3f}" if r.get("kept") is not None else f"{'-':>6s}"
    speed = f"{r['speed']:5.2f}x" if r.get("speed") is not None else f"{'-':>6s}"
    plan = f"{r['plan_s']:6.2f}s" if r.get("plan_s") is not None else f"{'-':>7s}"
    return f"{'yes' if r['ok'] else 'NO ':>3s} {kept} {speed} {plan}"


def prune_row(
    source: str, name: str, side: int, ratio: float, batch: int, timeout: float
) -> tuple[str, bool | None]:
    """One table row, and whether pellucid's parameters are within 2% of Torch-Pruning's
    (None when one of them does not run)."""
    ours = run_pruner("pellucid", source, name, side, ratio, batch, timeout)
    peer = run_pruner("torch_pruning", source, name, side, ratio, batch, timeout)
    within = None
    diff = f"{'-':>7s}"
    if ours["ok"] and peer["ok"]:
        relative = (ours["kept"] - peer["kept"]) / peer["kept"]
        within = abs(relative) <= 0.02
        diff = f"{relative * 100:+6.2f}%"
    row = f"{source + ':' + name:28s} {_cell(ours)}   {_cell(peer)}   {diff}"
    for label, r in (("pellucid", ours), ("Torch-Pruning", peer)):
        if r.get("error"):
            row += f"\n    {label}: {r['error']}"
    return row, within


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


def _pruning_table(args: argparse.Namespace, chosen: list[tuple[str, str, int]]) -> None:
    latency_note = f"batch {args.batch} latency" if args.batch > 0 else "no latency"
    print(
        f"Structured pruning at ratio {args.ratio} ({latency_note}, CPU, "
        f"{torch.get_num_threads()} threads; each library in its own process, "
        f"{args.timeout:.0f} s limit)"
    )
    print(
        f"{'model':28s} {'pellucid: ok  kept  speed   plan':34s}   "
        f"{'Torch-Pruning: ok  kept  speed   plan':36s} params vs TP"
    )
    verdicts = []
    for source, name, side in chosen:
        row, within = prune_row(source, name, side, args.ratio, args.batch, args.timeout)
        verdicts.append(within)
        print(row, flush=True)
    both = [v for v in verdicts if v is not None]
    print(
        f"params within 2% of Torch-Pruning's on {sum(both)} of the {len(both)} models where "
        "both run"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=8, help="latency batch (0: no latency)")
    parser.add_argument("--models", default="", help="names, or source:name (timm:resnet18)")
    parser.add_argument("--side", type=int, default=0, help="image side (default: per model)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per library")
    parser.add_argument("--skip-explain", action="store_true")
    parser.add_argument("--skip-prune", action="store_true")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--source", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    wanted = [m for m in args.models.split(",") if m]
    chosen = [
        (s, n, args.side or side)
        for s, n, side in ZOO
        if not wanted or n in wanted or f"{s}:{n}" in wanted
    ]
    if args.worker:
        source, name, side = next((s, n, d) for s, n, d in chosen if s == args.source)
        prune_worker(args.worker, source, name, side, args.ratio, args.batch)
        return
    if not args.skip_prune:
        _pruning_table(args, chosen)
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
