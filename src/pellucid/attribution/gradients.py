"""Plain gradient attributions: saliency and input x gradient, and the shared gradient engines.

``input_gradients`` is the engine every gradient method shares: the gradient of the target
scores with respect to the explained rows only, ``batch_size`` rows at a time. Methods that
evaluate many rows per example (integrated gradients, SmoothGrad, expected gradients) use
``path_gradients``, which builds each chunk of rows lazily so memory stays bounded by
``batch_size`` however many steps or samples are asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from pellucid._batching import chunks, resolve_batch_size
from pellucid._registry import register
from pellucid._state import model_guard
from pellucid._targets import Forward, ResolvedTarget, Target
from pellucid.attribution._common import prepare
from pellucid.explanation import Explanation

__all__ = [
    "GRAD_BUDGET_FACTOR",
    "grad_batch_size",
    "input_gradients",
    "input_x_gradient",
    "path_gradients",
    "prepared_gradients",
    "saliency",
    "track_first_forward",
]


#: Without ``batch_size``, a backward chunk holds 1/16 of the forward-only element budget:
#: the activations kept for the backward pass are many times the inputs.
GRAD_BUDGET_FACTOR = 16


def grad_batch_size(batch_size: int | None, row_numel: int, *, total: int) -> int:
    """Rows per forward+backward chunk: ``batch_size``, or a default bounded in memory."""
    if batch_size is not None:
        return resolve_batch_size(batch_size, row_numel, total=total)
    return resolve_batch_size(None, row_numel * GRAD_BUDGET_FACTOR, total=total)


def _gradient(
    forward: Forward,
    target: ResolvedTarget,
    chunk: torch.Tensor,
    index: torch.Tensor | None,
) -> torch.Tensor:
    chunk = chunk.detach().requires_grad_(True)
    with torch.enable_grad():
        scores = target.scores(forward(chunk, index), index)
        if not scores.requires_grad:
            raise ValueError(
                "The target score does not depend on the explained inputs (no gradient path); "
                "check `target`, `output` and `layer`."
            )
        (grad,) = torch.autograd.grad(scores.sum(), chunk)
    return grad


def input_gradients(
    forward: Forward,
    target: ResolvedTarget,
    rows: torch.Tensor,
    *,
    example_index: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """d score / d rows for every row (rows may repeat examples, see ``example_index``)."""
    size = grad_batch_size(batch_size, rows[0].numel(), total=rows.shape[0])
    grads = []
    for start, stop in chunks(rows.shape[0], size):
        index = example_index[start:stop] if example_index is not None else None
        if index is None and stop - start != forward.n_examples:
            index = torch.arange(start, stop, device=rows.device)
        grads.append(_gradient(forward, target, rows[start:stop], index))
    return grads[0] if len(grads) == 1 else torch.cat(grads)


def path_gradients(
    forward: Forward,
    target: ResolvedTarget,
    like: torch.Tensor,
    *,
    per_example: int,
    make_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    combine: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int | None = None,
) -> torch.Tensor:
    """Sum ``combine(grad, example, step)`` over ``per_example`` rows of every example.

    Row ``r`` of the virtual ``len(like) * per_example`` rows belongs to example
    ``r // per_example`` and step ``r % per_example``; ``make_rows(example, step)`` builds only
    the rows of one chunk, so at most ``batch_size`` rows exist at a time.

    Returns:
        A tensor shaped like ``like``: the per-example sums.
    """
    n = like.shape[0]
    total = n * per_example
    size = grad_batch_size(batch_size, like[0].numel(), total=total)
    result = torch.zeros_like(like)
    for start, stop in chunks(total, size):
        rows_index = torch.arange(start, stop, device=like.device)
        example, step = rows_index // per_example, rows_index % per_example
        rows = make_rows(example, step)
        grad = _gradient(forward, target, rows, example)
        contribution = combine(grad, example, step)
        if stop - start == total:  # one chunk: a reshape-sum is cheaper than index_add
            result += contribution.reshape(n, per_example, *like.shape[1:]).sum(dim=1)
        else:
            result.index_add_(0, example, contribution)
    return result


def track_first_forward(inputs: Any, batch_size: int | None, layer: Any = None) -> bool:
    """True when one backward over all rows fits ``batch_size``: then ``prepare`` keeps the
    graph of its forward and the method needs no second one. (With ``layer``, the budget is
    counted on the inputs; layers rarely make rows much larger.)"""
    if not isinstance(inputs, torch.Tensor) or inputs.ndim == 0:
        return False
    if inputs.shape[0] == 0:
        return False
    n = inputs.shape[0]
    return grad_batch_size(batch_size, inputs[0].numel(), total=n) >= n


def prepared_gradients(prep: Any, batch_size: int | None) -> torch.Tensor:
    """d score / d inputs, from the graph ``prepare(track_grad=True)`` kept, else chunked."""
    if prep.graph_output is None or prep.leaf is None:
        return input_gradients(prep.forward, prep.target, prep.inputs, batch_size=batch_size)
    with torch.enable_grad():
        scores = prep.target.scores(prep.graph_output, None)
        if not scores.requires_grad:
            raise ValueError(
                "The target score does not depend on the explained inputs (no gradient path); "
                "check `target`, `output` and `layer`."
            )
        (grad,) = torch.autograd.grad(scores.sum(), prep.leaf)
    return grad


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False; got {value!r}.")
    return value


def _layer_params(prep: Any) -> dict[str, Any]:
    return {"layer": prep.layer_name} if prep.layer_name is not None else {}


@register(kind="gradient")
def saliency(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    absolute: bool = True,
    layer: Any = None,
    batch_size: int | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Saliency (Simonyan et al. 2014): the gradient of the target score w.r.t. the inputs.

    Args:
        model: a callable ``Tensor -> Tensor``, usually an ``nn.Module``.
        inputs: a batch-first float tensor (any dtype, e.g. token ids, with ``layer``).
        target: which output to explain (int, per-example, ``"predicted"``, callable, None).
        absolute: return ``|gradient|`` (True, the classic saliency map) or the signed gradient.
        layer: a submodule (or its dotted name): explain its output instead of the inputs.
        batch_size: rows per backward pass (memory bound).
        forward_args: extra positional model arguments (batch-aligned ones follow the rows).
        forward_kwargs: extra keyword model arguments.
        output: which part of a tuple/dict/ModelOutput return value to explain.
        eval_mode: True explains in eval mode for this call; None warns in training mode.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1)
        >>> saliency(net, torch.ones(2, 3)).attributions.shape
        torch.Size([2, 3])
    """
    _check_bool("absolute", absolute)
    with model_guard(model, eval_mode=eval_mode, method="saliency"):
        prep = prepare(
            model,
            inputs,
            target=target,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
            output=output,
            layer=layer,
            track_grad=track_first_forward(inputs, batch_size, layer),
        )
        grad = prepared_gradients(prep, batch_size)
    return Explanation(
        attributions=grad.abs() if absolute else grad,
        inputs=prep.inputs,
        method="saliency",
        target=prep.target.describe(),
        params={"absolute": absolute, "batch_size": batch_size, **_layer_params(prep)},
    )


@register(kind="gradient")
def input_x_gradient(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    layer: Any = None,
    batch_size: int | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Input x gradient (Shrikumar et al. 2016): ``inputs * d score / d inputs``.

    Takes the same arguments as :func:`saliency` (without ``absolute``).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1, bias=False)
        >>> e = input_x_gradient(net, torch.ones(1, 3))
        >>> torch.allclose(e.attributions, net.weight.detach())
        True
    """
    with model_guard(model, eval_mode=eval_mode, method="input_x_gradient"):
        prep = prepare(
            model,
            inputs,
            target=target,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
            output=output,
            layer=layer,
            track_grad=track_first_forward(inputs, batch_size, layer),
        )
        grad = prepared_gradients(prep, batch_size)
    return Explanation(
        attributions=prep.inputs * grad,
        inputs=prep.inputs,
        method="input_x_gradient",
        target=prep.target.describe(),
        params={"batch_size": batch_size, **_layer_params(prep)},
    )
