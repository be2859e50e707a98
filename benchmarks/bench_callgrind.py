"""Instruction counts (valgrind's callgrind) of pellucid against a peer or a compute floor.

Seconds drown in the noise of a shared machine; instruction counts repeat. For a case,
the same program runs in child processes under ``valgrind --tool=callgrind``, on one
thread:

- ``base``: imports, the case's setup and one warm-up call of every variant;
- one process per variant: the same, plus ``--calls`` more calls of that variant.

``(variant - base) / calls`` is the variant's cost per call in instructions, and the
ratios between variants are what the script prints. Cases:

- ``occlusion``: ``pellucid.occlusion`` (2x2 windows) vs captum's ``Occlusion`` on a
  SmallCNN and 16 digits (1x8x8), as in ``bench_perturbation_attribution.py``;
- ``deeplift-smallcnn``, ``deeplift-tinyresnet``, ``deeplift-mlp``, ``deeplift-resnet18``
  (torchvision, 3x64x64, needs the zoo environment): ``pellucid.deeplift`` with the default
  reference pass, with the separate one-row reference pass (``two_passes``), its compute
  floor and captum's ``DeepLift`` (see ``bench_decomposition.deeplift_variants``).

Run: ``PYTHONPATH=src python benchmarks/bench_callgrind.py CASE [--calls 3]`` (needs
``valgrind``; Debian: ``apt-get install -y valgrind``; a case takes a few minutes).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from typing import Any

from _callgrind import instructions, require_valgrind, settle

CASES = (
    "occlusion",
    "deeplift-smallcnn",
    "deeplift-tinyresnet",
    "deeplift-mlp",
    "deeplift-resnet18",
)


def variants(case: str) -> dict[str, Callable[[], Any]]:
    """The case's variants: name -> one call."""
    import torch

    torch.manual_seed(0)
    if case == "occlusion":
        from captum.attr import Occlusion

        import pellucid
        from pellucid.data import load_dataset
        from pellucid.models import SmallCNN

        cnn, x = SmallCNN().eval(), load_dataset("digits").X_test[:16]
        return {
            "pellucid": lambda: pellucid.occlusion(cnn, x, target=0, window=(1, 2, 2)),
            "captum": lambda: Occlusion(cnn).attribute(
                x, sliding_window_shapes=(1, 2, 2), target=0, perturbations_per_eval=64
            ),
        }
    from bench_decomposition import deeplift_variants, reference_models

    model, x = reference_models()[case.removeprefix("deeplift-")]
    return deeplift_variants(model, x, 1)


def child(case: str, variant: str, calls: int) -> None:
    import torch

    torch.set_num_threads(1)
    cases = variants(case)
    for fn in cases.values():  # warm-up: allocator, kernels, first-call work
        fn()
    settle()
    if variant != "base":
        for _ in range(calls):
            cases[variant]()


def _instructions(case: str, variant: str, calls: int, folder: str) -> int:
    return instructions(
        __file__, [case, "--child", variant, "--calls", str(calls)], variant, folder
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=CASES)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--child")
    parser.add_argument("--only", help="comma-separated variants (default: all)")
    args = parser.parse_args()
    if args.child:
        child(args.case, args.child, args.calls)
        return
    require_valgrind()
    names = args.only.split(",") if args.only else list(variants(args.case))
    with tempfile.TemporaryDirectory() as folder:
        base = _instructions(args.case, "base", args.calls, folder)
        per_call = {
            v: (_instructions(args.case, v, args.calls, folder) - base) / args.calls for v in names
        }
    first = names[0]
    print(f"{args.case}: instructions per call ({args.calls} calls, 1 thread)")
    for v, n in per_call.items():
        print(f"  {v:<14s}{n:>16,.0f}   {n / per_call[first]:6.3f}x {first}")


if __name__ == "__main__":
    main()
