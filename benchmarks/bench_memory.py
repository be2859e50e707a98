"""Peak memory of the heavy methods against ``batch_size``: bounded by it, not by the budget.

One 3x224x224 image through a small CNN. Every (method, batch_size) pair runs in a fresh
child process that builds the model and input, resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``), runs the method once and reports the new peak (``VmHWM``)
above the resident size before the call: what the call itself needed, in MiB.

Children run with one thread and ``MALLOC_MMAP_THRESHOLD_=131072`` (large blocks are
returned to the system when freed, so the peak is what the call holds at once, not what
glibc's heap kept from earlier calls).

Work per call (the budgets of the issue): KernelSHAP and LIME with ``--samples`` coalitions
(10,000) over 256 grid segments; integrated gradients with ``--steps`` (1,000) steps;
occlusion with an 8x8 window, stride 8 (784 positions); the deletion curve (step 1 over 256
segments, grouped by a feature mask) and the faithfulness correlation with ``--samples``
subsets. If memory follows ``batch_size``, each row grows with the batch size and stays
flat when the budget grows (compare ``--samples 2500`` with the default).

With ``--max-memory 256MB`` every method runs with ``max_memory=`` instead of a
``batch_size`` and the table shows, per method, the ``batch_size`` it picked, the measured
peak and the peak as a fraction of the budget (it must stay below 1). The other methods
that take ``max_memory``: sampling Shapley (``--samples`` coalitions: ``samples / (P - 1)``
permutations), feature ablation (256 segments), SmoothGrad (50 noisy samples: it holds all
of them, so its fixed part grows with ``n_samples``), infidelity (``--samples``
perturbations) and max-sensitivity (saliency, 50 perturbations).

Run: ``PYTHONPATH=src python benchmarks/bench_memory.py [--samples 10000] [--steps 1000]
[--batch-sizes 16 64 256] [--max-memory 256MB] [--quick]`` (Linux; a full run takes a few
minutes). A batch size of 0 is the method's default (``batch_size=None``).
"""

from __future__ import annotations

