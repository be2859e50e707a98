"""KernelSHAP and LIME memory is bounded by ``batch_size`` and the players, not by ``n_samples``.

The coalitions (or Gaussian samples) are drawn, evaluated and added to the regression's
sufficient statistics block by block (``_kernel_design``, ``_linear_fit.StreamingFit``): no
samples x players design, no samples-long weights or values. Two checks: the fit never sees
more than one block of samples at a time (fast, structural), and the peak resident set of a
call does not grow from 20,000 to 40,000 samples (slow, measured in fresh processes; torch's
CPU tensors are invisible to tracemalloc).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import pellucid
from pellucid.attribution import _linear_fit
from pellucid.attribution._kernel_design import block_rows


@pytest.fixture
def blocks(monkeypatch):
    """The number of samples of every block the fit is given."""
    seen: list[int] = []
    add = _linear_fit.StreamingFit.add

    def spy(self, x, y, w, **kw):
        seen.append(x.shape[0])
        assert y.shape[1] == x.shape[0] == w.shape[0]
        return add(self, x, y, w, **kw)

    monkeypatch.setattr(_linear_fit.StreamingFit, "add", spy)
    return seen


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("kernel_shap", {}),
        ("lime", {}),
        ("lime", {"train_data": "normal"}),
    ],
)
def test_the_fit_sees_one_block_of_samples_at_a_time(blocks, method, kwargs):
    d, n_samples = 64, 20_000  # a whole design would be 20,000 x 64
    net = torch.nn.Linear(d, 2).double()
    x = torch.randn(2, d, dtype=torch.float64)
    if kwargs.get("train_data") == "normal":
        kwargs = {"train_data": torch.randn(30, d, dtype=torch.float64)}
    e = getattr(pellucid, method)(
        net, x, target=0, n_samples=n_samples, generator=torch.Generator().manual_seed(0), **kwargs
    )
    assert max(blocks) <= block_rows(d) + 16 < n_samples  # (+16: a tail of Gaussian draws)
    assert n_samples - 1 <= sum(blocks) <= n_samples  # (KernelSHAP: whole pairs)
    # a linear model: every block agrees, the fit is exact
    if method == "kernel_shap":
        torch.testing.assert_close(e.attributions, net.weight[0].detach() * x)


CHILD = r"""
import json, re, sys
import torch
import pellucid

def status(key):
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1))

method = sys.argv[1]
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.AvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(8 * 8, 10)
).eval()
x = torch.randn(1, 1, 32, 32)
rows = torch.arange(32) // 2
ids = (rows.view(-1, 1) * 16 + rows.view(1, -1)).view(1, 32, 32).contiguous()  # 256 players
fn = getattr(pellucid, method)
kw = dict(target=0, feature_mask=ids, batch_size=64)
fn(model, x, n_samples=300, generator=torch.Generator().manual_seed(0), **kw)  # warm-up
peaks = []
for n_samples in (20_000, 40_000):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak resident set starts again from the current one
    before = status("VmRSS")
    fn(model, x, n_samples=n_samples, generator=torch.Generator().manual_seed(0), **kw)
    peaks.append((status("VmHWM") - before) / 1024)
print(json.dumps({"peak_mb": peaks}))
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs"
)
@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_peak_memory_does_not_grow_with_n_samples(method):
    # a fixed mmap threshold: large blocks go back to the system when freed, so the peak
    # measures what the call holds at once, not glibc's heap fragmentation
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, method],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    at_20k, at_40k = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    # A whole 40,000 x 256 design is 41 MB as float32 masks and 82 MB per float64 copy (the
    # fit used three); blocks of 1,024 coalitions and the (256, 256) statistics need a few
    # MB, and 20,000 more samples add nothing.
    assert at_40k < 40, f"{method} held {at_40k:.0f} MB at 40,000 samples"
    assert at_40k < at_20k + 8, f"{method}: {at_20k:.0f} MB at 20,000, {at_40k:.0f} MB at 40,000"
