"""Benchmark: pellucid vs captum, shap and Torch-Pruning on one GPU, the same work in one process.

torchvision resnet18 (random weights, eval mode) on ``--batch`` images of ``--size`` pixels:
the gradient methods (saliency, input x gradient, integrated gradients, SmoothGrad, Grad-CAM,
guided backprop, DeepLIFT, LRP), the perturbation methods (occlusion, feature ablation,
KernelSHAP), expected gradients against shap's GradientExplainer, infidelity and max
sensitivity against captum.metrics, gradient clipping against torch.nn.utils (and AGC against
a plain per-parameter loop), and structured channel pruning against Torch-Pruning (time to
prune, then the pruned models' measured latency).

Each line gives the milliseconds per call of both, the peer's time over pellucid's (speed-up,
> 1 means pellucid is faster) and the relative L2 difference between the two results (the
same quantity computed twice: a check that the comparison is fair). Times are medians after a
warm-up, with the device synchronized around every call. A peer that fails prints its error.

    PYTHONPATH=src python benchmarks/bench_cuda.py [--device cuda] [--batch 16] [--size 224]
    PYTHONPATH=src python benchmarks/bench_cuda.py --device cpu --batch 2 --size 64 --quick
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import pellucid
from pellucid import clipping, metrics, pruning

warnings.filterwarnings("ignore")
ROWS: list[dict[str, Any]] = []
PROFILES: list[tuple[str, Callable[[], Any]]] = []


def timed(fn: Callable[[], Any], device: torch.device, budget: float, min_runs: int = 3) -> float:
    """Median seconds of ``fn()`` over at least ``min_runs`` runs and ``budget`` seconds,
    after one warm-up; the device is synchronized around every run."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    fn()
    sync()
    times: list[float] = []
    spent = 0.0
    while len(times) < min_runs or (spent < budget and len(times) < 200):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return statistics.median(times)