import argparse
import json
import os
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
#: Methods measured only with ``--max-memory`` (the batch-size table keeps the issue's six).
MEMORY_ONLY = (
    "sampling_shapley",
    "feature_ablation",
    "smoothgrad",
    "infidelity",
    "max_sensitivity",
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


def child(
    method: str, batch_size: int, samples: int, steps: int, size: int, max_memory: str = ""
) -> dict[str, float]:
    """Run one method once and return its peak memory above the starting resident size.

    With ``max_memory``, the method gets it instead of ``batch_size`` (0 here); the
    ``batch_size`` it picked is returned too."""
    import torch

    import pellucid
    from pellucid import metrics
    from pellucid._evaluate import _memory
    from pellucid.attribution import grid_segments

    picked: list[int] = []
    choose = _memory.memory_batch_size

    def spy(*args: Any, **kwargs: Any) -> int:
        picked.append(choose(*args, **kwargs))
        return picked[-1]

    _memory.memory_batch_size = spy  # type: ignore[assignment]
    metrics.robustness.memory_batch_size = spy  # type: ignore[attr-defined]
    sizing: dict[str, Any] = (
        {"max_memory": max_memory} if max_memory else {"batch_size": batch_size or None}
    )

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
            **sizing,
        ),
        "lime": lambda: pellucid.lime(
            model,
            x,
            target=0,
            n_samples=samples,
            feature_mask=segments,
            generator=gen,
            **sizing,
        ),
        "integrated_gradients": lambda: pellucid.integrated_gradients(
            model, x, target=0, n_steps=steps, **sizing
        ),
        "occlusion": lambda: pellucid.occlusion(
            model, x, target=0, window=(3, 8, 8), stride=(3, 8, 8), **sizing
        ),
        "deletion_curve": lambda: metrics.deletion_curve(
            model,
            x,
            attributions,
            target=0,
            feature_mask=segments,
            step=1,
            **sizing,
        ),
        "faithfulness_correlation": lambda: metrics.faithfulness_correlation(
            model,
            x,
            attributions,
            target=0,
            n_samples=samples,
            generator=gen,
            **sizing,
        ),
        "sampling_shapley": lambda: pellucid.sampling_shapley(
            model,
            x,
            target=0,
            n_samples=max(2, samples // 255),
            feature_mask=segments,
            generator=gen,
            **sizing,
        ),
        "feature_ablation": lambda: pellucid.feature_ablation(
            model, x, target=0, feature_mask=segments, **sizing
        ),
        "smoothgrad": lambda: pellucid.smoothgrad(
            model, x, target=0, n_samples=50, generator=gen, **sizing
        ),
        "infidelity": lambda: metrics.infidelity(
            model, x, attributions, target=0, n_samples=samples, generator=gen, **sizing
        ),
        "max_sensitivity": lambda: metrics.max_sensitivity(
            model, x, "saliency", target=0, n_samples=50, generator=gen, **sizing
        ),
    }
    calls[method]()  # warm-up at a small size is not possible for every budget: run twice
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak resident size (VmHWM) to the current one
    before = _rss_mib("VmRSS")
    picked.clear()
    calls[method]()
    return {"peak_mib": _rss_mib("VmHWM") - before, "batch_size": picked[0] if picked else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=1_000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--methods", nargs="+", choices=METHODS + MEMORY_ONLY)
    parser.add_argument(
        "--max-memory", default="", help="run every method with this budget ('256MB')"
    )
    parser.add_argument("--quick", action="store_true", help="1,000 samples, 100 steps, 112 px")
    parser.add_argument("--child", nargs=5, metavar=("METHOD", "BATCH", "SAMPLES", "STEPS", "SIZE"))
    args = parser.parse_args()
    if args.child:
        method, *numbers = args.child
        print(json.dumps(child(method, *map(int, numbers), max_memory=args.max_memory)))
        return
    if args.quick:
        args.samples, args.steps, args.size = 1_000, 100, 112
    if args.max_memory:
        _budget_table(args)
        return
    args.methods = args.methods or list(METHODS)
    print(
        f"peak memory above the starting resident size, MiB (3x{args.size}x{args.size} image, "
        f"{args.samples} samples, {args.steps} IG steps)"
    )
    names = [f"batch {b}" if b else "default" for b in args.batch_sizes]
    print(f"  {'method':<26s}" + "".join(f"{name:>12s}" for name in names))
    for method in args.methods:
        row = []
        for batch in args.batch_sizes:
            result = _run_child(args, method, batch)
            ok = result is not None and "peak_mib" in result
            row.append(f"{result['peak_mib']:.1f}" if ok else "failed")  # type: ignore[index]
        print(f"  {method:<26s}" + "".join(f"{v:>12s}" for v in row))


def _run_child(args: Any, method: str, batch: int, max_memory: str = "") -> dict[str, Any] | None:
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
    if max_memory:
        command += ["--max-memory", max_memory]
    # one thread, and a fixed mmap threshold: large blocks go back to the system when freed, so
    # the peak measures what the call holds at once, not glibc's heap reuse
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072")
    run = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if run.returncode != 0:
        last = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""
        if "`max_memory` must hold" in last:  # a budget too small for the call: refused
            return {"refused": last.split("ValueError: ", 1)[-1]}
        print(run.stderr[-800:], file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(run.stdout.splitlines()[-1])
    return result


def _budget_table(args: Any) -> None:
    """Per method: the batch size ``max_memory`` picked and the measured peak against it."""
    from pellucid._evaluate import parse_memory

    budget_mib = parse_memory(args.max_memory) / 2**20
    print(
        f"max_memory={args.max_memory!r} ({budget_mib:.1f} MiB): picked batch_size and peak "
        f"memory above the starting resident size (3x{args.size}x{args.size} image, "
        f"{args.samples} samples, {args.steps} IG steps)"
    )
    print(f"  {'method':<26s}{'batch_size':>12s}{'peak MiB':>12s}{'peak/budget':>13s}")
    for method in args.methods or list(METHODS + MEMORY_ONLY):
        result = _run_child(args, method, 0, args.max_memory)
        if result is None or "refused" in result:
            print(f"  {method:<26s}{'failed' if result is None else 'refused':>12s}")
            if result is not None:
                print(f"    {result['refused']}")
            continue
        peak = result["peak_mib"]
        print(f"  {method:<26s}{result['batch_size']:>12d}{peak:>12.1f}{peak / budget_mib:>13.2f}")


if __name__ == "__main__":
    main()
