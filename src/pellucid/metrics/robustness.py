"""Robustness: does the explanation stay put when the input barely moves? (Yeh et al. 2019)

Both metrics explain ``n_samples`` perturbed copies ``x + delta`` of every example, with
``delta`` uniform in ``[-radius, radius]`` (or given), and measure
``||explain(x + delta) - explain(x)|| / ||explain(x)||``; ``max_sensitivity`` keeps the worst
copy, ``avg_sensitivity`` the mean. The explained output stays the one chosen on ``x``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from pellucid._adapt import adapt
from pellucid._evaluate import (
    ROW_COSTS,
    check_memory_options,
    chunks,
    memory_batch_size,
    parse_memory,
    prepare,
    probe_peak,
    resolve_batch_size,
)
from pellucid._state import model_guard
from pellucid._validation import check_float, check_int, check_tensor
from pellucid.metrics._common import make_explainer, rows_target
from pellucid.metrics._perturb import per_example

__all__ = ["avg_sensitivity", "max_sensitivity", "sensitivities"]


def sensitivities(
    model: Any,
    inputs: torch.Tensor,
    explain: str | Callable[..., Any],
    *,
    target: Any = None,
    radius: float = 0.02,
    n_samples: int = 10,
    norm_type: float = 2.0,
    normalize: bool = True,
    perturbations: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    explain_kwargs: Mapping[str, Any] | None = None,
    eval_mode: bool | None = None,
) -> torch.Tensor:
    """The ``(N, n_samples)`` sensitivities that max/avg_sensitivity reduce.

    Args:
        model: a callable ``Tensor -> Tensor``, usually an ``nn.Module``.
        inputs: a batch-first float tensor.
        explain: a registered method name (``"saliency"``) or a callable
            ``explain(model, inputs, *, target, **explain_kwargs) -> Tensor | Explanation``.
        target: which output to explain, fixed on the unperturbed inputs.
        radius: half-width of the uniform perturbation of every feature.
        n_samples: perturbed copies per example.
        norm_type: the vector norm (2 for Frobenius, ``float('inf')`` for max).
        normalize: divide by the norm of the unperturbed explanation (1 where it is 0).
        perturbations: optional ``delta`` to use, ``(n_samples, *features)`` or
            ``(N, n_samples, *features)``.
        generator: random source of the perturbations.
        batch_size: perturbed rows explained per call of ``explain``.
        max_memory: a budget for the call's peak memory, in bytes or as a size such as
            ``"2GB"`` or ``"512MiB"``: picks ``batch_size`` from the peak of ``explain`` on
            one row, measured once. Pass it or ``batch_size``, not both.
        explain_kwargs: extra keyword arguments for ``explain``.

    Raises:
        TypeError: `inputs` is not a floating-point tensor, or `normalize` is not a bool.
        ValueError: `inputs` holds NaN/inf, `explain` is unknown, or `n_samples` or `radius` is out
            of range; `max_memory` is not a size, is given with `batch_size` or cannot hold one
            row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 2)
        >>> sensitivities(net, torch.ones(2, 3), "saliency", target=0, n_samples=4).shape
        torch.Size([2, 4])
    """
    model, inputs, _ = adapt(model, inputs, method="the sensitivity metric")
    run = make_explainer(explain, explain_kwargs)
    norm_type = check_float(
        "norm_type", norm_type, min_value=0.0, min_inclusive=False, allow_inf=True
    )
    if not isinstance(normalize, bool):
        raise TypeError(f"`normalize` must be True or False; got {normalize!r}.")
    inputs = check_tensor("inputs", inputs, min_ndim=1, floating=True, finite=True)
    check_memory_options(batch_size, max_memory)
    if perturbations is not None:
        deltas = per_example(perturbations, inputs, name="perturbations", dtype=inputs.dtype)
        n_samples = deltas.shape[1]
    else:
        n_samples = check_int("n_samples", n_samples, min_value=1)
        radius = check_float("radius", radius, min_value=0.0, min_inclusive=False)
    with model_guard(model, eval_mode=eval_mode, method="the sensitivity metric"):
        prep = prepare(model, inputs, target=target)
        x = prep.inputs
        n = x.shape[0]
        fixed = rows_target(prep.target, torch.arange(n, device=x.device))
        if max_memory is not None:
            first = rows_target(prep.target, torch.zeros(1, dtype=torch.long, device=x.device))
            size = _memory_rows(run, model, x, first, max_memory, total=n * n_samples)
        else:
            size = resolve_batch_size(batch_size, max(1, x[0].numel()), total=n * n_samples)
        original = run(model, x, fixed).reshape(n, -1)
        diffs = []
        for start, stop in chunks(n * n_samples, size):
            r = torch.arange(start, stop, device=x.device)
            example, sample = r // n_samples, r % n_samples
            if perturbations is not None:
                delta = deltas[example, sample]
            else:
                delta = (
                    torch.rand(stop - start, *x.shape[1:], generator=generator, dtype=x.dtype).to(
                        x.device
                    )
                    * (2 * radius)
                    - radius
                )
            rows = x.index_select(0, example) + delta
            explained = run(model, rows, rows_target(prep.target, example))
            change = explained.reshape(stop - start, -1) - original.index_select(0, example)
            diffs.append(torch.linalg.vector_norm(change, ord=norm_type, dim=1))
    result = torch.cat(diffs).reshape(n, n_samples)
    if normalize:
        scale = torch.linalg.vector_norm(original, ord=norm_type, dim=1)
        result = result / torch.where(scale > 0, scale, torch.ones_like(scale)).unsqueeze(1)
    return result


def _memory_rows(
    run: Callable[[Any, torch.Tensor, Any], torch.Tensor],
    model: Any,
    x: torch.Tensor,
    first: Any,
    max_memory: Any,
    *,
    total: int,
) -> int:
    """Perturbed rows per call of ``explain`` within ``max_memory``: ``explain``'s peak on
    the first row (``first``: its target) is measured once; the unperturbed explanation of
    all examples is held too."""
    row_bytes = x[:1].numel() * x.element_size()
    # where the probe fails, an estimate: a gradient method's graph (16 rows' worth)
    per_row = probe_peak(lambda: run(model, x[:1], first), 16 * row_bytes)
    return memory_batch_size(
        parse_memory(max_memory),
        ROW_COSTS["sensitivities"],
        row_bytes=row_bytes,
        activations=per_row,
        n_examples=x.shape[0],
        total=total,
        method="sensitivities",
        max_memory=max_memory,
        extra_fixed=per_row * x.shape[0],
    )


def max_sensitivity(model: Any, inputs: torch.Tensor, explain: Any, **kwargs: Any) -> torch.Tensor:
    """Max-sensitivity (Yeh et al. 2019), one value >= 0 per example; lower is more robust.

    Takes the arguments of :func:`sensitivities` and keeps the worst perturbed copy.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1)
        >>> max_sensitivity(net, torch.ones(2, 3), "saliency")
        tensor([0., 0.])
    """
    return sensitivities(model, inputs, explain, **kwargs).max(dim=1).values


def avg_sensitivity(model: Any, inputs: torch.Tensor, explain: Any, **kwargs: Any) -> torch.Tensor:
    """Average sensitivity (Yeh et al. 2019), one value >= 0 per example; lower is more robust.

    Takes the arguments of :func:`sensitivities` and averages over the perturbed copies.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1)
        >>> avg_sensitivity(net, torch.ones(2, 3), "saliency")
        tensor([0., 0.])
    """
    return sensitivities(model, inputs, explain, **kwargs).mean(dim=1)
