"""Honest measurement: parameters, non-zeros, MACs, file size and measured CPU latency.

Speed-ups are ratios of *measured* latencies (warm-up, then the median of repeats at a
given batch size), never ratios of MACs.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(4, 2)
    >>> count_parameters(net), macs(net, torch.zeros(1, 4))
    (10, 8)
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from pellucid._deprecation import renamed
from pellucid._state import model_guard
from pellucid._validation import check_int
from pellucid.pruning.importance import effective_weight

__all__ = [
    "Latency",
    "compare",
    "count_nonzeros",
    "count_parameters",
    "latency",
    "macs",
    "serialized_size",
]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters as the forward pass sees them (a pruned weight counts once).

    Example:
        >>> count_parameters(torch.nn.Conv2d(1, 2, 3))
        20
    """
    return sum(p.numel() for p in model.parameters())  # weight_orig stands in for weight


def count_nonzeros(model: nn.Module) -> int:
    """Number of non-zero parameter entries, masks applied.

    Example:
        >>> net = torch.nn.Linear(2, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(net.weight)
        >>> count_nonzeros(net)
        0
    """
    total = 0
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                value: torch.Tensor = param
                if name.endswith("_orig") and hasattr(module, name[: -len("_orig")] + "_mask"):
                    value = effective_weight(module, name[: -len("_orig")])
                total += int((value != 0).sum())
    return total


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def macs(model: nn.Module, example_inputs: Any, *, per_example: bool = True) -> int:
    """Multiply-accumulates of Linear and convolution layers in one traced forward pass.

    Counted from the shapes each layer sees on ``example_inputs`` (dense arithmetic: a
    masked zero still costs a MAC, which is why masks do not make a model faster).

    Args:
        model: the network.
        example_inputs: a batch (tensor or tuple of tensors).
        per_example: divide by the batch size.

    Example:
        >>> macs(torch.nn.Conv2d(1, 2, 3, padding=1), torch.zeros(1, 1, 4, 4))
        288
    """
    total = 0

    def hook(module: Any, args: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += out.numel() * module.in_features
        else:
            kernel = 1
            for k in module.kernel_size:
                kernel *= k
            total += out.numel() * (module.in_channels // module.groups) * kernel

    inputs = _as_tuple(example_inputs)
    with model_guard(model, eval_mode=True, allow_meta=True), torch.inference_mode():
        handles = [
            m.register_forward_hook(hook)
            for m in model.modules()
            if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
        ]
        try:
            model(*inputs)
        finally:
            for h in handles:
                h.remove()
    batch = inputs[0].shape[0] if per_example and inputs and inputs[0].ndim else 1
    return total // max(batch, 1)


def serialized_size(model: nn.Module, *, sparse: bool | None = None) -> int:
    """Bytes of the file :func:`pellucid.pruning.io.save` writes for ``model``.

    Example:
        >>> serialized_size(torch.nn.Linear(100, 100)) > 40_000
        True
    """
    from pellucid.pruning.io import to_bytes

    return len(to_bytes(model, sparse=sparse))


@dataclass
class Latency:
    """Measured wall-clock time of one forward pass of ``batch_size`` rows.

    Attributes:
        median, q1, q3: seconds (median and quartiles over ``repeats``).
        batch_size, repeats, warmup, threads: how it was measured.
        device: where the model ran (``"cpu"``, ``"cuda:0"``).
    """

    median: float
    q1: float
    q3: float
    batch_size: int
    repeats: int
    warmup: int
    threads: int
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


@renamed(repeats="n_repeats")
def latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    batch_size: int = 32,
    warmup: int = 5,
    n_repeats: int = 30,
) -> Latency:
    """Measure inference latency: ``warmup`` calls, then the median of ``n_repeats``
    (formerly ``repeats=``). On a GPU each call is timed until the device has finished it
    (the host clock alone would time only the kernel launches).

    Rows of ``example_inputs`` are tiled (or cut) to ``batch_size``; the model runs in
    eval mode under ``torch.inference_mode()`` and its state is restored.

    Raises:
        TypeError: `batch_size`, `warmup` or `n_repeats` is not an integer.
        ValueError: `batch_size` < 1, `warmup` < 0 or `n_repeats` < 1.

    Example:
        >>> lat = latency(torch.nn.Linear(8, 8), torch.zeros(1, 8), n_repeats=3, warmup=1)
        >>> lat.batch_size, lat.median > 0
        (32, True)
    """
    batch_size = check_int("batch_size", batch_size, min_value=1)
    warmup = check_int("warmup", warmup, min_value=0)
    repeats = check_int("n_repeats", n_repeats, min_value=1)
    inputs = []
    for x in _as_tuple(example_inputs):
        reps = -(-batch_size // x.shape[0])
        inputs.append(x.repeat(reps, *([1] * (x.ndim - 1)))[:batch_size].contiguous())
    device = _device_of(model, inputs)
    wait = torch.cuda.synchronize if device.type == "cuda" else lambda _device: None
    times = []
    with model_guard(model, eval_mode=True), torch.inference_mode():
        for _ in range(warmup):
            model(*inputs)
        wait(device)
        for _ in range(repeats):
            start = time.perf_counter()
            model(*inputs)
            wait(device)
            times.append(time.perf_counter() - start)
    quart = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return Latency(
        statistics.median(times),
        quart[0],
        quart[2],
        batch_size,
        repeats,
        warmup,
        torch.get_num_threads(),
        str(device),
    )


def _device_of(model: nn.Module, inputs: list[torch.Tensor]) -> torch.device:
    """The first accelerator among the inputs and parameters, else the CPU."""
    for t in [*inputs, *model.parameters()]:
        if isinstance(t, torch.Tensor) and t.device.type != "cpu":
            return t.device
    return torch.device("cpu")


@renamed(repeats="n_repeats")
def compare(
    dense: nn.Module,
    pruned: nn.Module,
    example_inputs: Any,
    *,
    batch_size: int = 32,
    warmup: int = 5,
    n_repeats: int = 30,
) -> dict[str, Any]:
    """Dense vs pruned: parameters, non-zeros, MACs, file bytes and measured latency.

    ``speedup`` is dense median latency / pruned median latency, measured alternately so
    that both see the same machine load.

    Example:
        >>> d = torch.nn.Linear(8, 8)
        >>> sorted(compare(d, d, torch.zeros(1, 8), n_repeats=2, warmup=1))
        ['batch_size', 'dense', 'pruned', 'speedup']
    """
    rounds = 3
    lat: dict[str, list[Latency]] = {"dense": [], "pruned": []}
    for _ in range(rounds):
        for key, model in (("dense", dense), ("pruned", pruned)):
            lat[key].append(
                latency(
                    model,
                    example_inputs,
                    batch_size=batch_size,
                    warmup=warmup,
                    n_repeats=max(1, n_repeats // rounds),
                )
            )
    result: dict[str, Any] = {}
    for key, model in (("dense", dense), ("pruned", pruned)):
        result[key] = {
            "parameters": count_parameters(model),
            "nonzeros": count_nonzeros(model),
            "macs": macs(model, example_inputs),
            "bytes": serialized_size(model),
            "latency_s": statistics.median(lt.median for lt in lat[key]),
        }
    result["speedup"] = result["dense"]["latency_s"] / result["pruned"]["latency_s"]
    result["batch_size"] = batch_size
    return result
