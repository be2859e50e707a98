"""KernelSHAP and LIME peak memory on issue 17's case: bounded by ``batch_size``, not ``n_samples``.

Each case runs in a fresh subprocess: after a warm-up call, the kernel's record of the peak
resident set (``VmHWM``) is reset (``/proc/self/clear_refs``), the measured call runs, and
its peak minus the resident set it started from is printed: what the call held at its
worst moment (torch's CPU tensors are not visible to ``tracemalloc``, so RSS is the honest
measure). Linux only.

Case: one 3x64x64 image, 256 players (4x4 superpixels shared by the channels), a small
pooling + linear model; KernelSHAP and LIME with 10,000, 20,000 and 40,000 coalitions at
several ``batch_size`` values (and the automatic one). The last column is the growth from
10,000 to 40,000 coalitions: the coalitions are drawn, evaluated and added to the fit's
sufficient statistics block by block, so it stays flat (within the noise of a few MB).

What a call holds (float32 inputs of D values, N examples, P players, B rows per forward:
``batch_size`` or the automatic chunk, C = ``block_rows(P)`` = max(64, 2**18 / P) samples per
block), none of it proportional to ``n_samples``:

- the rows being evaluated: about 3 x B x D x 4 bytes (mask, reference part, mixed rows)
  plus the model's activations for B rows;
- one block of samples: about 28 x C x P bytes (float mask, float64 design, its weighted
  copy), under 8 MB, and a few N x C float64 scores and residuals;
- the fit's statistics: 2 x (P, P) float64 (Gram matrix, inverse) and a few (N, P);
- KernelSHAP only, once per ``(P, budget)`` and cached: a design of at most 8,192 sampled
  pairs (P <= 256) is balanced whole (two float64 copies of it at its peak: 52 MB of
  peak RSS measured for 7,744 pairs x 256 players; the 10,000-sample column below holds
  4,900 pairs and pays it on its first call), and a design of at most 2**20 coalition entries is kept whole with its
  factorization (about 24 bytes per entry).

Measured (this script, 2-core shared machine, MB of peak RSS above the call's start):

    method       batch_size         10,000         20,000         40,000     growth
    kernel_shap        auto        25.9 MB        18.0 MB        18.1 MB    -7.9 MB
    kernel_shap          16        26.1 MB        14.4 MB        14.4 MB   -11.7 MB
    kernel_shap          64        24.8 MB        18.0 MB        18.0 MB    -6.8 MB
    kernel_shap         256        50.5 MB        45.1 MB        45.0 MB    -5.5 MB
    kernel_shap        1024       160.2 MB       153.7 MB       153.8 MB    -6.3 MB
    lime               auto        10.7 MB        10.7 MB        11.4 MB    +0.7 MB
    lime                 16         9.7 MB         9.7 MB         9.7 MB    +0.0 MB
    lime                 64        11.3 MB        10.7 MB        11.4 MB    +0.1 MB
    lime                256        37.7 MB        37.7 MB        37.7 MB    +0.0 MB
    lime               1024       146.5 MB       146.5 MB       146.5 MB    +0.0 MB

(Before: the whole samples x players design was kept for the fit: 146 MB at 20,000 and
290 MB at 40,000 samples for KernelSHAP at ``batch_size=64`` on tests/test_memory_bounds.py's
smaller case.)

Run: ``PYTHONPATH=src python benchmarks/bench_coalition_memory.py [--quick]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, re, sys
import torch
import pellucid

def status(key):
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1))

method, n_samples, batch_size = sys.argv[1], int(sys.argv[2]), sys.argv[3]
batch_size = None if batch_size == "auto" else int(batch_size)
torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(
    torch.nn.AvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)
).eval()
x = torch.randn(1, 3, 64, 64)
rows = torch.arange(64) // 4
ids = (rows.view(-1, 1) * 16 + rows.view(1, -1)).expand(3, 64, 64).contiguous()  # 256 players
fn = getattr(pellucid, method)
kw = dict(target=0, feature_mask=ids, batch_size=batch_size)
fn(model, x, n_samples=300, generator=torch.Generator().manual_seed(0), **kw)  # warm-up
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident set starts again from the current one
before = status("VmRSS")
fn(model, x, n_samples=n_samples, generator=torch.Generator().manual_seed(0), **kw)
print(json.dumps({"peak_mb": (status("VmHWM") - before) / 1024}))
"""


def peak_mb(method: str, n_samples: int, batch_size: str) -> float:
    """Peak RSS (MB) of one call above the RSS it started from, in a fresh process."""
    # a fixed mmap threshold: large blocks go back to the system when freed, so the peak
    # measures what the call holds at once, not glibc's heap fragmentation (whose dynamic
    # threshold otherwise makes the same run vary between 30 and 220 MB)
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, method, str(n_samples), batch_size],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases")
    args = parser.parse_args()
    samples = [10_000, 40_000] if args.quick else [10_000, 20_000, 40_000]
    batches = ["auto", "64"] if args.quick else ["auto", "16", "64", "256", "1024"]
    head = " ".join(f"{s:>14,}" for s in samples)
    print(f"{'method':<12} {'batch_size':>10} {head} {'growth':>10}", flush=True)
    for method in ("kernel_shap", "lime"):
        for b in batches:
            peaks = [peak_mb(method, s, b) for s in samples]
            cells = " ".join(f"{p:>11.1f} MB" for p in peaks)
            print(f"{method:<12} {b:>10} {cells} {peaks[-1] - peaks[0]:>+7.1f} MB", flush=True)


if __name__ == "__main__":
    main()
