"""KernelSHAP, LIME and sampling Shapley memory is bounded by ``batch_size`` and the players,
not by ``n_samples``.

The coalitions (or Gaussian samples) are drawn, evaluated and added to the regression's
sufficient statistics block by block (``_kernel_design``, ``_linear_fit.StreamingFit``): no
samples x players design, no samples-long weights or values. Sampling Shapley draws its
permutations in blocks whose prefix coalitions fill ``batch_size`` rows and folds each block
into running sums. Two checks each: the fit (or the value function) never sees more than one
block of samples at a time (fast, structural), and the peak resident set of a call does not
grow when the samples double (slow, measured in fresh processes; torch's CPU tensors are
invisible to tracemalloc).
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


def test_sampling_shapley_evaluates_one_block_of_permutations_at_a_time(monkeypatch):
    from pellucid.attribution._coalitions import CoalitionValues

    seen: list[int] = []
    call = CoalitionValues.__call__

    def spy(self, z):
        seen.append(z.shape[0])
        return call(self, z)

    monkeypatch.setattr(CoalitionValues, "__call__", spy)
    n, p, n_samples = 3, 8, 200
    net = torch.nn.Sequential(torch.nn.Linear(p, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    net = net.double()
    x = torch.randn(n, p, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def run(**kw):
        gen = torch.Generator().manual_seed(1)
        return pellucid.sampling_shapley(net, x, target=0, n_samples=n_samples, generator=gen, **kw)

    whole = run()
    assert seen == [n_samples * (p - 1) + 1]  # small work: one block (and v(empty))
    seen.clear()
    blocked = run(batch_size=4 * n * 2 * (p - 1))  # four pairs of orders per block
    # every block: 4 antithetic pairs' prefixes (+ v(empty) with the first), 25 blocks
    assert seen == [8 * (p - 1) + 1] + [8 * (p - 1)] * 24
    # the same permutations, summed in another order: float64 rounding only
    torch.testing.assert_close(blocked.attributions, whole.attributions, rtol=0, atol=1e-14)
    torch.testing.assert_close(
        blocked.extras["stderr"], whole.extras["stderr"], rtol=1e-12, atol=1e-15
    )
    assert blocked.extras["n_evaluations"] == whole.extras["n_evaluations"]


CHILD = r"""
import json, re, sys
import torch
import pellucid

def status(key):
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1))

method, small, large = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.AvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(8 * 8, 10)
).eval()
x = torch.randn(1, 1, 32, 32)
rows = torch.arange(32) // 2
ids = (rows.view(-1, 1) * 16 + rows.view(1, -1)).view(1, 32, 32).contiguous()  # 256 players
fn = getattr(pellucid, method)
kw = dict(target=0, feature_mask=ids, batch_size=64)
fn(model, x, n_samples=min(small, 300), generator=torch.Generator().manual_seed(0), **kw)  # warm-up
peaks = []
for n_samples in (small, large):
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
@pytest.mark.parametrize(
    ("method", "samples"),
    [
        ("kernel_shap", (20_000, 40_000)),
        ("lime", (20_000, 40_000)),
        # 400 orders of 256 players: 102,000 prefix rows (the old all-at-once code held 71 MB)
        ("sampling_shapley", (200, 400)),
    ],
)
def test_peak_memory_does_not_grow_with_n_samples(method, samples):
    # a fixed mmap threshold: large blocks go back to the system when freed, so the peak
    # measures what the call holds at once, not glibc's heap fragmentation
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, method, *map(str, samples)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    at_20k, at_40k = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    if method == "sampling_shapley":
        # All 400 orders' prefixes at once were 102,000 x 256 coalitions (26 MB as bools)
        # and their masks (32 MB at 200 orders, 71 MB at 400, measured); one pair of orders
        # per block of 64 rows needs a few MB, the same for both budgets.
        assert at_40k < 16, f"{method} held {at_40k:.0f} MB at {samples[1]} permutations"
        assert at_40k < at_20k + 4, f"{method}: {at_20k:.0f} MB, then {at_40k:.0f} MB"
        return
    # A whole 40,000 x 256 design is 41 MB as float32 masks and 82 MB per float64 copy (the
    # fit used three); blocks of 1,024 coalitions and the (256, 256) statistics need a few
    # MB, and 20,000 more samples add nothing.
    assert at_40k < 40, f"{method} held {at_40k:.0f} MB at 40,000 samples"
    assert at_40k < at_20k + 8, f"{method}: {at_20k:.0f} MB at 20,000, {at_40k:.0f} MB at 40,000"
