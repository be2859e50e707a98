"""THE place that turns a model output and a ``target`` into one score per row.

Every method calls the model through :class:`Forward` (extra arguments, output selection)
and reduces its output with a :class:`ResolvedTarget` (which output to explain). Targets
are resolved once, on the unperturbed inputs, so ``"predicted"`` means the prediction for
the original example in every perturbed row.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from pellucid._kernels import call_channels_last, fast_kernels, fast_pools, is_convnet
from pellucid._validation import describe_value

__all__ = ["Forward", "ResolvedTarget", "resolve_target", "select_output"]

Target = int | str | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


def select_output(raw: Any, output: Any = None) -> torch.Tensor:
    """Pick the tensor to explain from a model's return value.

    ``output`` may be None (the tensor itself, or the first tensor of a tuple, list, dict or
    ``ModelOutput``), an int (tuple/list index), a str (dict key or attribute) or a callable.
    """
    if callable(output) and not isinstance(output, str | int):
        result = output(raw)
    elif output is None:
        result = _first_tensor(raw)
    elif isinstance(output, bool):
        raise TypeError(f"`output` must be an int, str, callable or None; got {output!r}.")
    elif isinstance(output, int):
        if not isinstance(raw, Sequence) or isinstance(raw, torch.Tensor):
            raise TypeError(
                f"`output={output}` indexes a tuple or list, but the model returned "
                f"{describe_value(raw)}."
            )
        if not -len(raw) <= output < len(raw):
            raise ValueError(f"`output` must index the model's {len(raw)} outputs; got {output}.")
        result = raw[output]
    elif isinstance(output, str):
        if isinstance(raw, Mapping):
            if output not in raw:
                raise ValueError(
                    f"`output` must be a key of the model's output; got {output!r}, keys are "
                    f"{list(raw.keys())}."
                )
            result = raw[output]
        elif hasattr(raw, output):
            result = getattr(raw, output)
        else:
            raise ValueError(f"`output={output!r}` is not a key or attribute of the output.")
    else:
        raise TypeError(
            f"`output` must be an int, str, callable or None; got {describe_value(output)}."
        )
    if not isinstance(result, torch.Tensor):
        raise TypeError(
            f"The selected model output must be a tensor; got {describe_value(result)}. "
            "Pass `output=` (a key, an index or a callable) to choose one."
        )
    return result


def _first_tensor(raw: Any) -> torch.Tensor:
    if isinstance(raw, torch.Tensor):
        return raw
    values = raw.values() if isinstance(raw, Mapping) else raw
    if isinstance(values, Sequence) or isinstance(raw, Mapping):
        for value in values:
            if isinstance(value, torch.Tensor):
                return value
    raise TypeError(
        f"The model must return a tensor, or a tuple/dict holding one; got {describe_value(raw)}."
    )


class Forward:
    """Call ``model(x, *forward_args, **forward_kwargs)`` and select the explained output.

    Batch-aligned extra arguments (tensors whose first dimension equals the number of
    examples) are repeated alongside perturbed rows: ``example_index[i]`` names the example
    that row ``i`` of ``x`` was made from.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        *,
        n_examples: int,
        forward_args: Any = None,
        forward_kwargs: Mapping[str, Any] | None = None,
        output: Any = None,
    ) -> None:
        if forward_args is None:
            forward_args = ()
        elif not isinstance(forward_args, tuple | list):
            forward_args = (forward_args,)
        if forward_kwargs is not None and not isinstance(forward_kwargs, Mapping):
            raise TypeError(
                f"`forward_kwargs` must be a dict of extra model arguments; "
                f"got {describe_value(forward_kwargs)}."
            )
        self.model = model
        self.n_examples = n_examples
        self.args = tuple(forward_args)
        self.kwargs = dict(forward_kwargs or {})
        self.output = output
        # faster equivalent kernels while the model runs (see ``_kernels``)
        self.pools = fast_pools(model)
        self.convnet = is_convnet(model)

    def _align(self, value: Any, example_index: torch.Tensor | None) -> Any:
        if (
            example_index is not None
            and isinstance(value, torch.Tensor)
            and value.ndim > 0
            and value.shape[0] == self.n_examples
        ):
            return value.index_select(0, example_index.to(value.device))
        return value

    def with_model(self, model: Callable[..., Any]) -> Forward:
        """The same arguments and output selection around another model callable."""
        return Forward(
            model,
            n_examples=self.n_examples,
            forward_args=self.args,
            forward_kwargs=self.kwargs,
            output=self.output,
        )

    def _adopt(self, other: Forward) -> None:
        """Initialize as a copy of ``other``'s (already validated) configuration, for
        subclasses."""
        self.model, self.n_examples, self.output = other.model, other.n_examples, other.output
        self.args, self.kwargs, self.pools = other.args, dict(other.kwargs), other.pools
        self.convnet = other.convnet

    @property
    def aligned(self) -> bool:
        """Whether some extra argument is batch-aligned (rows then need their example index)."""
        return any(
            isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == self.n_examples
            for v in (*self.args, *self.kwargs.values())
        )

    def __call__(self, x: torch.Tensor, example_index: torch.Tensor | None = None) -> torch.Tensor:
        args = [self._align(a, example_index) for a in self.args]
        kwargs = {k: self._align(v, example_index) for k, v in self.kwargs.items()}
        if not self.pools and not self.convnet:
            return select_output(self.model(x, *args, **kwargs), self.output)
        with fast_kernels(self.pools):
            if not self.convnet:
                return select_output(self.model(x, *args, **kwargs), self.output)
            raw = call_channels_last(cast(nn.Module, self.model), x, args, kwargs)
        # an image-shaped output may have come back channels-last: give it the usual layout
        return select_output(raw, self.output).contiguous()


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
        flat = output.reshape(output.shape[0], -1)
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
    per_row = output.reshape(n, -1).shape[1] if output.ndim > 0 else 0
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
    if isinstance(target, numbers.Integral):
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
