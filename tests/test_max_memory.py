"""``max_memory=``: a budget ("2GB") that picks ``batch_size`` (``_evaluate/_memory.py``).

The parser (decimal and binary units, clear errors before the model runs), the per-row
measurement (closed forms), the choice (within the budget, never more rows than the work,
the same result as any other batch size) on every method and metric that takes it, and,
measured in a fresh process, a peak under the budget where the default goes over it.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest
import torch

import pellucid
from pellucid import metrics
from pellucid._evaluate import RowCost, measure_peak, memory_batch_size, parse_memory


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (4096, 4096),
        ("2GB", 2 * 10**9),
        ("512MiB", 512 * 2**20),
        ("1.5 GB", 1_500_000_000),
        ("1.5gb", 1_500_000_000),
        (" 3 kB ", 3000),
        ("2 GiB", 2 * 2**30),
        ("0.5KiB", 512),
        (".5 MB", 500_000),
        ("100", 100),
        ("100 B", 100),
        ("1TB", 10**12),
        ("1 TiB", 2**40),
    ],
)
def test_parse_memory_reads_decimal_and_binary_units(value, expected):
    assert parse_memory(value) == expected


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (
            2.5,
            TypeError,
            r"`max_memory` must be a number of bytes \(int\) or a size such as "
            r"'2GB'.*got 2\.5 \(float\)",
        ),
        (True, TypeError, r"got True \(bool\)"),
        ([1], TypeError, r"`max_memory` must be"),
        ("2 gigs", ValueError, r"units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB\); got '2 gigs'"),
        ("GB", ValueError, r"got 'GB'"),
        ("-1GB", ValueError, r"got '-1GB'"),
        ("1e9", ValueError, r"got '1e9'"),
        ("2 G", ValueError, r"got '2 G'"),  # a bare G: decimal or binary? say which
        (0, ValueError, r"`max_memory` must be at least 1 byte; got 0\. Give a budget"),
        (-5, ValueError, r"at least 1 byte; got -5"),
        ("0.1 B", ValueError, r"at least 1 byte; got '0\.1 B'"),
    ],
)
def test_parse_memory_refuses_anything_else_with_the_fix(value, error, match):
    with pytest.raises(error, match=match):
        parse_memory(value)


class _Counting(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_memory": "2 gigs"}, ValueError, "`max_memory` must be"),
        ({"max_memory": 1.5}, TypeError, "`max_memory` must be"),
        (
            {"max_memory": "1GB", "batch_size": 8},
            ValueError,
            r"Pass either `batch_size` or `max_memory`, not both; got batch_size=8 and "
            r"max_memory='1GB'",
        ),
    ],
)
@pytest.mark.parametrize(
    "call",
    [
        lambda m, x, **kw: pellucid.integrated_gradients(m, x, target=0, **kw),
        lambda m, x, **kw: pellucid.kernel_shap(m, x, target=0, **kw),
        lambda m, x, **kw: metrics.deletion_curve(m, x, x, target=0, **kw),
        lambda m, x, **kw: metrics.infidelity(m, x, x, target=0, **kw),
        lambda m, x, **kw: metrics.sensitivities(m, x, "saliency", target=0, **kw),
    ],
)
def test_bad_budgets_are_refused_before_the_model_runs(call, kwargs, error, match):
    model = _Counting()
    with pytest.raises(error, match=match):
        call(model, torch.ones(2, 4), **kwargs)
    assert model.calls == 0


def test_measure_peak_counts_what_lives_at_once():
    x = torch.ones(1000)  # 4,000 bytes, made before: not counted
    _, peak = measure_peak(lambda: x * 2)
    assert peak == 4000
    _, peak = measure_peak(lambda: ((x * 2) * 3) * 4)  # two alive at each step
    assert peak == 8000
    _, peak = measure_peak(lambda: x.view(10, 100).relu_())  # a view, in place: nothing new
    assert peak == 0
    # a (1, 64) -> (1, 32) -> relu -> (1, 8) MLP on a row made inside (256 bytes): the row,
    # the first layer's output and relu's (128 bytes each) live together; the first output
    # is freed before the last layer's 32 bytes
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    with torch.inference_mode():
        _, peak = measure_peak(lambda: net(torch.ones(1, 64)))
    assert peak == 256 + 128 + 128


def test_memory_batch_size_closed_form_and_too_small_budgets():
    cost = RowCost(copies=5, fixed=4)
    # fixed: 4 x 1,000 bytes x 3 examples; per row: 5 x 1,000 + 2,000 bytes
    kw = {"row_bytes": 1000, "activations": 2000, "n_examples": 3, "method": "m"}
    assert memory_batch_size(12_000 + 70_000, cost, total=None, max_memory=0, **kw) == 10
    assert memory_batch_size(12_000 + 70_000, cost, total=4, max_memory=0, **kw) == 4
    with pytest.raises(
        ValueError,
        match=r"`max_memory` must hold m's 3 example\(s\) "
        r"\(12\.0 kB\) and one row of work \(7\.0 kB.*got max_memory='18kB'\. "
        r"Raise it to at least 19\.0 kB",
    ):
        memory_batch_size(18_000, cost, total=None, max_memory="18kB", **kw)


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    ).double()


def _image(n: int = 2) -> torch.Tensor:
    return torch.randn(
        n, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )


_GEN = {"generator": None}
METHODS = {
    "integrated_gradients": {"n_steps": 40},
    "expected_gradients": {"n_samples": 16, "background": "zeros", **_GEN},
    "smoothgrad": {"n_samples": 8, **_GEN},
    "saliency": {},
    "occlusion": {"window": (3, 4, 4), "stride": (3, 2, 2)},
    "feature_ablation": {"feature_mask": "grid"},
    "kernel_shap": {"n_samples": 64, "feature_mask": "grid", **_GEN},
    "lime": {"n_samples": 64, "feature_mask": "grid", **_GEN},
    "sampling_shapley": {"n_samples": 4, "feature_mask": "grid", **_GEN},
    "grad_cam": {"layer": "2"},  # the budget counts the activations after the layer
    "deeplift": {},
    "lrp": {},
    "guided_grad_cam": {"layer": "2"},
}


def _explain(name, x, **extra):
    kwargs = dict(METHODS[name])
    if "generator" in kwargs:
        kwargs["generator"] = torch.Generator().manual_seed(3)
    if kwargs.get("background") == "zeros":
        kwargs["background"] = torch.zeros(2, *x.shape[1:], dtype=x.dtype)
    return getattr(pellucid, name)(_cnn(), x, target=1, **kwargs, **extra)


@pytest.mark.parametrize("name", list(METHODS))
def test_max_memory_picks_a_batch_size_that_gives_the_same_result(name):
    x = _image()
    row = x[0].numel() * x.element_size()  # 6 kB
    # SmoothGrad holds all its noisy rows for the whole call: 4 x 16 rows more
    small_budget = (80 if name == "smoothgrad" else 40) * row
    small = _explain(name, x, max_memory=small_budget)
    large = _explain(name, x, max_memory="1GB")
    b_small, b_large = small.params["batch_size"], large.params["batch_size"]
    assert small.params["max_memory"] == small_budget and large.params["max_memory"] == "1GB"
    work = {"integrated_gradients": 40, "expected_gradients": 16, "smoothgrad": 8, "saliency": 1}
    if name in work:  # never more rows than the work needs
        assert b_large == x.shape[0] * work[name]
        assert 1 <= b_small <= b_large
    else:  # the budget bounds the rows per chunk
        assert 1 <= b_small < 40 <= b_large
    # the same draws and the same result whatever batch size the budget picked (float64:
    # only the rounding of differently sized batched kernels differs)
    default = _explain(name, x)
    for e in (small, large):
        torch.testing.assert_close(e.attributions, default.attributions, rtol=1e-10, atol=1e-12)
    assert default.params["batch_size"] is None and "max_memory" not in default.params


@pytest.mark.parametrize(
    "metric",
    [
        lambda m, x, a, **kw: metrics.deletion_curve(m, x, a, target=1, step=32, **kw).scores,
        lambda m, x, a, **kw: metrics.insertion_curve(m, x, a, target=1, step=32, **kw).scores,
        lambda m, x, a, **kw: metrics.faithfulness_correlation(
            m, x, a, target=1, n_samples=20, generator=torch.Generator().manual_seed(0), **kw
        ),
        lambda m, x, a, **kw: metrics.infidelity(
            m, x, a, target=1, n_samples=20, generator=torch.Generator().manual_seed(0), **kw
        ),
        lambda m, x, a, **kw: metrics.sensitivities(
            m,
            x,
            "saliency",
            target=1,
            n_samples=6,
            generator=torch.Generator().manual_seed(0),
            **kw,
        ),
    ],
)
def test_metrics_take_max_memory_and_give_the_same_values(metric):
    x, model = _image(), _cnn()
    a = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(2))
    default = metric(model, x, a)
    row = x[0].numel() * x.element_size()
    for kw in ({"max_memory": 60 * row}, {"max_memory": "1GB"}, {"batch_size": 3}):
        # infidelity's Gaussian perturbations are drawn row by row (Box-Muller from uniform
        # draws): any chunk size gives the same draws
        torch.testing.assert_close(metric(model, x, a, **kw), default, rtol=1e-10, atol=1e-12)


def test_a_budget_too_small_for_one_row_says_how_much_is_needed():
    with pytest.raises(
        ValueError,
        match=r"`max_memory` must hold integrated_gradients's 2 "
        r"example\(s\) .* Raise it to at least",
    ):
        _explain("integrated_gradients", _image(), max_memory="100kB")


CHILD = r"""
import json, re, sys
import torch
import pellucid

