"""Benchmark: gradient methods on torchvision's resnet18 (random weights) vs captum.

saliency, input x gradient and Grad-CAM (``layer4``) at 64x64 (and 96x96) pixels, batch 8,
the same inputs through pellucid and captum in one process, interleaved; prints the best
time of each and captum's time over pellucid's (>= 1 means pellucid is as fast or faster).
Also integrated gradients with 32 steps, where pellucid's layout policy may measure and
choose channels-last for the many path points. Needs torchvision (no download: random
weights).

Times are the process's CPU time by default (``--clock cpu``): with one thread it equals the
wall time of an idle machine, and on a shared machine other processes do not inflate it;
``--clock wall`` measures wall time.

    PYTHONPATH=src python benchmarks/bench_resnet_gradients.py [--repeats 7] [--clock cpu]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

import pellucid

warnings.filterwarnings("ignore")


def best_times(
    fns: list[Callable[[], Any]], repeats: int, clock: Callable[[], float], min_seconds: float = 0.5
) -> list[float]:
    """Best time of each function, interleaved rounds (shared-machine load hits all alike)."""
    for fn in fns:
        fn()  # warm-up
    best, spent, rounds = [float("inf")] * len(fns), [0.0] * len(fns), 0
    while rounds < repeats or (min(spent) < min_seconds and rounds < 200):
        for i, fn in enumerate(fns):
            start = clock()
            fn()
            elapsed = clock() - start
            best[i], spent[i] = min(best[i], elapsed), spent[i] + elapsed
        rounds += 1
    return best


def cases(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[str, Callable, Callable]]:
    from captum.attr import (
        InputXGradient,
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        Saliency,
    )

    t = 3
    return [
        (
            "saliency",
            lambda: pellucid.saliency(model, x, target=t),
            lambda: Saliency(model).attribute(x, target=t),
        ),
        (
            "input_x_gradient",
            lambda: pellucid.input_x_gradient(model, x, target=t),
            lambda: InputXGradient(model).attribute(x, target=t),
        ),
        (
            "grad_cam layer4",
            lambda: pellucid.grad_cam(model, x, target=t, layer="layer4"),
            lambda: LayerAttribution.interpolate(
                LayerGradCam(model, model.layer4).attribute(x, target=t, relu_attributions=True),
                x.shape[2:],
                "bilinear",
            ),
        ),
        (
            "ig-32 gausslegendre",
            lambda: pellucid.integrated_gradients(model, x, target=t, n_steps=32),
            lambda: IntegratedGradients(model).attribute(
                x, target=t, n_steps=32, method="gausslegendre", internal_batch_size=64
            ),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    parser.add_argument("--skip-ig", action="store_true", help="only the one-pass methods")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import captum
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, captum "
        f"{captum.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"{args.clock} time"
    )
    for size in args.sizes:
        x = torch.randn(args.batch, 3, size, size)
        print(f"\nresnet18, {size}x{size}")
        print(f"{'method':<22}{'ms ours':>10}{'ms captum':>11}{'captum/ours':>13}")
        for name, ours, theirs in cases(model, x):
            if args.skip_ig and name.startswith("ig"):
                continue
            clock = time.process_time if args.clock == "cpu" else time.perf_counter
            t_ours, t_theirs = best_times([ours, theirs], args.repeats, clock)
            print(f"{name:<22}{1e3 * t_ours:10.1f}{1e3 * t_theirs:11.1f}{t_theirs / t_ours:12.2f}x")


if __name__ == "__main__":
    main()
