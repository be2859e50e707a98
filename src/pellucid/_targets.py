"""THE place that turns a model output and a ``target`` into one score per row.

Every method reduces the model's output (see :mod:`pellucid._evaluate`) with a
:class:`ResolvedTarget` (which output to explain). Targets are resolved once, on the
unperturbed inputs, so ``"predicted"`` means the prediction for the original example in
every perturbed row.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from pellucid._validation import describe_value

__all__ = ["ResolvedTarget", "Target", "resolve_target"]

Target = int | str | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


@dataclass(frozen=True)
class ResolvedTarget:
    """A target fixed for the original examples; reduces outputs to one score per row."""

    kind: str  # "none" | "index" | "callable"
    index: torch.Tensor | None = None
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    column: int | None = None  # an int target: the same output column for every example

    def scores(
        self, output: torch.Tensor, example_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores of shape ``(rows,)`` for an output whose rows map to ``example_index``."""
        if self.kind == "callable":
            result = cast(Callable[[torch.Tensor], torch.Tensor], self.fn)(output)
            if not isinstance(result, torch.Tensor) or result.shape != output.shape[:1]:
                raise ValueError(
                    "A callable `target` must return one score per row, shape "
                    f"({output.shape[0]},); got {describe_value(result)}."
                )
            return result
        flat = output if output.ndim == 2 else output.reshape(output.shape[0], -1)
        if self.kind == "none":
            return flat[:, 0]
        if self.column is not None:  # no per-row gather needed
            return flat[:, self.column]
        idx = cast(torch.Tensor, self.index)
        if example_index is not None:
            idx = idx.to(output.device).index_select(0, example_index.to(output.device))
        elif idx.shape[0] != flat.shape[0]:
            idx = idx.to(output.device).repeat_interleave(flat.shape[0] // idx.shape[0])
        return flat.gather(1, idx.to(output.device).view(-1, 1)).squeeze(1)

    @property
    def per_example(self) -> bool:
        """Whether scoring a row needs the index of its example (one class per example)."""
        return self.kind == "index" and self.column is None

    def describe(self) -> Any:
        """A JSON-able record of what was explained (stored in ``Explanation.target``)."""
        if self.kind == "index":
            return self.index
        if self.kind == "callable":
            return getattr(self.fn, "__name__", "callable")
        return None


def resolve_target(target: Target, output: torch.Tensor) -> ResolvedTarget:
    """Fix ``target`` against the model ``output`` for the original examples.

    Args:
        target: None (the model has one output per example), an int class index, a
            per-example sequence or tensor of indices, ``"predicted"`` (argmax) or a callable
            ``output -> scores`` of shape ``(N,)``.
        output: the model's output on the original inputs, batch first.
    """
    n = output.shape[0]
    per_row = math.prod(output.shape[1:]) if output.ndim > 0 else 0
    if output.ndim == 0:
        raise ValueError(
            "The model output must be batch first, shape (N,) or (N, K); got a scalar."
        )
    if callable(target) and not isinstance(target, torch.Tensor | str):
        return ResolvedTarget("callable", fn=target)
    if output.ndim > 2:
        raise ValueError(
            f"The model output has shape {tuple(output.shape)}; pass `target=` as a callable "
            "that reduces it to one score per example (shape (N,))."
        )
    if target is None:
        if per_row != 1:
            raise ValueError(
                f"The model has {per_row} outputs per example; `target` must say which one to "
                "explain: an int class index, one index per example, or 'predicted'."
            )
        return ResolvedTarget("none")
    if isinstance(target, str):
        if target != "predicted":
            raise ValueError(
                f"`target` must be an int, a sequence of ints, 'predicted' or a callable; "
                f"got {target!r}."
            )
        return ResolvedTarget("index", index=output.reshape(n, -1).argmax(dim=1).detach())
    if isinstance(target, bool):
        raise TypeError(f"`target` must be an int class index; got {target!r}.")
    if type(target) is int or isinstance(target, numbers.Integral):
        value = int(target)
        if not -per_row <= value < per_row:
            raise ValueError(
                f"`target` must be a class index in [0, {per_row - 1}]; got {value} "
                f"(the model has {per_row} outputs)."
            )
        index = torch.full((n,), value % per_row, dtype=torch.long, device=output.device)
        return ResolvedTarget("index", index=index, column=value % per_row)
    try:
        index = torch.as_tensor(target, device=output.device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"`target` must be an int, a sequence of ints, 'predicted' or a callable; "
            f"got {describe_value(target)}."
        ) from exc
    if index.is_floating_point() or index.dtype == torch.bool:
        raise TypeError(f"`target` must hold integer class indices; got dtype {index.dtype}.")
    index = index.to(torch.long).reshape(-1)
    if index.numel() == 1:
        index = index.expand(n).clone()
    if index.shape[0] != n:
        raise ValueError(f"`target` must have one entry per example ({n}); got {index.shape[0]}.")
    low, high = int(index.min()), int(index.max())
    if low < -per_row or high >= per_row:
        bad = high if high >= per_row else low
        raise ValueError(
            f"`target` must be a class index in [0, {per_row - 1}]; got {bad} "
            f"(the model has {per_row} outputs)."
        )
    return ResolvedTarget("index", index=index.remainder(per_row))
