"""Shared front door of the metrics: validate once, resolve the target once, score rows.

Metrics receive ``attributions`` as a tensor or an :class:`~pellucid.explanation.Explanation`.
An explanation must explain the very ``inputs`` given (its ``inputs`` are compared), and its
``target`` is reused when the caller gives none. Perturbed rows are scored through
:func:`score_rows`, ``batch_size`` rows at a time under inference mode.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pellucid._adapt import adapt
from pellucid._evaluate import Forward, map_chunks, pick_batch_size, prepare, resolve_batch_size
from pellucid._targets import ResolvedTarget
from pellucid._validation import check_finite_tensor, check_tensor, describe_value
from pellucid.explanation import Explanation

__all__ = [
    "CPU_ACTIVATIONS",
    "CPU_ROWS",
    "MIN_CPU_ROWS",
    "MetricSetup",
    "as_attributions",
    "fixed_target",
    "flat_features",
    "make_explainer",
    "rows_target",
    "score_rows",
    "setup_metric",
]


#: Rows per forward pass on a CPU when the activations of a row are unknown.
CPU_ROWS = 512

#: Activation values per chunk on a CPU when the caller gives no ``batch_size``.
CPU_ACTIVATIONS = 1 << 22

#: Fewest rows per CPU chunk when the chunk is sized by activations.
MIN_CPU_ROWS = 64


def as_attributions(
    attributions: Any,
    inputs: torch.Tensor | None = None,
    *,
    name: str = "attributions",
) -> tuple[torch.Tensor, Explanation | None]:
    """The attribution tensor of ``attributions`` (a tensor or an Explanation), validated.

    With ``inputs``, the shapes must match and an Explanation must explain these inputs.
    """
    explanation = attributions if isinstance(attributions, Explanation) else None
    if explanation is not None:
        tensor = explanation.attributions
        if inputs is not None:
            _check_same_inputs(explanation, inputs, name)
    elif isinstance(attributions, torch.Tensor):
        tensor = attributions
    else:
        raise TypeError(
            f"`{name}` must be a torch.Tensor or a pellucid Explanation; "
            f"got {describe_value(attributions)}."
        )
    tensor = check_tensor(name, tensor, min_ndim=1).detach()
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    check_finite_tensor(name, tensor)
    if inputs is not None:
        if tensor.shape != inputs.shape:
            raise ValueError(
                f"`{name}` must have the shape of `inputs` {tuple(inputs.shape)}; got "
                f"{tuple(tensor.shape)}. Pass one attribution per input feature (batch first)."
            )
        tensor = tensor.to(device=inputs.device, dtype=inputs.dtype)
    return tensor, explanation


def _check_same_inputs(explanation: Explanation, inputs: torch.Tensor, name: str) -> None:
    other = explanation.inputs
    if not isinstance(other, torch.Tensor):
        return
    if other.shape != inputs.shape:
        raise ValueError(
            f"`{name}` is an Explanation of other inputs: it explains inputs of shape "
            f"{tuple(other.shape)}, but `inputs` has shape {tuple(inputs.shape)}. Pass the "
            "inputs it was computed on (`explanation.inputs`), or explain these inputs."
        )
    same = torch.allclose(
        other.detach().to(device=inputs.device, dtype=inputs.dtype),
        inputs.detach(),
        rtol=1e-5,
        atol=1e-6,
    )
    if not same:
        raise ValueError(
            f"`{name}` is an Explanation of other inputs: its `inputs` differ from the "
            "`inputs` given here (same shape, different values). Pass the inputs it was "
            "computed on (`explanation.inputs`), or explain these inputs."
        )


def flat_features(tensor: torch.Tensor) -> torch.Tensor:
    """``(N, ...) -> (N, D)`` view of a batch-first tensor."""
    return tensor.reshape(tensor.shape[0], -1)


@dataclass
class MetricSetup:
    """What :func:`setup_metric` hands a metric."""

    forward: Forward
    target: ResolvedTarget
    inputs: torch.Tensor  # (N, ...) detached
    attributions: torch.Tensor  # (N, ...) same shape, dtype and device as inputs
    scores: torch.Tensor  # (N,) target score of each unperturbed example
    explanation: Explanation | None
    activations_per_row: int = 0  # values output by the model's leaf modules, 0: unknown


def setup_metric(
    model: Any,
    inputs: Any,
    attributions: Any,
    *,
    target: Any = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
) -> MetricSetup:
    """Validate model/inputs/attributions and resolve ``target`` on the unperturbed inputs."""
    model, inputs, _ = adapt(model, inputs, method="this metric")
    inputs = check_tensor("inputs", inputs, min_ndim=1, floating=True)  # prepare: finite
    attr, explanation = as_attributions(attributions, inputs)
    inherited = target is None and explanation is not None and explanation.target is not None
    if inherited:
        target = explanation.target  # type: ignore[union-attr]
        if not isinstance(target, torch.Tensor | int) and not callable(target):
            target = None  # a callable's name was stored; the caller must pass it again
            inherited = False
    try:
        prep, per_row = _count_activations(
            model,
            inputs,
            lambda: prepare(
                model,
                inputs,
                target=target,
                forward_args=forward_args,
                forward_kwargs=forward_kwargs,
                output=output,
            ),
        )
    except ValueError as exc:
        if inherited:
            raise ValueError(
                f"The explanation's target does not fit this model ({exc}) Was the explanation "
                "computed with another model? Pass `target=` explicitly."
            ) from exc
        raise
    scores = prep.target.scores(prep.output)
    return MetricSetup(
        forward=prep.forward,
        target=prep.target,
        inputs=prep.inputs,
        attributions=attr,
        scores=scores.detach().to(inputs.dtype) if scores.is_floating_point() else scores,
        explanation=explanation,
        activations_per_row=per_row,
    )


def fixed_target(setup: MetricSetup) -> Any:
    """The resolved target as something every attribution method accepts again."""
    if setup.target.kind == "index":
        return setup.target.index
    if setup.target.kind == "callable":
        return setup.target.fn
    return None


def score_rows(
    setup: MetricSetup,
    make_rows: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
    total: int,
    *,
    batch_size: int | None,
    max_memory: Any = None,
    method: str = "metric",
) -> torch.Tensor:
    """Target scores of ``total`` virtual perturbed rows, built chunk by chunk.

    ``make_rows(start, stop)`` returns the rows and the example each row was made from.
    Without ``batch_size`` on a CPU, a chunk holds about :data:`CPU_ACTIVATIONS` activation
    values (counted on the unperturbed forward): cache-sized for a conv net, one big chunk for
    a small MLP, whose cost is per call. With ``max_memory`` (checked by the caller before
    the model ran), the chunk is what :func:`~pellucid._evaluate.pick_batch_size` picks for
    ``method``'s row cost.
    """
    row_numel = max(1, setup.inputs[0].numel())
    if max_memory is not None:
        size = pick_batch_size(
            max_memory, method, setup.forward, setup.target, setup.inputs, total=total
        )
    else:
        size = resolve_batch_size(batch_size, row_numel, total=total)
    if batch_size is None and max_memory is None and setup.inputs.device.type == "cpu":
        if setup.activations_per_row > 0:  # cache-sized chunks, or one if the model is small
            size = min(total, max(MIN_CPU_ROWS, CPU_ACTIVATIONS // setup.activations_per_row))
        else:
            size = min(size, CPU_ROWS)

    def run(start: int, stop: int) -> torch.Tensor:
        rows, index = make_rows(start, stop)
        return setup.target.scores(setup.forward(rows, index), index).to(setup.inputs.dtype)

    setup.forward.expect(total)
    return map_chunks(run, total, size).clone()  # a normal tensor, not an inference one


#: Activation values per row of each model seen, by row shape (counted once per model).
_ACTIVATIONS: weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], int]] = (
    weakref.WeakKeyDictionary()
)


def _count_activations(
    model: Any, inputs: torch.Tensor, call: Callable[[], Any]
) -> tuple[Any, int]:
    """``call()`` and the number of values the model's leaf modules output per row of inputs.

    Counted with forward hooks on a model's first call for a row shape, then remembered; 0
    where unknown (not an ``nn.Module``, or inputs not on a CPU, where chunks are not sized by
    activations).
    """
    if not isinstance(model, torch.nn.Module) or inputs.device.type != "cpu":
        return call(), 0
    row_shape = tuple(inputs.shape[1:])
    known = _ACTIVATIONS.get(model, {})
    if row_shape in known:
        return call(), known[row_shape]
    counted = [0]

    def hook(module: Any, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            counted[0] += out.numel()

    leaves = [m for m in model.modules() if not any(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        result = call()
    finally:
        for handle in handles:
            handle.remove()
    per_row = counted[0] // max(1, inputs.shape[0])
    _ACTIVATIONS.setdefault(model, {})[row_shape] = per_row
    return result, per_row


def make_explainer(
    explain: Any, explain_kwargs: Mapping[str, Any] | None
) -> Callable[[Any, torch.Tensor, Any], torch.Tensor]:
    """``explain`` (a registered method name or a callable) as ``fn(model, rows, target)``.

    A callable is called as ``explain(model, rows, target=target, **explain_kwargs)`` and
    may return a tensor or an ``Explanation``.
    """
    from pellucid._registry import get_method

    if explain_kwargs is not None and not isinstance(explain_kwargs, Mapping):
        raise TypeError(
            f"`explain_kwargs` must be a dict of keyword arguments; got {describe_value(explain_kwargs)}."
        )
    kwargs = dict(explain_kwargs or {})
    if "target" in kwargs:
        raise ValueError("Pass `target=` to the metric itself, not inside `explain_kwargs`.")
    if isinstance(explain, str):
        try:
            fn: Callable[..., Any] = get_method(explain).fn
        except ValueError as err:
            raise ValueError(str(err).replace("`method`", "`explain`", 1)) from None
    elif callable(explain):
        fn = explain
    else:
        raise TypeError(
            "`explain` must be a registered method name (see pellucid.list_methods()) or a "
            f"callable `explain(model, inputs, *, target) -> Tensor`; got {describe_value(explain)}."
        )

    def run(model: Any, rows: torch.Tensor, target: Any) -> torch.Tensor:
        result = fn(model, rows, target=target, **kwargs)
        tensor = result.attributions if isinstance(result, Explanation) else result
        if not isinstance(tensor, torch.Tensor) or tensor.shape != rows.shape:
            raise ValueError(
                f"`explain` must return attributions of the inputs' shape {tuple(rows.shape)}; "
                f"got {describe_value(tensor)}."
            )
        return tensor.detach().to(rows.dtype)

    return run


def rows_target(target: ResolvedTarget, example: torch.Tensor) -> Any:
    """The target of perturbed rows made from ``example`` (fixed on the original inputs)."""
    if target.kind == "index":
        index = target.index
        if index is None:
            return None
        return index.to(example.device).index_select(0, example)
    if target.kind == "callable":
        return target.fn
    return None
