"""Benchmark: pellucid.metrics vs quantus (and captum's infidelity / sensitivity_max).

Same model (SmallCNN on 8x8 digits), same inputs, same attributions, one process. For each
metric it prints the time per example of pellucid and of the peer, their ratio, pellucid's
ratio to the compute floor (every row the metric must evaluate, unperturbed ones included,
through the model alone: one batched call or CPU_ROWS-row chunks, whichever is faster; a
forward and backward per row for max_sensitivity's saliency),
and how well the values agree (max |difference| where the perturbations are shared, the
difference of the means where the peer draws its own).

    PYTHONPATH=src python benchmarks/bench_metrics.py [--n 128] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pellucid import metrics
from pellucid.attribution import saliency
from pellucid.data import load_dataset
from pellucid.metrics._common import CPU_ROWS
from pellucid.models import build_model

warnings.filterwarnings("ignore")


def best_time(fn: Callable[[], Any], repeats: int, min_total: float = 0.25) -> tuple[float, Any]:
    """Best of ``repeats`` runs, more for fast ones (until ``min_total`` seconds, <= 200 runs)."""
    best, out, total, runs = float("inf"), None, 0.0, 0
    while runs < repeats or (total < min_total and runs < 200):
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        best, total, runs = min(best, elapsed), total + elapsed, runs + 1
    return best, out


def best_pair(
    ours: Callable[[], Any], peer: Callable[[], Any], repeats: int, min_total: float = 0.5
) -> tuple[float, Any, float, Any]:
    """Best times of two functions run alternately, so both see the same machine load."""
    best, outs, total, runs = [float("inf")] * 2, [None, None], 0.0, 0
    while runs < repeats or (total < min_total and runs < 200):
        for i, fn in enumerate((ours, peer)):
            start = time.perf_counter()
            outs[i] = fn()
            elapsed = time.perf_counter() - start
            best[i], total = min(best[i], elapsed), total + elapsed
        runs += 1
    return best[0], outs[0], best[1], outs[1]


def floor_time(
    model: torch.nn.Module, x: torch.Tensor, rows: int, repeats: int, *, grad: bool = False
) -> float:
    """The compute floor: the model evaluations a metric needs, with nothing around them.

    ``rows`` counts every row the metric must score, the unperturbed examples included; with
    ``grad`` each row also needs one backward (a gradient explanation). Timed as one batched
    call and in chunks of ``CPU_ROWS`` rows; the faster counts (one big batch can be slower
    on a CPU), so a ratio below 1 means the metric beat both plain ways.
    """
    batch = x.repeat((rows + x.shape[0] - 1) // x.shape[0], *([1] * (x.ndim - 1)))[:rows]

    def run(size: int) -> None:
        for start in range(0, rows, size):
            part = batch[start : start + size]
            if grad:
                part = part.detach().requires_grad_(True)
                model(part)[:, 0].sum().backward()
            else:
                with torch.inference_mode():
                    model(part)

    return min(best_time(lambda s=s: run(s), repeats)[0] for s in (rows, CPU_ROWS))


def report(name: str, n: int, ours: float, peer: float, floor: float | None, agree: str) -> None:
    floor_text = f"{ours / floor:6.2f}x" if floor else "     -"
    print(
        f"{name:<34} {1e3 * ours / n:9.3f} {1e3 * peer / n:10.3f} {peer / ours:8.1f}x "
        f"{floor_text}   {agree}"
    )


SETTINGS = {
    # name: (dataset, model, reshape of one example for quantus, which wants image-like rows)
    "digits/SmallCNN": ("digits", "SmallCNN", None),
    "breast_cancer/MLP": ("breast_cancer", "MLP", (1, 1, 30)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="examples")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--setting", choices=[*SETTINGS, "all"], default="all")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quantus = __import__("quantus")
    print(
        f"torch {torch.__version__}, quantus {quantus.__version__}, "
        f"{torch.get_num_threads()} threads, best of {args.repeats}"
    )
    for name in SETTINGS if args.setting == "all" else [args.setting]:
        run_setting(name, args.n, args.repeats)


def run_setting(name: str, n_examples: int, r: int) -> None:
    torch.manual_seed(0)
    quantus = __import__("quantus")
    from captum.attr import Saliency
    from captum.metrics import infidelity as captum_infidelity
    from captum.metrics import sensitivity_max

    dataset, arch, shape = SETTINGS[name]
    data = load_dataset(dataset, seed=0)
    kwargs = {"in_features": 30, "n_classes": 2} if arch == "MLP" else {}
    model = build_model(arch, seed=0, **kwargs).eval()
    x = data.X_test[:n_examples].float()
    if shape is not None:
        x = x.reshape(-1, *shape)
    n = x.shape[0]
    y = model(x).argmax(1).detach()
    attr = saliency(model, x, target=y, absolute=False).attributions
    xn, yn, an = x.numpy(), y.numpy(), attr.numpy()
    d = x[0].numel()
    print(f"\n{name}: {n} examples of {d} features")
    print(
        f"{'metric (peer)':<34} {'ms/ex ours':>9} {'ms/ex peer':>10} {'speedup':>9} "
        f"{'vs floor':>7}   agreement"
    )

    # Deletion curve vs quantus PixelFlipping (features_in_step=1, baseline 0, logits).
    t_ours, curve = best_time(
        lambda: metrics.deletion_curve(model, x, attr, target=y, step=1, baseline=0.0), r
    )
    pf = quantus.PixelFlipping(
        features_in_step=1, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True
    )
    t_peer, qc = best_time(
        lambda: pf(
            model=model,
            x_batch=xn,
            channel_first=True,
            y_batch=yn,
            a_batch=an,
            softmax=False,
            batch_size=n,
        ),
        r,
    )
    diff = float((curve.scores[:, 1:] - torch.tensor(np.array(qc))).abs().max())
    report(
        "deletion curve (quantus PixelFlip)",
        n,
        t_ours,
        t_peer,
        floor_time(model, x, n + n * (d + 1), r),
        f"max|diff| {diff:.2e}",
    )

    # Faithfulness correlation vs quantus, with quantus's own subsets replayed.
    runs, size = 50, 16
    fc = quantus.FaithfulnessCorrelation(
        nr_runs=runs,
        subset_size=size,
        perturb_baseline=0.0,
        normalise=False,
        abs=False,
        return_aggregate=False,
        disable_warnings=True,
    )
    np.random.seed(0)
    t_peer, qv = best_time(
        lambda: fc(
            model=model,
            x_batch=xn,
            channel_first=True,
            y_batch=yn,
            a_batch=an,
            softmax=False,
            batch_size=n,
        ),
        1,
        min_total=0.0,  # one run: the seeded draws are replayed below
    )
    np.random.seed(0)
    masks = torch.zeros(n, runs, d, dtype=torch.bool)
    for run in range(runs):
        for i in range(n):
            masks[i, run, np.random.choice(d, size, replace=False)] = True
    masks = masks.reshape(n, runs, *x.shape[1:])
    t_ours, ours = best_time(
        lambda: metrics.faithfulness_correlation(
            model, x, attr, target=y, masks=masks, baseline=0.0
        ),
        r,
    )
    diff = float((ours - torch.tensor(qv, dtype=ours.dtype)).abs().max())
    report(
        "faithfulness corr. (quantus)",
        n,
        t_ours,
        t_peer,
        floor_time(model, x, n + n * runs, r),
        f"max|diff| {diff:.2e}",
    )

    # Sparseness and complexity vs quantus.
    for name, ours_fn, peer_cls in (
        ("sparseness (quantus)", metrics.sparseness, quantus.Sparseness),
        ("complexity (quantus)", metrics.complexity, quantus.Complexity),
    ):
        peer_metric = peer_cls(normalise=False, abs=True, disable_warnings=True)
        t_ours, ours = best_time(lambda fn=ours_fn: fn(attr), r)
        t_peer, qv = best_time(
            lambda m=peer_metric: m(
                model=model,
                x_batch=xn,
                channel_first=True,
                y_batch=yn,
                a_batch=an.copy(),
                batch_size=n,
            ),
            r,
        )
        diff = float((ours - torch.tensor(qv, dtype=ours.dtype)).abs().max())
        report(name, n, t_ours, t_peer, None, f"max|diff| {diff:.2e}")

    # Max-sensitivity: captum with shared perturbations, quantus with its own draws.
    samples, radius = 10, 0.2
    delta = (
        torch.rand(n, samples, *x.shape[1:], generator=torch.Generator().manual_seed(1)) * 2 - 1
    ) * radius
    sal = Saliency(model)
    t_ours, ours, t_peer, cv = best_pair(
        lambda: metrics.max_sensitivity(
            model, x, "saliency", target=y, perturbations=delta, explain_kwargs={"absolute": False}
        ),
        lambda: sensitivity_max(
            lambda inp, target: sal.attribute(inp, target=target, abs=False),
            x,
            perturb_func=lambda inp, rad: inp + delta.reshape(-1, *x.shape[1:]),
            n_perturb_samples=samples,
            target=y,
        ),
        r,
    )
    diff = float((ours - cv).abs().max())
    sens_floor = floor_time(model, x, n + n * samples, r, grad=True)
    report("max_sensitivity (captum)", n, t_ours, t_peer, sens_floor, f"max|diff| {diff:.2e}")

    def explain(model: Any, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> np.ndarray:
        t = torch.as_tensor(inputs, dtype=torch.float32)
        return saliency(
            model, t, target=torch.as_tensor(targets), absolute=False
        ).attributions.numpy()

    ms = quantus.MaxSensitivity(
        nr_samples=samples, lower_bound=radius, normalise=False, abs=False, disable_warnings=True
    )
    t_peer, qv = best_time(
        lambda: ms(
            model=model,
            x_batch=xn,
            channel_first=True,
            y_batch=yn,
            a_batch=an,
            explain_func=explain,
            batch_size=n,
        ),
        1,
        min_total=0.0,  # one run of the slow peer
    )
    t_ours, ours = best_time(
        lambda: metrics.max_sensitivity(
            model,
            x,
            "saliency",
            target=y,
            radius=radius,
            n_samples=samples,
            explain_kwargs={"absolute": False},
            generator=torch.Generator().manual_seed(2),
        ),
        r,
    )
    qm = float(np.nanmean(qv))
    report(
        "max_sensitivity (quantus)",
        n,
        t_ours,
        t_peer,
        sens_floor,
        f"means {float(ours.mean()):.3f} vs {qm:.3f} (own draws)",
    )

    # Infidelity vs captum with shared perturbations.
    pert = torch.randn(n, samples, *x.shape[1:], generator=torch.Generator().manual_seed(3)) * 0.1

    def perturb(inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = pert.reshape(-1, *x.shape[1:])
        return flat, inp - flat

    t_ours, ours, t_peer, cv = best_pair(
        lambda: metrics.infidelity(model, x, attr, target=y, perturbations=pert),
        lambda: captum_infidelity(model, perturb, x, attr, target=y, n_perturb_samples=samples),
        r,
    )
    diff = float(((ours - cv).abs() / cv.abs().clamp_min(1e-12)).max())
    report(
        "infidelity (captum)",
        n,
        t_ours,
        t_peer,
        floor_time(model, x, n + n * samples, r),
        f"max rel diff {diff:.2e}",
    )


if __name__ == "__main__":
    main()
