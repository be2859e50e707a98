"""Shared front door of every attribution method: validate once, resolve the target once.

``prepare`` checks the model and inputs, runs the model once on the unperturbed inputs
(no grad) and returns the callable :class:`~pellucid._targets.Forward`, the
:class:`~pellucid._targets.ResolvedTarget` and that first output. Methods then work only
with tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pellucid._targets import Forward, ResolvedTarget, Target, resolve_target
from pellucid._validation import check_finite_tensor, check_model, check_tensor

__all__ = ["Prepared", "broadcast_baseline", "prepare"]


@dataclass
class Prepared:
    """What ``prepare`` hands a method."""

    forward: Forward
    target: ResolvedTarget
    output: torch.Tensor  # the model's output on the original inputs (detached)
    inputs: torch.Tensor  # the inputs, detached


def prepare(
    model: Any,
    inputs: Any,
    *,
    target: Target = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    floating: bool = True,
) -> Prepared:
    """Validate ``model``/``inputs`` and resolve ``target`` on the unperturbed inputs."""
    check_model("model", model)
    inputs = check_tensor("inputs", inputs, min_ndim=1, floating=floating, finite=floating)
    inputs = inputs.detach()
    forward = Forward(
        model,
        n_examples=inputs.shape[0],
        forward_args=forward_args,
        forward_kwargs=forward_kwargs,
        output=output,
    )
    with torch.no_grad():
        try:
            out = forward(inputs)
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ValueError(
                f"The model could not run on `inputs` of shape {tuple(inputs.shape)} "
                f"(batch first): {exc}"
            ) from exc
    if out.ndim == 0 or out.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"The model must return one row per example: `inputs` has {inputs.shape[0]} rows "
            f"but the output has shape {tuple(out.shape)}. Inputs must be batch first."
        )
    if out.is_floating_point():
        check_finite_tensor("model output", out)
    resolved = resolve_target(target, out)
    return Prepared(forward=forward, target=resolved, output=out.detach(), inputs=inputs)


def broadcast_baseline(
    baseline: float | int | torch.Tensor | None, inputs: torch.Tensor, *, name: str = "baseline"
) -> torch.Tensor:
    """A baseline of the inputs' full shape: None -> zeros, scalar, or a broadcastable tensor.

    A tensor may have the shape of one example (it is shared) or of the whole batch.
    """
    if baseline is None:
        return torch.zeros_like(inputs)
    if isinstance(baseline, bool):
        raise TypeError(f"`{name}` must be a number or a tensor; got {baseline!r}.")
    if isinstance(baseline, int | float):
        if baseline != baseline or baseline in (float("inf"), float("-inf")):
            raise ValueError(f"`{name}` must be finite; got {baseline}.")
        return torch.full_like(inputs, float(baseline))
    if not isinstance(baseline, torch.Tensor):
        raise TypeError(f"`{name}` must be None, a number or a tensor; got {type(baseline).__name__}.")
    check_finite_tensor(name, baseline)
    b = baseline.detach().to(device=inputs.device, dtype=inputs.dtype)
    if b.shape == inputs.shape[1:]:
        b = b.unsqueeze(0)
    try:
        return torch.broadcast_to(b, inputs.shape).clone()
    except RuntimeError:
        raise ValueError(
            f"`{name}` of shape {tuple(baseline.shape)} does not broadcast to the inputs' shape "
            f"{tuple(inputs.shape)}; use shape {tuple(inputs.shape[1:])} (one example, shared) or "
            f"{tuple(inputs.shape)} (one per example)."
        ) from None
