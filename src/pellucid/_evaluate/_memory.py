"""``max_memory=``: a memory budget (bytes, or a size such as ``"2GB"``) turned into a
``batch_size``, in one place.

A call's peak memory is what it holds for the whole call (the examples, their references
and results: ``fixed`` row-sized buffers per example) plus, per row of a chunk, the method's
own row-sized buffers (``copies``: the perturbed row, its mask, the reference it mixes in,
the input gradient...) and the model's activations on that row. The activations are
*measured* once per call, on one row, by :func:`measure_peak`: a forward (and, for gradient
methods, a backward) under a torch function mode that adds up the bytes of every tensor the
model's operations create and subtracts them when their storage is freed; its peak is the
most the row held at once, on any device. Where the probe cannot run, the row's activations are
estimated at :data:`ESTIMATE_FACTOR` times its input (forward only) or
``GRAD_BUDGET_FACTOR`` times (with a backward). ``batch_size`` is then the number of rows
that fit what the budget leaves after the fixed part, capped at the work's rows.

Example:
    >>> parse_memory("1.5 GB"), parse_memory("512MiB"), parse_memory(4096)
    (1500000000, 536870912, 4096)
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from pellucid._evaluate._call import Evaluates
from pellucid._evaluate._gradients import GRAD_BUDGET_FACTOR
from pellucid._targets import ResolvedTarget
from pellucid._validation import describe_value

__all__ = [
    "DEFAULT_COST",
    "ESTIMATE_FACTOR",
    "ROW_COSTS",
    "RowCost",
    "check_memory_options",
    "format_bytes",
    "measure_peak",
    "memory_batch_size",
    "parse_memory",
    "pick_batch_size",
    "probe_peak",
    "row_activations",
]

#: Activations of one row assumed, in multiples of its input, when the probe cannot run.
ESTIMATE_FACTOR = 4

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_HOW = (
    "a number of bytes (int) or a size such as '2GB', '512MiB' or '1.5 GB' "
    "(units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
)


def parse_memory(value: Any, name: str = "max_memory") -> int:
    """A memory size in bytes: ``value`` is an int of bytes or a string with a decimal
    (``kB``, ``MB``, ``GB``, ``TB``) or binary (``KiB``, ``MiB``, ``GiB``, ``TiB``) unit.

    Raises:
        TypeError: `value` is neither an int nor a string (a bool or a float included).
        ValueError: a string that is not a size, or a size below one byte.

    Example:
        >>> parse_memory("2GB"), parse_memory("2 gib")
        (2000000000, 2147483648)
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"`{name}` must be {_HOW}; got {describe_value(value)}.")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"`{name}` must be {_HOW}; got {value!r}.")
        size = math.floor(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError(
            f"`{name}` must be at least 1 byte; got {value!r}. Give a budget such as '2GB'."
        )
    return size


def check_memory_options(batch_size: Any, max_memory: Any) -> int | None:
    """The budget in bytes, or None without one (``batch_size`` is then checked where used).

    Raises:
        TypeError: `max_memory` has the wrong type.
        ValueError: both are given, or `max_memory` is not a size of at least one byte.
    """
    if max_memory is None:
        return None
    if batch_size is not None:
        raise ValueError(
            f"Pass either `batch_size` or `max_memory`, not both; got batch_size={batch_size!r} "
            f"and max_memory={max_memory!r}. `max_memory` picks the batch size itself: drop "
            "one of them."
        )
    return parse_memory(max_memory)


def format_bytes(size: float) -> str:
    """``size`` in bytes for a message: ``'1.5 MB'``."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


@dataclass(frozen=True)
class RowCost:
    """What one method holds, in row-sized buffers (a row = one example's input).

    Attributes:
        copies: buffers per row of a chunk beside the model's activations (the rows
            themselves, masks, the reference mixed in, gradients, products).
        fixed: buffers per example for the whole call (inputs, references, attributions,
            accumulators), held whatever the batch size.
        grad: whether a chunk runs a backward too (the probe then measures one).
        fixed_per_work: buffers per row of the whole work held for the whole call (a method
            that materializes all its rows before chunking them).
        fixed_per_example_work: buffers per row of one example's work, held whatever the
            batch size (a method that draws an example's rows together, then chunks them).
    """

    copies: float
    fixed: float = 4.0
    grad: bool = False
    fixed_per_work: float = 0.0
    fixed_per_example_work: float = 0.0


#: Per method: the rows it builds per chunk and what it keeps. Perturbation methods mix a
#: row from the input, a reference and a float mask (two fused multiply-adds: the row and one
#: temporary), gather the example's input and reference when the players differ per example;
#: gradient methods build the row (integrated gradients: the gathered input and reference,
#: their difference and product), its gradient and the weighted product; on a CPU a
#: convolutional model also sees a channels-last copy of the row and of its gradient
#: (``_kernels``). Calibrated on ``benchmarks/bench_memory.py --max-memory``: every
#: measured peak stays below the budget.
ROW_COSTS: dict[str, RowCost] = {
    "saliency": RowCost(copies=5, grad=True),
    "input_x_gradient": RowCost(copies=5, grad=True),
    "guided_backprop": RowCost(copies=5, grad=True),
    "deconvolution": RowCost(copies=5, grad=True),
    "integrated_gradients": RowCost(copies=7, fixed=6, grad=True),
    "expected_gradients": RowCost(copies=7, fixed=6, grad=True),
    # per chunk: the noise, the noisy rows, their gradients and per-sample results; whole
    # examples at a time, so one example's copies at least
    "smoothgrad": RowCost(copies=9, grad=True, fixed_per_example_work=4),
    "occlusion": RowCost(copies=6),
    "feature_ablation": RowCost(copies=6),
    "exact_shapley": RowCost(copies=5),
    "sampling_shapley": RowCost(copies=5),
    "kernel_shap": RowCost(copies=5),
    "lime": RowCost(copies=5),
    # the metrics: the perturbed row, its mask or noise, the gathered input and fill
    "metric": RowCost(copies=6),
    # infidelity: two uniforms per value for the Box-Muller noise, the noise, the row
    "infidelity": RowCost(copies=7),
    # the sensitivity metric: the noise, the perturbed row, its explanation and difference
    # (the explanation's own activations are measured with it)
    "sensitivities": RowCost(copies=6),
}

#: On a CUDA device the measured activations count this many times: the function mode sees
#: the tensors a model creates but not the workspaces cuDNN takes inside a convolution, which
#: grow with the batch (on an H200, occlusion and KernelSHAP on a two-convolution network
#: peaked at about twice the measured activations per row; ``tests/test_cuda.py``).
CUDA_ACTIVATION_FACTOR = 2.5

#: The cost of a method without an entry: a backward and the rows of a gradient method.
DEFAULT_COST = RowCost(copies=7, fixed=6, grad=True)


class _LiveBytes(TorchFunctionMode):
    """Bytes of the storages that torch functions create under the mode and that are still
    alive, their peak, and the largest single one.

    A function mode sees every torch function and tensor method called from Python (a
    model's layers call them), not the buffers one operation uses inside itself; it is light
    (a dispatch mode would import the compiler stack: about a second and 70 MB on first use).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = self.largest = 0
        self._keys: set[tuple[Any, int]] = set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        given = {
            _key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }  # views and in-place results alias an argument: not new memory
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            key = _key(t)
            storage = t.untyped_storage()
            nbytes = storage.nbytes()
            if key in given or key in self._keys or nbytes == 0:
                continue
            self._keys.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            self.largest = max(self.largest, nbytes)
            weakref.finalize(storage, self._free, key, nbytes)
        return out

    def _free(self, key: tuple[Any, int], nbytes: int) -> None:
        self._keys.discard(key)
        self.live -= nbytes


def _key(t: torch.Tensor) -> tuple[Any, int]:
    return (t.device, t.untyped_storage().data_ptr())


def measure_peak(fn: Callable[[], Any], *, backward: bool = False) -> tuple[Any, int]:
    """``fn()`` and the most bytes the tensors it created held at once (any device).

    With ``backward``, ``fn`` runs a forward that records a graph and returns its output;
    the peak of the backward that would follow is estimated, not run: what the forward
    holds at its end (the graph kept for the backward) or at its peak, plus twice the
    largest tensor it created (a gradient being computed from the one before it).

    Example:
        >>> import torch
        >>> x = torch.ones(1000)
        >>> _, peak = measure_peak(lambda: (x * 2 + 1).sum())
        >>> peak  # x * 2 and x * 2 + 1 live together (4,000 bytes each); the sum is smaller
        8000
    """
    mode = _LiveBytes()
    with mode:
        out = fn()
    return out, mode.peak + (2 * mode.largest if backward else 0)


def memory_batch_size(
    budget: int,
    cost: RowCost,
    *,
    row_bytes: int,
    activations: int,
    n_examples: int,
    total: int | None,
    method: str,
    max_memory: Any,
    extra_fixed: int = 0,
) -> int:
    """Rows per chunk that keep the call within ``budget`` bytes (at most ``total``).

    ``row_bytes`` is one example's input size, ``activations`` the model's measured peak on
    one row, ``extra_fixed`` bytes the call holds besides its cost's ``fixed`` buffers.

    Raises:
        ValueError: the budget does not hold the call's fixed part and one row.

    Example:
        >>> memory_batch_size(10**6, RowCost(copies=2, fixed=0), row_bytes=1000,
        ...                   activations=3000, n_examples=1, total=None, method="m",
        ...                   max_memory="1MB")
        200
    """
    fixed = math.ceil(cost.fixed * row_bytes * n_examples) + extra_fixed
    if total is not None:
        fixed += math.ceil(cost.fixed_per_work * row_bytes * total)
        per_example = total // max(1, n_examples)
        fixed += math.ceil(cost.fixed_per_example_work * row_bytes * per_example)
    per_row = math.ceil(cost.copies * row_bytes) + activations
    rows = (budget - fixed) // max(1, per_row)
    if rows < 1:
        raise ValueError(
            f"`max_memory` must hold {method}'s {n_examples} example(s) ({format_bytes(fixed)}) "
            f"and one row of work ({format_bytes(per_row)}: the row and the model's "
            f"activations); got max_memory={max_memory!r}. Raise it to at least "
            f"{format_bytes(fixed + per_row)}, or explain fewer examples per call."
        )
    return int(min(rows, total)) if total is not None else int(rows)


def row_activations(
    forward: Evaluates, target: ResolvedTarget, inputs: torch.Tensor, *, grad: bool
) -> int:
    """The model's peak bytes on one row of ``inputs``: a forward under inference mode, or,
    with ``grad``, a forward that keeps its graph and the backward estimated from it.

    Where the probe fails (a model that cannot run one row alone, an operation the function
    mode cannot see through), the estimate: :data:`ESTIMATE_FACTOR` (forward) or
    ``GRAD_BUDGET_FACTOR`` (backward) times the row's bytes. The call's own evaluation then
    reports any real error of the model.
    """
    row = inputs[:1].detach()
    index = torch.zeros(1, dtype=torch.long, device=row.device)

    def probe() -> Any:
        if grad:  # the forward with its graph; the backward is estimated from it
            with torch.enable_grad():
                return target.scores(forward(row.requires_grad_(True), index), index)
        with torch.inference_mode():
            return forward(row, index)

    factor = GRAD_BUDGET_FACTOR if grad else ESTIMATE_FACTOR
    peak = probe_peak(probe, factor * row.numel() * row.element_size(), backward=grad)
    return math.ceil(peak * CUDA_ACTIVATION_FACTOR) if row.device.type == "cuda" else peak


def probe_peak(fn: Callable[[], Any], estimate: int, *, backward: bool = False) -> int:
    """:func:`measure_peak` of ``fn()``, or ``estimate`` where the probe fails: the call's
    own evaluation then reports any real error."""
    try:
        _, peak = measure_peak(fn, backward=backward)
    except Exception:  # sizing only: the real evaluation raises its own error
        return estimate
    return peak


def pick_batch_size(
    max_memory: Any,
    method: str,
    forward: Evaluates,
    target: ResolvedTarget,
    inputs: torch.Tensor,
    *,
    total: int | None = None,
    cost: RowCost | None = None,
) -> int:
    """``batch_size`` for ``method`` within ``max_memory`` (parsed again: the budget as given),
    from its :data:`ROW_COSTS` entry (``cost``, else :data:`DEFAULT_COST`) and one measured
    row of ``inputs``.

    Raises:
        ValueError: the budget does not hold the call's fixed part and one row.
    """
    cost = cost or ROW_COSTS.get(method, DEFAULT_COST)
    row_bytes = inputs[:1].numel() * inputs.element_size()
    activations = row_activations(forward, target, inputs, grad=cost.grad)
    return memory_batch_size(
        parse_memory(max_memory),
        cost,
        row_bytes=row_bytes,
        activations=activations,
        n_examples=inputs.shape[0],
        total=total,
        method=method,
        max_memory=max_memory,
    )
