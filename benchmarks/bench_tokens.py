"""Benchmark: perturbation methods on token ids (``mask_token=``), pellucid vs captum.

A small text classifier (embedding 5000 x 64, one transformer encoder layer, mean pooling,
linear head) explains 16 sequences of 32 token ids; a removed token becomes id 0. For each
method it prints the time per example of pellucid and captum (same ids, same baseline id,
same number of perturbations), captum's time over pellucid's (speed-up), and pellucid's time
over the compute floor (the rows it evaluated, ``extras["n_evaluations"]`` where
reported, through one batched forward). The ids
travel through pellucid's engines as float64 and are cast back to int64 before every
forward, so the floor ratio also measures that cast. The machine is shared: read the ratios.

    PYTHONPATH=src python benchmarks/bench_tokens.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from bench_perturbation_attribution import best_time, floor_time
from torch import nn

import pellucid

warnings.filterwarnings("ignore")

VOCAB, LENGTH, N = 5000, 32, 16


class TextClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 64)
        self.encoder = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.head = nn.Linear(64, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.emb(ids)).mean(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from captum.attr import FeatureAblation, KernelShap, Lime, Occlusion

    torch.manual_seed(0)
    model = TextClassifier().eval()
    ids = torch.randint(1, VOCAB, (N, LENGTH))
    words = torch.arange(LENGTH) // 2  # two word pieces per word: 16 players
    cases = {
        "occlusion (window 1)": (
            LENGTH,
            lambda: pellucid.occlusion(model, ids, target=1, mask_token=0),
            lambda: Occlusion(model).attribute(
                ids, sliding_window_shapes=(1,), baselines=0, target=1, perturbations_per_eval=64
            ),
        ),
        "feature_ablation (words)": (
            LENGTH // 2,
            lambda: pellucid.feature_ablation(
                model, ids, target=1, feature_mask=words, mask_token=0
            ),
            lambda: FeatureAblation(model).attribute(
                ids,
                target=1,
                feature_mask=words.unsqueeze(0),
                baselines=0,
                perturbations_per_eval=64,
            ),
        ),  # fmt: skip
        "kernel_shap (words, 256)": (
            256,
            lambda: pellucid.kernel_shap(
                model,
                ids,
                target=1,
                feature_mask=words,
                mask_token=0,
                n_samples=256,
                generator=torch.Generator().manual_seed(0),
            ),
            lambda: KernelShap(model).attribute(
                ids,
                target=1,
                feature_mask=words.unsqueeze(0),
                baselines=0,
                n_samples=256,
                perturbations_per_eval=256,
            ),
        ),  # fmt: skip
        "lime (words, 256)": (
            256,
            lambda: pellucid.lime(
                model,
                ids,
                target=1,
                feature_mask=words,
                mask_token=0,
                n_samples=256,
                generator=torch.Generator().manual_seed(0),
            ),
            lambda: Lime(model).attribute(
                ids,
                target=1,
                feature_mask=words.unsqueeze(0),
                baselines=0,
                n_samples=256,
                perturbations_per_eval=256,
            ),
        ),  # fmt: skip
    }
    print(f"{N} sequences of {LENGTH} token ids, threads={args.threads}")
    print(f"{'method':28s} {'pellucid ms/ex':>15s} {'captum ms/ex':>13s} {'speed-up':>9s} "
          f"{'vs floor':>9s}")  # fmt: skip
    for name, (rows, ours, theirs) in cases.items():
        evaluated = ours().extras.get("n_evaluations", rows * N)  # the rows pellucid ran
        t_ours = best_time(ours, args.repeats) / N
        t_theirs = best_time(theirs, 1, min_seconds=0.0) / N
        t_floor = floor_time(model, ids, int(evaluated), args.repeats) / N
        print(f"{name:28s} {1e3 * t_ours:15.2f} {1e3 * t_theirs:13.2f} "
              f"{t_theirs / t_ours:8.1f}x {t_ours / t_floor:8.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
