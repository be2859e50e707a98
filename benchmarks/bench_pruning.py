"""Benchmark: pellucid's structured pruning vs Torch-Pruning, and masks vs torch.nn.utils.prune.

Same model (TinyResNet, width 32, 3x32x32 inputs), same channel ratio, one process. Prints
parameters, MACs, measured CPU latency (median of repeats at the given batch size, dense
and pruned measured alternately) and time to plan/apply; then the inference latency of
unstructured masks (pellucid vs torch.nn.utils.prune, and after make_permanent_).

Run: ``PYTHONPATH=src python benchmarks/bench_pruning.py [--ratio 0.5] [--threads 1]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch_pruning as tp
from torch.nn.utils import prune

from pellucid.models import TinyResNet
from pellucid.pruning import make_permanent_, plan_channel_pruning, prune_magnitude_
from pellucid.pruning.measure import count_parameters, latency, macs


def alternate_latency(models: dict, x: torch.Tensor, batch: int, repeats: int) -> dict:
    """Median latency of each model, measured in interleaved rounds (same machine load)."""
    samples: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(9):
        for key, model in models.items():
            samples[key].append(
                latency(model, x, batch_size=batch, warmup=3, n_repeats=max(3, repeats // 9)).median
            )
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=54)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = TinyResNet(in_channels=3, width=args.width).eval()
    x1 = torch.randn(1, 3, 32, 32)

    def run_ours() -> tuple[torch.nn.Module, float, float]:
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        plan = plan_channel_pruning(model, x1, amount=args.ratio, importance="l2")
        mid = time.perf_counter()
        plan.apply_(model)
        return model, mid - start, time.perf_counter() - mid

    def run_peer() -> tuple[torch.nn.Module, float, float]:
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        pruner = tp.pruner.MagnitudePruner(
            model,
            x1,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=args.ratio,
            ignored_layers=[model.fc],
        )
        mid = time.perf_counter()
        pruner.step()
        return model, mid - start, time.perf_counter() - mid

    runs_ours = [run_ours() for _ in range(4)][1:]  # the first call of each warms up
    runs_peer = [run_peer() for _ in range(4)][1:]
    ours, peer = runs_ours[0][0], runs_peer[0][0]
    t_plan = statistics.median(r[1] for r in runs_ours)
    t_apply = statistics.median(r[2] for r in runs_ours)
    t_peer_plan = statistics.median(r[1] for r in runs_peer)
    t_peer_apply = statistics.median(r[2] for r in runs_peer)

    same = all(
        torch.equal(a, b)
        for a, b in zip(ours.state_dict().values(), peer.state_dict().values(), strict=True)
    )
    lat = alternate_latency(
        {"dense": dense, "pellucid": ours, "torch_pruning": peer}, x1, args.batch, args.repeats
    )
    print(
        f"# structured {args.ratio:.0%} channels, TinyResNet(width={args.width}), 3x32x32, "
        f"batch {args.batch}, {torch.get_num_threads()} thread(s)"
    )
    print(
        f"{'model':<14}{'params':>10}{'MACs/ex':>12}{'latency ms':>12}{'ms/example':>12}"
        f"{'speed-up':>10}{'vs floor':>10}"
    )
    dense_macs = macs(dense, x1)
    for key, model in (("dense", dense), ("pellucid", ours), ("torch_pruning", peer)):
        ms = lat[key] * 1e3
        # compute floor: dense latency scaled by the MACs ratio (perfect scaling)
        floor = lat["dense"] * macs(model, x1) / dense_macs
        print(
            f"{key:<14}{count_parameters(model):>10}{macs(model, x1):>12}{ms:>12.3f}"
            f"{ms / args.batch:>12.4f}{lat['dense'] / lat[key]:>10.2f}x"
            f"{lat[key] / floor:>9.2f}x"
        )
    print(
        f"pellucid / torch_pruning latency ratio: {lat['pellucid'] / lat['torch_pruning']:.3f}"
        f"  (identical weights: {same})"
    )
    print(
        f"plan+apply time: pellucid {1e3 * (t_plan + t_apply):.1f} ms "
        f"(plan {1e3 * t_plan:.1f}, apply {1e3 * t_apply:.1f}); torch_pruning "
        f"{1e3 * (t_peer_plan + t_peer_apply):.1f} ms (build {1e3 * t_peer_plan:.1f}, "
        f"step {1e3 * t_peer_apply:.1f}); ratio "
        f"{(t_plan + t_apply) / (t_peer_plan + t_peer_apply):.2f}"
    )

    masked = prune_magnitude_(copy.deepcopy(dense), amount=0.9)
    torch_masked = copy.deepcopy(dense)
    params = [
        (m, "weight")
        for m in torch_masked.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.9)
    permanent = make_permanent_(prune_magnitude_(copy.deepcopy(dense), amount=0.9))
    lat = alternate_latency(
        {
            "dense": dense,
            "pellucid_mask": masked,
            "torch_prune_mask": torch_masked,
            "permanent": permanent,
        },
        x1,
        args.batch,
        args.repeats,
    )
    print(
        "# unstructured 90% (global L1) masks: inference latency, batch "
        f"{args.batch} (masks cost time; only structured pruning is faster)"
    )
    for key, value in lat.items():
        print(
            f"{key:<18}{value * 1e3:>10.3f} ms   vs dense {value / lat['dense']:.2f}x   "
            f"vs torch.nn.utils.prune {value / lat['torch_prune_mask']:.2f}x"
        )


if __name__ == "__main__":
    main()
