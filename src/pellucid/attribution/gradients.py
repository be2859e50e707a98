"""Plain gradient attributions: saliency and input x gradient.

``input_gradients`` is the shared engine: the gradient of the target scores with respect to
the inputs only, ``batch_size`` rows at a time, inside the model-state guard.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pellucid._batching import chunks, resolve_batch_size
from pellucid._registry import register
from pellucid._state import model_guard
from pellucid._targets import Forward, ResolvedTarget, Target
from pellucid.attribution._common import prepare
from pellucid.explanation import Explanation

__all__ = ["input_gradients", "input_x_gradient", "saliency"]


def input_gradients(
    forward: Forward,
    target: ResolvedTarget,
    rows: torch.Tensor,
    *,
    example_index: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """d score / d rows for every row (rows may repeat examples, see ``example_index``)."""
    size = resolve_batch_size(batch_size, rows[0].numel(), total=rows.shape[0])
    grads = []
    for start, stop in chunks(rows.shape[0], size):
        chunk = rows[start:stop].detach().requires_grad_(True)
        index = example_index[start:stop] if example_index is not None else None
        if index is None and stop - start != forward.n_examples:
            index = torch.arange(start, stop, device=rows.device)
        with torch.enable_grad():
            scores = target.scores(forward(chunk, index), index)
            (grad,) = torch.autograd.grad(scores.sum(), chunk)
        grads.append(grad)
    return grads[0] if len(grads) == 1 else torch.cat(grads)


@register(kind="gradient")
def saliency(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    absolute: bool = True,
    batch_size: int | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Saliency (Simonyan et al. 2014): the gradient of the target score w.r.t. the inputs.

    Args:
        model: a callable ``Tensor -> Tensor``, usually an ``nn.Module``.
        inputs: a batch-first float tensor.
        target: which output to explain (int, per-example, ``"predicted"``, callable, None).
        absolute: return ``|gradient|`` (True, the classic saliency map) or the signed gradient.
        batch_size: rows per backward pass (memory bound).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1)
        >>> saliency(net, torch.ones(2, 3)).attributions.shape
        torch.Size([2, 3])
    """
    if not isinstance(absolute, bool):
        raise TypeError(f"`absolute` must be True or False; got {absolute!r}.")
    with model_guard(model, eval_mode=eval_mode, method="saliency"):
        prep = prepare(model, inputs, target=target, forward_args=forward_args,
                       forward_kwargs=forward_kwargs, output=output)
        grad = input_gradients(prep.forward, prep.target, prep.inputs, batch_size=batch_size)
    return Explanation(
        attributions=grad.abs() if absolute else grad,
        inputs=prep.inputs,
        method="saliency",
        target=prep.target.describe(),
        params={"absolute": absolute, "batch_size": batch_size},
    )


@register(kind="gradient")
def input_x_gradient(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    batch_size: int | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Input x gradient (Shrikumar et al. 2016): ``inputs * d score / d inputs``.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1, bias=False)
        >>> e = input_x_gradient(net, torch.ones(1, 3))
        >>> torch.allclose(e.attributions, net.weight.detach())
        True
    """
    with model_guard(model, eval_mode=eval_mode, method="input_x_gradient"):
        prep = prepare(model, inputs, target=target, forward_args=forward_args,
                       forward_kwargs=forward_kwargs, output=output)
        grad = input_gradients(prep.forward, prep.target, prep.inputs, batch_size=batch_size)
    return Explanation(
        attributions=prep.inputs * grad,
        inputs=prep.inputs,
        method="input_x_gradient",
        target=prep.target.describe(),
        params={"batch_size": batch_size},
    )
