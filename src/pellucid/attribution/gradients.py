"""Plain gradient attributions: saliency and input x gradient.

The gradient engine they share with every gradient method (one backward over the rows
``prepare`` already ran when it fits, else ``batch_size`` rows at a time) lives in
:mod:`pellucid._evaluate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pellucid._registry import register
from pellucid._shell import check_bool, explaining
from pellucid._targets import Target
from pellucid.explanation import Explanation

__all__ = ["input_x_gradient", "saliency"]


@register(kind="gradient")
def saliency(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    absolute: bool = True,
    layer: Any = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
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
        max_memory: a budget for the call's peak memory, in bytes or as a size such as
            ``"2GB"`` or ``"512MiB"``: picks ``batch_size`` from the method's per-row cost
            and the model's activations measured on one row (``params["batch_size"]``).
            Pass it or ``batch_size``, not both.
        forward_args: extra positional model arguments (batch-aligned ones follow the rows).
        forward_kwargs: extra keyword model arguments.
        output: which part of a tuple/dict/ModelOutput return value to explain.
        eval_mode: True explains in eval mode for this call; None warns in training mode.

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            `batch_size` < 1;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1)
        >>> saliency(net, torch.ones(2, 3)).attributions.shape
        torch.Size([2, 3])
    """
    check_bool("absolute", absolute)
    with explaining("saliency", locals(), track_grad=True, work=1) as run:
        grad = run.gradients()
        run.result(grad.abs() if absolute else grad, params={"absolute": absolute})
    return run.explanation


@register(kind="gradient")
def input_x_gradient(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    layer: Any = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Input x gradient (Shrikumar et al. 2016): ``inputs * d score / d inputs``.

    Takes the same arguments as :func:`saliency` (without ``absolute``).

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            `batch_size` < 1;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1, bias=False)
        >>> e = input_x_gradient(net, torch.ones(1, 3))
        >>> torch.allclose(e.attributions, net.weight.detach())
        True
    """
    with explaining("input_x_gradient", locals(), track_grad=True, work=1) as run:
        run.result(run.inputs * run.gradients())
    return run.explanation
