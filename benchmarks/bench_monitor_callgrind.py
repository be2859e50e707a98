"""GradientMonitor overhead counted in CPU instructions (valgrind's callgrind), not seconds.

Wall-clock differences of a few percent drown in the noise of a shared machine; instruction
counts do not. The script runs the same training loop in three child processes under
``valgrind --tool=callgrind``:

- ``base``: imports, data, model, warm-up steps, no measured steps;
- ``plain``: the same plus ``--steps`` training steps;
- ``monitor``: the same plus ``--steps`` training steps with a ``GradientMonitor`` attached.

``plain - base`` is the cost of the steps; ``monitor - plain`` is the monitor's; their ratio
is the overhead. Everything runs on one thread so the counts repeat.

Run: ``PYTHONPATH=src python benchmarks/bench_monitor_callgrind.py [--steps 30] [--log-every 10]``
(needs ``valgrind``; Debian: ``apt-get install -y valgrind``; a run takes a few minutes).
"""

from __future__ import annotations

import argparse
import tempfile

from _callgrind import instructions, require_valgrind, settle


def child(mode: str, steps: int, log_every: int) -> None:
    """The measured program: one TinyResNet training loop on a digits batch."""
    import torch
    from bench_clipping import monitored_training

    torch.set_num_threads(1)
    torch.manual_seed(0)
    step, _, _ = monitored_training(log_every)

    for _ in range(3):  # warm-up: allocator, kernels, the monitor's first call
        step(mode == "monitor")
    settle()
    if mode != "base":
        for _ in range(steps):
            step(mode == "monitor")


def _instructions(mode: str, steps: int, log_every: int, folder: str) -> int:
    args = ["--child", mode, "--steps", str(steps), "--log-every", str(log_every)]
    return instructions(__file__, args, mode, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--child", choices=["base", "plain", "monitor"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.log_every)
        return
    require_valgrind()
    with tempfile.TemporaryDirectory() as folder:
        counts = {
            m: _instructions(m, args.steps, args.log_every, folder)
            for m in ("base", "plain", "monitor")
        }
    steps_cost = counts["plain"] - counts["base"]
    monitor_cost = counts["monitor"] - counts["plain"]
    for mode, n in counts.items():
        print(f"  {mode:<8s} {n:>16,d} instructions")
    print(
        f"{args.steps} TinyResNet steps (digits batch 64, log_every={args.log_every}): "
        f"{steps_cost / args.steps:,.0f} instructions per step; "
        f"GradientMonitor overhead {monitor_cost / steps_cost * 100:+.2f}%"
    )


if __name__ == "__main__":
    main()
