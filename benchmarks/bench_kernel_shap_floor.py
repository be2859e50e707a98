"""KernelSHAP's fixed per-call cost against its floor, measured so that load does not matter.

Case (issue 15, item 7): 16 rows of breast_cancer, the 30-feature MLP (``pellucid.models.MLP``,
64-32 hidden units; untrained: its cost does not depend on its weights), a baseline at the
training mean, ``n_samples=200``, one thread. The *floor* is the work no implementation can
avoid: the model on the 16 inputs (the scores being explained), the model on the
16 x 201 perturbed rows (200 coalitions and the empty one) as one batched forward, and the
solve of the regression (the 16 x 200 responses through the factored 200 x 29 design).
The ratio is KernelSHAP's cost over the floor's.

Two load-insensitive measures:

- default: process CPU time (not wall time), best of ``--repeats`` interleaved runs of each;
- ``--callgrind``: instruction counts under ``valgrind --tool=callgrind`` (repeatable whatever
  else the machine does): three child processes (setup only; setup + ``--calls`` KernelSHAP
  calls; setup + ``--calls`` floors), the setup's count subtracted. Takes a few minutes.

Measured (2-core shared machine): 7.11 M instructions per call against a floor of 3.56 M,
2.00x (``--callgrind --calls 5``); 1.035 ms against 0.492 ms of process CPU time, 2.10x.

Run: ``PYTHONPATH=src python benchmarks/bench_kernel_shap_floor.py [--callgrind]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _callgrind import instructions, require_valgrind, settle

N_SAMPLES = 200


def setup() -> tuple[Callable[[], Any], Callable[[], Any]]:
    """``(kernel_shap call, floor)`` on the issue's case, both warmed up."""
    import torch

    import pellucid
    from pellucid.data import load_dataset
    from pellucid.models import MLP

    torch.set_num_threads(1)
    ds = load_dataset("breast_cancer")
    torch.manual_seed(0)
    mlp = MLP(30, 2).eval()
    x, base = ds.X_test[:16], ds.X_train.mean(0, keepdim=True)
    gen = torch.Generator()

    def ours() -> Any:
        return pellucid.kernel_shap(
            mlp, x, target=1, baseline=base, n_samples=N_SAMPLES, generator=gen.manual_seed(0)
        )

    p = x.shape[1]
    rows = x.repeat(N_SAMPLES + 1, 1)  # the same number of perturbed rows (values irrelevant)
    g = torch.Generator().manual_seed(0)
    xw = torch.randn(N_SAMPLES, p - 1, generator=g, dtype=torch.float64)
    inv = torch.randn(p - 1, p - 1, generator=g, dtype=torch.float64)

    def floor() -> Any:
        with torch.inference_mode():
            mlp(x)
            y = mlp(rows)[:, 1].view(N_SAMPLES + 1, -1)[:N_SAMPLES].T.double()
            return (y @ xw) @ inv

    for _ in range(5):
        ours()
        floor()
    return ours, floor


def cpu_time(repeats: int) -> tuple[float, float]:
    """Best process CPU seconds of each, over ``repeats`` interleaved runs."""
    ours, floor = setup()
    best = {"ours": float("inf"), "floor": float("inf")}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("floor", floor)):
            start = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - start)
    return best["ours"], best["floor"]


def child(mode: str, calls: int) -> None:
    ours, floor = setup()  # both warmed up
    settle()
    fn = {"base": None, "ours": ours, "floor": floor}[mode]
    if fn is not None:
        for _ in range(calls):
            fn()


def _instructions(mode: str, calls: int, folder: str) -> int:
    return instructions(__file__, ["--child", mode, "--calls", str(calls)], mode, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callgrind", action="store_true", help="count instructions")
    parser.add_argument("--repeats", type=int, default=300, help="CPU-time runs of each")
    parser.add_argument("--calls", type=int, default=20, help="calls per callgrind child")
    parser.add_argument("--child", choices=["base", "ours", "floor"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.calls)
        return
    case = f"kernel_shap, 16 rows x {N_SAMPLES} samples, 30 features (MLP 64-32), 1 thread"
    if not args.callgrind:
        ours, floor = cpu_time(args.repeats)
        print(f"{case}; best process CPU time of {args.repeats}")
        print(f"  kernel_shap {ours * 1e3:8.3f} ms   floor {floor * 1e3:8.3f} ms")
        print(f"  ratio to the floor: {ours / floor:.2f}x (target <= 3x)")
        return
    require_valgrind()
    with tempfile.TemporaryDirectory() as folder:
        counts = {m: _instructions(m, args.calls, folder) for m in ("base", "ours", "floor")}
    ours = (counts["ours"] - counts["base"]) / args.calls
    floor = (counts["floor"] - counts["base"]) / args.calls
    print(f"{case}; instructions per call (callgrind, {args.calls} calls)")
    print(f"  kernel_shap {ours:14,.0f}   floor {floor:14,.0f}")
    print(f"  ratio to the floor: {ours / floor:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