def status(key):
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1))

torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Conv2d(3, 8, 5, stride=4, padding=2), torch.nn.ReLU(),
    torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
).eval()
x = torch.randn(1, 3, 224, 224)
budget = sys.argv[1]
kw = dict(target=0, feature_mask="grid", n_segments=64, n_samples=256)
peaks, picked = [], []
for sizing in ({}, {"max_memory": budget}):
    run = lambda: pellucid.kernel_shap(model, x, generator=torch.Generator().manual_seed(0),
                                       **kw, **sizing)
    run()  # warm-up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak resident set starts again from the current one
    before = status("VmRSS")
    e = run()
    peaks.append((status("VmHWM") - before) * 1024)
    picked.append(e.params["batch_size"])
print(json.dumps({"peaks": peaks, "picked": picked}))
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs"
)
def test_max_memory_keeps_the_peak_under_the_budget_where_the_default_exceeds_it():
    # one thread, and a fixed mmap threshold: large blocks go back to the system when freed,
    # so the peak measures what the call holds at once, not glibc's heap reuse
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072")
    budget = "48MB"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, budget], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    (default, limited), picked = result["peaks"], result["picked"]
    # KernelSHAP on one 3x224x224 image (602 kB a row): the CPU default evaluates 64 rows
    # per chunk (each row, its mask, a temporary and the activations: ~2.7 MB a row); 48 MB
    # leaves room for about 14 such rows.
    assert picked[0] is None and 1 <= picked[1] < 64
    assert limited < parse_memory(budget), f"{limited / 1e6:.0f} MB over a {budget} budget"
    assert default > parse_memory(budget), f"the default held only {default / 1e6:.0f} MB"


@pytest.mark.parametrize(
    "name",
    [
        m
        for m in pellucid.list_methods()
        if "max_memory" in inspect.signature(pellucid.get_method(m).fn).parameters
    ],
)
def test_every_method_with_max_memory_checks_it_before_the_model_runs(name):
    model = _Counting()
    call = pellucid.get_method(name).fn
    with pytest.raises(ValueError, match=r"`max_memory` must be .*; got '2 gigs'"):
        call(model, torch.ones(2, 4), target=0, max_memory="2 gigs")
    with pytest.raises(ValueError, match="Pass either `batch_size` or `max_memory`, not both"):
        call(model, torch.ones(2, 4), target=0, max_memory="1GB", batch_size=4)
    assert model.calls == 0
