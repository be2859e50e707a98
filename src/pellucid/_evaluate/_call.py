"""Rows -> model -> output: the one way pellucid calls the user's model.

:class:`Forward` calls ``model(rows, *forward_args, **forward_kwargs)`` (batch-aligned extra
arguments follow the rows' examples), selects the explained output (``output=``) and runs
in the memory layout its :class:`~pellucid._kernels.Layout` chose. Other ways of running
the model are compositions around a Forward, never copies of it: :class:`AtLayer` substitutes
rows for a layer's output, the rule engines wrap the model call (``with_model``) and the
paired (DeepLIFT) pass runs reference rows and rows through the same Forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from pellucid._kernels import Layout
from pellucid._validation import describe_value

__all__ = ["AtLayer", "Evaluates", "Forward", "select_output"]


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


class Evaluates(Protocol):
    """What methods evaluate rows with: a :class:`Forward` or a composition around one."""

    n_examples: int

    @property
    def aligned(self) -> bool: ...

    def expect(self, rows: int) -> None: ...

    def __call__(
        self, x: torch.Tensor, example_index: torch.Tensor | None = None
    ) -> torch.Tensor: ...


class Forward:
    """Call ``model(x, *forward_args, **forward_kwargs)`` and select the explained output.

    Batch-aligned extra arguments (tensors whose first dimension equals the number of
    examples) are repeated alongside perturbed rows: ``example_index[i]`` names the example
    that row ``i`` of ``x`` was made from. ``kernels`` is the layout policy (see
    :mod:`pellucid._kernels`); engines announce large workloads with :meth:`expect`.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        *,
        n_examples: int,
        forward_args: Any = None,
        forward_kwargs: Mapping[str, Any] | None = None,
        output: Any = None,
        kernels: str = "auto",
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
        self.layout = Layout(model, kernels)

    def align(self, value: Any, example_index: torch.Tensor | None) -> Any:
        """``value`` for the rows of ``example_index`` when it is batch-aligned, else itself."""
        if (
            example_index is not None
            and isinstance(value, torch.Tensor)
            and value.ndim > 0
            and value.shape[0] == self.n_examples
        ):
            return value.index_select(0, example_index.to(value.device))
        return value

    def with_model(self, model: Callable[..., Any], *, kernels: str = "off") -> Forward:
        """The same arguments and output selection around another model callable."""
        return Forward(
            model,
            n_examples=self.n_examples,
            forward_args=self.args,
            forward_kwargs=self.kwargs,
            output=self.output,
            kernels=kernels,
        )

    def expect(self, rows: int) -> None:
        """Announce that about ``rows`` rows will be evaluated (layout policy input)."""
        self.layout.expect(rows)

    @property
    def aligned(self) -> bool:
        """Whether some extra argument is batch-aligned (rows then need their example index)."""
        return any(
            isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == self.n_examples
            for v in (*self.args, *self.kwargs.values())
        )

    def __call__(self, x: torch.Tensor, example_index: torch.Tensor | None = None) -> torch.Tensor:
        def run(rows: torch.Tensor, first: int | None) -> torch.Tensor:
            index = example_index
            if first is not None:  # a trial on the first rows (see ``_kernels``)
                if index is None and self.aligned:
                    index = torch.arange(first, device=rows.device)
                index = index[:first] if index is not None else None
            if not self.args and not self.kwargs:  # the usual call: nothing to align
                return select_output(self.model(rows), self.output)
            args = [self.align(a, index) for a in self.args]
            kwargs = {k: self.align(v, index) for k, v in self.kwargs.items()}
            return select_output(self.model(rows, *args, **kwargs), self.output)

        return self.layout.call(run, x)


class AtLayer:
    """Evaluates rows that stand for ``layer``'s output instead of the model's inputs.

    ``at_layer(h, example_index)`` runs ``base`` on the model inputs of the rows' examples
    and substitutes a copy of ``h`` for the layer's output through a forward hook, so
    gradients flow from the scores to ``h`` only (a copy: the model may change the layer's
    output in place later). This is how token-id models are explained: through the
    embedding layer.
    """

    def __init__(self, base: Forward, layer: nn.Module, raw_inputs: torch.Tensor) -> None:
        self.base, self.layer, self.raw_inputs = base, layer, raw_inputs
        self.n_examples = base.n_examples

    @property
    def aligned(self) -> bool:
        """Always: each row runs on its own example's raw inputs."""
        return True

    def expect(self, rows: int) -> None:
        self.base.expect(rows)

    def __call__(self, x: torch.Tensor, example_index: torch.Tensor | None = None) -> torch.Tensor:
        if example_index is None:
            if x.shape[0] != self.n_examples:
                raise ValueError(
                    f"Layer activations have {x.shape[0]} rows but there are {self.n_examples} "
                    "examples; pass `example_index`."
                )
            raw = self.raw_inputs
        else:
            raw = self.raw_inputs.index_select(0, example_index.to(self.raw_inputs.device))
        grad_mode = torch.is_grad_enabled()

        def substitute(module: nn.Module, args: Any, out: Any) -> torch.Tensor:
            if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                raise ValueError(
                    f"`layer` output of shape {_shape(out)} cannot be replaced by activations of "
                    f"shape {tuple(x.shape)}."
                )
            torch.set_grad_enabled(grad_mode)  # gradients start at ``x``: no graph before it
            # a copy: the model may change the layer's output in place (``ReLU(inplace=True)``
            # after a batch norm, ResNet's ``out += identity``), never ``x`` itself
            return x.clone()

        handle = self.layer.register_forward_hook(substitute)
        try:
            with torch.set_grad_enabled(False):
                return self.base(raw, example_index)
        finally:
            handle.remove()


def _shape(value: Any) -> Any:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
