"""Peak memory of the heavy methods against ``batch_size``: bounded by it, not by the budget.

One 3x224x224 image through a small CNN. Every (method, batch_size) pair runs in a fresh
child process that builds the model and input, resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``), runs the method once and reports the new peak (``VmHWM``)
above the resident size before the call: what the call itself needed, in MiB.

Work per call (the budgets of the issue): KernelSHAP and LIME with ``--samples`` coalitions
(10,000) over 256 grid segments; integrated gradients with ``--steps`` (1,000) steps;
occlusion with an 8x8 window, stride 8 (784 positions); the deletion curve (step 1 over 256
segments, grouped by a feature mask) and the faithfulness correlation with ``--samples``
subsets. If memory follows ``batch_size``, each row grows with the batch size and stays
flat when the budget grows (compare ``--samples 2500`` with the default).

Run: ``PYTHONPATH=src python benchmarks/bench_memory.py [--samples 10000] [--steps 1000]
[--batch-sizes 16 64 256] [--quick]`` (Linux; a full run takes a few minutes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

METHODS = (
    "kernel_shap",
    "lime",
    "integrated_gradients",
    "occlusion",
    "deletion_curve",
    "faithfulness_correlation",
)


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _model() -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=4, padding=2),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


def child(method: str, batch_size: int, samples: int, steps: int, size: int) -> dict[str, float]:
    """Run one method once and return its peak memory above the starting resident size."""
    import torch

    import pellucid
    from pellucid import metrics
    from pellucid.attribution import grid_segments

    torch.set_num_threads(1)
    model = _model()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    segments = grid_segments(x, n_segments=256)
    attributions = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(0)
    calls = {
        "kernel_shap": lambda: pellucid.kernel_shap(
            model,
            x,
            target=0,
            n_samples=samples,
            feature_mask=segments,
            generator=gen,
            batch_size=batch_size,
        ),
        "lime": lambda: pellucid.lime(
            model,
            x,
            target=0,
            n_samples=samples,
            feature_mask=segments,
            generator=gen,
            batch_size=batch_size,
        ),
        "integrated_gradients": lambda: pellucid.integrated_gradients(
            model, x, target=0, n_steps=steps, batch_size=batch_size
        ),
        "occlusion": lambda: pellucid.occlusion(
            model, x, target=0, window=(3, 8, 8), stride=(3, 8, 8), batch_size=batch_size
        ),
        "deletion_curve": lambda: metrics.deletion_curve(
            model,
            x,
            attributions,
            target=0,
            feature_mask=segments,
            step=1,
            batch_size=batch_size,
        ),
        "faithfulness_correlation": lambda: metrics.faithfulness_correlation(
            model,
            x,
            attributions,
            target=0,
            n_samples=samples,
            generator=gen,
            batch_size=batch_size,
        ),
    }
    calls[method]()  # warm-up at a small size is not possible for every budget: run twice
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak resident size (VmHWM) to the current one
    before = _rss_mib("VmRSS")
    calls[method]()
    return {"peak_mib": _rss_mib("VmHWM") - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=1_000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--quick", action="store_true", help="1,000 samples, 100 steps, 112 px")
    parser.add_argument("--child", nargs=5, metavar=("METHOD", "BATCH", "SAMPLES", "STEPS", "SIZE"))
    args = parser.parse_args()
    if args.child:
        method, *numbers = args.child
        print(json.dumps(child(method, *map(int, numbers))))
        return
    if args.quick:
        args.samples, args.steps, args.size = 1_000, 100, 112
    print(
        f"peak memory above the starting resident size, MiB (3x{args.size}x{args.size} image, "
        f"{args.samples} samples, {args.steps} IG steps)"
    )
    print(f"  {'method':<26s}" + "".join(f"{'batch ' + str(b):>12s}" for b in args.batch_sizes))
    for method in args.methods:
        row = []
        for batch in args.batch_sizes:
            command = [
                sys.executable,
                __file__,
                "--child",
                method,
                str(batch),
                str(args.samples),
                str(args.steps),
                str(args.size),
            ]
            run = subprocess.run(command, capture_output=True, text=True, check=False)
            if run.returncode != 0:
                row.append("failed")
                print(run.stderr[-800:], file=sys.stderr)
                continue
            row.append(f"{json.loads(run.stdout.splitlines()[-1])['peak_mib']:.1f}")
        print(f"  {method:<26s}" + "".join(f"{v:>12s}" for v in row))


if __name__ == "__main__":
    main()