def rel(a: Any, b: Any) -> float:
    a = torch.as_tensor(a).detach().double().cpu()
    b = torch.as_tensor(b).detach().double().cpu()
    b = b.reshape(a.shape) if b.numel() == a.numel() else b.expand_as(a)  # a map per channel
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def case(
    name: str,
    ours: Callable[[], Any],
    peer: Callable[[], Any] | None,
    peer_name: str,
    args: Any,
    compare: bool = True,
) -> None:
    """Time both and record a row; a failing side records its error instead of a time.
    ``compare``: the two compute the same numbers (not two random draws), so report their
    difference."""
    row: dict[str, Any] = {"case": name, "peer_name": peer_name}
    results = {}
    for side, fn in (("pellucid", ours), ("peer", peer)):
        if fn is None:
            continue
        try:
            results[side] = fn()
            row[side] = timed(fn, args.device, args.budget)
        except Exception as exc:  # a benchmark reports a failure and goes on
            row[side + "_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
            if args.verbose:
                traceback.print_exc()
    wanted = tuple(p for p in args.profile.split(",") if p)
    if wanted and name.startswith(wanted) and "pellucid" in results:
        PROFILES.append((name, ours))  # profiled after every timing: the profiler slows launches
    if compare and "pellucid" in results and "peer" in results:
        try:
            row["rel_diff"] = rel(_values(results["pellucid"]), _values(results["peer"]))
        except Exception as exc:
            row["rel_diff_error"] = str(exc)[:60]
    ROWS.append(row)
    print(_line(row), flush=True)


def profile(name: str, fn: Callable[[], Any], args: Any) -> None:
    """torch.profiler's tables of one pellucid call (host and device time per operator, and
    the host's waits for the device), printed and written next to ``--json``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if args.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities) as prof:
        fn()
        if args.device.type == "cuda":
            torch.cuda.synchronize()
    table = prof.key_averages()
    text = "\n".join(
        [f"== profile of {name}", table.table(sort_by="cpu_time_total", row_limit=30)]
        + ([table.table(sort_by="device_time_total", row_limit=15)] if len(activities) > 1 else [])
    )
    print(text, flush=True)
    if args.json:
        with open(args.json.rsplit(".", 1)[0] + "_profile.txt", "a") as f:
            f.write(text + "\n")


def _values(result: Any) -> Any:
    if isinstance(result, pellucid.Explanation):
        return result.attributions
    if isinstance(result, list | tuple) and result and isinstance(result[0], torch.Tensor):
        return result[0]
    return result


def _line(row: dict[str, Any]) -> str:
    ours, peer = row.get("pellucid"), row.get("peer")

    def cell(v: float | None, side: str) -> str:
        failed = f"{side}_error" in row
        return f"{1e3 * v:10.2f}" if v is not None else f"{'failed' if failed else '-':>10s}"

    speed = f"{peer / ours:8.2f}x" if ours and peer else f"{'-':>9s}"
    diff = f"{row['rel_diff']:.1e}" if "rel_diff" in row else "-"
    errors = "; ".join(f"{k}: {v}" for k, v in row.items() if k.endswith("_error"))
    return (
        f"{row['case']:28s} {cell(ours, 'pellucid')} {cell(peer, 'peer')} {speed} {diff:>8s}  "
        f"{row['peer_name']:34s} {errors}"
    )


def resnet(device: torch.device) -> nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None).to(device).eval()


def no_inplace(model: nn.Module) -> nn.Module:
    """A copy whose ReLUs are out of place (captum's DeepLift/LRP hooks need that)."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return twin


def gradient_cases(model: nn.Module, x: torch.Tensor, target: torch.Tensor, args) -> None:
    from captum.attr import (
        DeepLift,
        GuidedBackprop,
        InputXGradient,
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        NoiseTunnel,
        Saliency,
    )

    steps, rows = args.steps, args.rows
    case(
        "saliency",
        lambda: pellucid.saliency(model, x, target=target),
        lambda: Saliency(model).attribute(x, target=target),
        "captum Saliency",
        args,
    )
    case(
        "input_x_gradient",
        lambda: pellucid.input_x_gradient(model, x, target=target),
        lambda: InputXGradient(model).attribute(x, target=target),
        "captum InputXGradient",
        args,
    )
    case(
        f"integrated_gradients {steps}",
        lambda: pellucid.integrated_gradients(
            model, x, target=target, n_steps=steps, batch_size=rows
        ),
        lambda: IntegratedGradients(model).attribute(
            x, target=target, n_steps=steps, method="gausslegendre", internal_batch_size=rows
        ),
        f"captum IntegratedGradients ibs={rows}",
        args,
    )
    noise = 0.15 * float(x.max() - x.min())
    n = args.samples
    case(
        f"smoothgrad {n}",
        lambda: pellucid.smoothgrad(
            model,
            x,
            target=target,
            n_samples=n,
            noise=0.15,
            batch_size=rows,
            generator=torch.Generator().manual_seed(0),
        ),
        lambda: NoiseTunnel(Saliency(model)).attribute(
            x,
            target=target,
            nt_type="smoothgrad",
            nt_samples=n,
            stdevs=noise,
            abs=False,
            nt_samples_batch_size=max(1, rows // x.shape[0]),
        ),
        "captum NoiseTunnel(Saliency)",
        args,
        compare=False,
    )
    case(
        "grad_cam layer4",
        lambda: pellucid.grad_cam(model, x, target=target, layer="layer4"),
        lambda: LayerAttribution.interpolate(
            LayerGradCam(model, model.layer4).attribute(x, target=target, relu_attributions=True),
            tuple(x.shape[-2:]),
            "bilinear",
        ),
        "captum LayerGradCam + interpolate",
        args,
    )
    case(
        "guided_backprop",
        lambda: pellucid.guided_backprop(model, x, target=target),
        lambda: GuidedBackprop(no_inplace(model)).attribute(x, target=target),
        "captum GuidedBackprop",
        args,
    )
    twin = no_inplace(model)
    case(
        "deeplift",
        lambda: pellucid.deeplift(model, x, target=target),
        lambda: DeepLift(twin).attribute(x, target=target),
        "captum DeepLift",
        args,
    )
    case(
        "lrp", lambda: pellucid.lrp(model, x, target=target), None, "(captum LRP: no resnets)", args
    )


def perturbation_cases(model: nn.Module, x: torch.Tensor, target: torch.Tensor, args) -> None:
    from captum.attr import FeatureAblation, KernelShap, Occlusion

    side, win, rows = x.shape[-1], args.window, args.rows
    case(
        f"occlusion {win}x{win}",
        lambda: pellucid.occlusion(
            model, x, target=target, window=win, stride=win, batch_size=rows
        ),
        lambda: Occlusion(model).attribute(
            x,
            sliding_window_shapes=(3, win, win),
            strides=(3, win, win),
            target=target,
            perturbations_per_eval=max(1, rows // x.shape[0]),
        ),
        "captum Occlusion",
        args,
    )
    cells = side // win
    grid = torch.arange(side, device=x.device) // win
    mask = (grid[:, None] * cells + grid[None, :]).expand(1, 3, side, side)
    case(
        f"feature_ablation {cells * cells}",
        lambda: pellucid.feature_ablation(
            model, x, target=target, feature_mask=mask[0], batch_size=rows
        ),
        lambda: FeatureAblation(model).attribute(
            x, target=target, feature_mask=mask, perturbations_per_eval=max(1, rows // x.shape[0])
        ),
        "captum FeatureAblation",
        args,
    )
    coarse = side // 4 if side >= 32 else win
    g2 = torch.arange(side, device=x.device) // coarse
    mask2 = (g2[:, None] * (side // coarse) + g2[None, :]).expand(1, 3, side, side)
    ns = args.shap_samples

    def captum_kernel_shap() -> torch.Tensor:
        ks = KernelShap(model)
        return torch.cat(
            [
                ks.attribute(
                    x[i : i + 1],
                    target=target[i : i + 1],
                    feature_mask=mask2,
                    n_samples=ns,
                    perturbations_per_eval=rows,
                )
                for i in range(x.shape[0])
            ]
        )

    case(
        f"kernel_shap {ns} ({(side // coarse) ** 2} cells)",
        lambda: pellucid.kernel_shap(
            model,
            x,
            target=target,
            feature_mask=mask2[0],
            n_samples=ns,
            batch_size=rows,
            generator=torch.Generator().manual_seed(0),
        ),
        captum_kernel_shap,
        "captum KernelShap (one row a call)",
        args,
        compare=False,
    )


def shap_cases(model: nn.Module, x: torch.Tensor, target: torch.Tensor, args) -> None:
    background = torch.rand(16, *x.shape[1:], device=x.device, generator=None)
    n = args.samples

    def theirs() -> Any:
        import shap

        explainer = shap.GradientExplainer(model, background)
        values, _ = explainer.shap_values(x, nsamples=n, ranked_outputs=1)
        return torch.as_tensor(values[..., 0] if values.ndim == x.ndim + 1 else values)

    case(
        f"expected_gradients {n}",
        lambda: pellucid.expected_gradients(
            model,
            x,
            target=target,
            background=background,
            n_samples=n,
            generator=torch.Generator().manual_seed(0),
        ),
        theirs,
        "shap GradientExplainer (top class)",
        args,
        compare=False,
    )


def metric_cases(model: nn.Module, x: torch.Tensor, target: torch.Tensor, args) -> None:
    from captum.metrics import infidelity as captum_infidelity
    from captum.metrics import sensitivity_max

    sal = pellucid.saliency(model, x, target=target).attributions
    n = args.metric_samples

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = 0.1 * torch.randn_like(inputs)
        return noise, inputs - noise

    case(
        f"infidelity {n}",
        lambda: metrics.infidelity(
            model,
            x,
            sal,
            target=target,
            n_samples=n,
            batch_size=args.rows,
            generator=torch.Generator().manual_seed(0),
        ),
        lambda: captum_infidelity(
            model,
            perturb,
            x,
            sal,
            target=target,
            n_perturb_samples=n,
            max_examples_per_batch=args.rows,
        ),
        "captum.metrics.infidelity",
        args,
        compare=False,
    )
    from captum.attr import Saliency

    case(
        "max_sensitivity saliency 8",
        lambda: metrics.max_sensitivity(
            model,
            x,
            "saliency",
            target=target,
            n_samples=8,
            radius=0.02,
            generator=torch.Generator().manual_seed(0),
        ),
        lambda: sensitivity_max(
            Saliency(model).attribute,
            x,
            target=target,
            abs=False,
            n_perturb_samples=8,
            perturb_radius=0.02,
        ),
        "captum.metrics.sensitivity_max",
        args,
        compare=False,
    )
    case(
        "deletion_curve 16 steps",
        lambda: metrics.deletion_curve(
            model, x, sal, target=target, step=x[0].numel() // 3 // 16, batch_size=args.rows
        ),
        None,
        "(no peer)",
        args,
    )


def clipping_cases(model: nn.Module, x: torch.Tensor, target: torch.Tensor, args) -> None:
    params = [p for p in model.parameters()]
    loss = model(x).logsumexp(1).sum()
    grads = torch.autograd.grad(loss, params)
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    saved = [p.grad.clone() for p in params]

    def reset() -> None:
        for p, g in zip(params, saved, strict=True):
            p.grad.copy_(g)

    def agc_loop(factor: float = 0.01, eps: float = 1e-3) -> None:
        for p in params:
            dims = tuple(range(1, p.ndim)) if p.ndim > 1 else ()
            w = torch.linalg.vector_norm(p.detach(), dim=dims, keepdim=True)
            gn = torch.linalg.vector_norm(p.grad, dim=dims, keepdim=True)
            limit = factor * w.clamp_min(eps)
            p.grad.mul_(torch.where(gn > limit, limit / gn.clamp_min(1e-6), torch.ones_like(gn)))

    pairs = [
        (
            "clip_grad_norm_",
            lambda: clipping.clip_grad_norm_(params, 1.0),
            lambda: torch.nn.utils.clip_grad_norm_(params, 1.0),
            "torch clip_grad_norm_",
        ),
        (
            "clip_grad_value_",
            lambda: clipping.clip_grad_value_(params, 1e-3),
            lambda: torch.nn.utils.clip_grad_value_(params, 1e-3),
            "torch clip_grad_value_",
        ),
        (
            "adaptive_clip_grad_ (AGC)",
            lambda: clipping.adaptive_clip_grad_(params, 0.01),
            agc_loop,
            "per-parameter AGC loop",
        ),
    ]
    for name, ours, theirs, peer_name in pairs:
        case(
            name,
            lambda f=ours: (reset(), f()),
            lambda f=theirs: (reset(), f()),
            peer_name,
            args,
            compare=False,
        )
    auto, z = clipping.AutoClip(), clipping.ZClip()
    case("AutoClip step", lambda: (reset(), auto.clip_(params)), None, "(no peer)", args)
    case("ZClip step", lambda: (reset(), z.clip_(params)), None, "(no peer)", args)
    for p in params:
        p.grad = None


def pruning_cases(x: torch.Tensor, args) -> None:
    import torch_pruning as tp

    example = x[:1]
    ratio = args.ratio
    state: dict[str, nn.Module] = {}

    def ours() -> nn.Module:
        model = resnet(args.device)
        plan = pruning.plan_channel_pruning(model, example, amount=ratio)
        state["pellucid"] = plan.apply_(model)
        return state["pellucid"]

    def rounded() -> nn.Module:
        model = resnet(args.device)
        plan = pruning.plan_channel_pruning(model, example, amount=ratio, round_to=8)
        state["pellucid round_to=8"] = plan.apply_(model)
        return state["pellucid round_to=8"]

    def theirs() -> nn.Module:
        model = resnet(args.device)
        pruner = tp.pruner.MagnitudePruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=[model.fc],
        )
        pruner.step()
        state["torch_pruning"] = model
        return model

    case(
        f"channel pruning {ratio:.0%} (plan+apply)",
        ours,
        theirs,
        "Torch-Pruning MagnitudePruner",
        args,
        compare=False,
    )
    case("channel pruning round_to=8", rounded, None, "(no peer)", args)
    dense = resnet(args.device)
    lat = {}
    for key, model in (("dense", dense), *state.items()):
        lat[key] = pruning.measure.latency(
            model, x[:1], batch_size=args.latency_batch, n_repeats=20
        )
        n = sum(p.numel() for p in model.parameters())
        print(
            f"  latency {key:14s} {1e3 * lat[key].median:8.2f} ms at batch {args.latency_batch}"
            f" on {lat[key].device}, {n / 1e6:.2f} M parameters",
            flush=True,
        )
    if "pellucid" in lat and "torch_pruning" in lat:
        ROWS.append(
            {
                "case": f"pruned resnet18 latency (b={args.latency_batch})",
                "pellucid": lat["pellucid"].median,
                "peer": lat["torch_pruning"].median,
                "peer_name": "Torch-Pruning's pruned model",
                "dense": lat["dense"].median,
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rows", type=int, default=256, help="rows per forward (both libraries)")
    parser.add_argument("--steps", type=int, default=32, help="integrated gradients steps")
    parser.add_argument("--samples", type=int, default=16, help="SmoothGrad / expected gradients")
    parser.add_argument("--window", type=int, default=16, help="occlusion window, ablation cells")
    parser.add_argument("--shap-samples", type=int, default=200, help="KernelSHAP coalitions")
    parser.add_argument("--metric-samples", type=int, default=16)
    parser.add_argument("--ratio", type=float, default=0.3, help="channel pruning amount")
    parser.add_argument("--latency-batch", type=int, default=64)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per call")
    parser.add_argument("--only", default="", help="comma-separated groups (default: all)")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument("--quick", action="store_true", help="one timed run per call")
    parser.add_argument(
        "--profile",
        default="",
        help="profile pellucid's cases whose names start so (comma-separated)",
    )
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args()
    args.device = torch.device(args.device)
    if args.quick:
        args.budget = 0.0
    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        print(f"device: {torch.cuda.get_device_name(args.device)}, torch {torch.__version__}")
    model = resnet(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(args.device)
    with torch.no_grad():
        target = model(x).argmax(1)
    print(
        f"resnet18, {args.batch} images of 3x{args.size}x{args.size}; ms per call; "
        "speed-up = peer time / pellucid time; diff = relative L2 difference of the results"
    )
    print(f"{'case':28s} {'pellucid':>10s} {'peer':>10s} {'speed-up':>9s} {'diff':>8s}  peer")
    groups = {
        "gradients": lambda: gradient_cases(model, x, target, args),
        "perturbation": lambda: perturbation_cases(model, x, target, args),
        "shap": lambda: shap_cases(model, x, target, args),
        "metrics": lambda: metric_cases(model, x, target, args),
        "clipping": lambda: clipping_cases(model, x, target, args),
        "pruning": lambda: pruning_cases(x, args),
    }
    chosen = [g for g in args.only.split(",") if g] or list(groups)
    for name in chosen:
        try:
            groups[name]()
        except Exception:  # a missing peer library: report it and go on
            print(f"group {name} failed:")
            traceback.print_exc()
    for name, fn in PROFILES:
        profile(name, fn, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(args.device), "torch": torch.__version__, "rows": ROWS}, f)


if __name__ == "__main__":
    main()
