"""The front door of every method: validate once, run the model once, resolve the target once.

``prepare`` checks the model and inputs, runs the model once on the unperturbed inputs and
returns a :class:`Prepared`: the :class:`~pellucid._evaluate.Forward` that evaluates rows
(an :class:`~pellucid._evaluate.AtLayer` with ``layer=``), the
:class:`~pellucid._targets.ResolvedTarget` and that first output. Methods, metrics and
inspection tools then work only with tensors. ``broadcast_baseline`` gives a reference the
inputs' shape.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pellucid._evaluate._call import AtLayer, Evaluates, Forward
from pellucid._targets import ResolvedTarget, Target, resolve_target
from pellucid._validation import check_finite_tensor, check_layer, check_model, check_tensor

__all__ = [
    "Prepared",
    "all_finite",
    "broadcast_baseline",
    "model_failure",
    "layer_activations",
    "per_row",
    "prepare",
]


@dataclass
class Prepared:
    """What ``prepare`` hands a method."""

    forward: Evaluates  # a Forward, or an AtLayer with ``layer``
    target: ResolvedTarget
    output: torch.Tensor  # the model's output on the original inputs (detached)
    inputs: torch.Tensor  # the inputs, detached (the layer's output when ``layer`` is given)
    raw_inputs: torch.Tensor | None = None  # the model's own inputs when ``layer`` is given
    layer_name: str | None = None  # the dotted name of ``layer`` when given
    leaf: torch.Tensor | None = None  # with ``track_grad``: the rows the graph starts from
    graph_output: torch.Tensor | None = None  # with ``track_grad``: the output, with graph
    chunk_results: list[Any] | None = None  # with ``grad_chunk``: ``on_chunk``'s, in order

    @property
    def model_forward(self) -> Forward:
        """The Forward that calls the model on its own inputs (under any layer composition)."""
        forward = self.forward
        return forward.base if isinstance(forward, AtLayer) else forward  # type: ignore[return-value]


#: ``on_chunk(output, leaf, example_index, target)``: what a method takes from one chunk's
#: graph (see ``prepare``'s ``grad_chunk``).
ChunkResult = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", ResolvedTarget], Any]


class _ModelError(Exception):
    """The model itself failed (wrapped so that ``prepare`` can tell it from our checks)."""


def all_finite(value: torch.Tensor) -> bool:
    """True when every entry is finite, from one sum (a NaN or inf entry makes the sum
    non-finite; a finite sum proves them all finite). A non-finite sum may also be an
    overflow: callers then run ``check_finite_tensor``, which decides and words the error."""
    return math.isfinite(float((value.detach() if value.requires_grad else value).sum()))


def _shape(value: Any) -> Any:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def layer_activations(
    forward: Forward,
    layer: nn.Module,
    raw: torch.Tensor,
    example_index: torch.Tensor | None = None,
    *,
    track: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``forward`` on ``raw`` and return ``(output, layer output)``, both detached.

    With ``track``, the model goes on from a copy of a leaf that requires grad (the second
    value) and the returned output keeps the graph from that leaf. The layer's output is
    copied either way, so a model that changes it in place later cannot change the result.
    Raises when the layer runs other than exactly once or returns something else than a tensor.
    """
    captured: list[Any] = []

    def capture(module: nn.Module, args: Any, out: Any) -> Any:
        if track and isinstance(out, torch.Tensor) and out.is_floating_point():
            # Only the part of the model after the layer needs a graph: the forward runs
            # without one up to here (cheaper), and records from the leaf on.
            torch.set_grad_enabled(True)
            # contiguous: the model may run channels-last (``_kernels``), methods get the
            # usual layout. The model goes on with a copy of the leaf, which it may change in
            # place (``ReLU(inplace=True)``, ``out += identity``) while the leaf stays intact.
            leaf = out.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
            captured.append(leaf)
            return leaf.clone()
        if isinstance(out, torch.Tensor):  # a copy, for the same reason
            captured.append(out.detach().clone(memory_format=torch.contiguous_format))
        else:
            captured.append(out)
        return None

    handles = [layer.register_forward_hook(capture)]
    try:
        with torch.set_grad_enabled(False):
            try:
                out = forward(raw, example_index)
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                raise _ModelError(exc) from exc
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != 1:
        raise ValueError(
            f"`layer` ({type(layer).__name__}) must run exactly once per forward pass to be "
            f"explained; it ran {len(captured)} times. Choose a layer the model calls once."
        )
    activations = captured[0]
    if not isinstance(activations, torch.Tensor) or not activations.is_floating_point():
        raise TypeError(
            f"`layer` must return a floating-point tensor to be explained; it returned "
            f"{_shape(activations)}. Choose a layer with a single tensor output."
        )
    if track:
        return out, activations
    return out.detach(), activations.detach()


def model_failure(
    model: Any, inputs: torch.Tensor, error: Any, forward_args: Any, forward_kwargs: Any
) -> str:
    """The message for a model that could not run on the inputs, with the likely fix."""
    hints = []
    dtypes = {p.dtype for p in model.parameters()} if isinstance(model, nn.Module) else set()
    floating = {d for d in dtypes if d.is_floating_point}
    if len(floating) == 1 and inputs.dtype not in floating:
        (dtype,) = floating
        hints.append(
            f"The model's parameters are {dtype}: convert the inputs with `inputs.to({dtype})`."
        )
    if inputs.ndim == 1:
        hints.append("Inputs must be batch first: use `inputs.unsqueeze(0)` for one example.")
    if forward_args is not None or forward_kwargs:
        hints.append("Check that `forward_args`/`forward_kwargs` match the model's signature.")
    return (
        f"The model could not run on `inputs` of shape {tuple(inputs.shape)} and dtype "
        f"{inputs.dtype} (batch first); got: {error}" + "".join(" " + h for h in hints)
    )


def prepare(
    model: Any,
    inputs: Any,
    *,
    target: Target = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    floating: bool = True,
    layer: Any = None,
    track_grad: bool = False,
    grad_chunk: int | Callable[[Any, torch.Tensor], int] | None = None,
    on_chunk: ChunkResult | None = None,
    wrap: Callable[[Forward], Any] | None = None,
    passthrough: tuple[type[Exception], ...] = (),
    target_optional: bool = False,
) -> Prepared:
    """Validate ``model``/``inputs`` and resolve ``target`` on the unperturbed inputs.

    With ``layer`` (a submodule or its dotted name), the returned ``inputs`` are that layer's
    output and ``forward`` takes such activations (see :class:`AtLayer`); the model's
    own inputs may then be token ids (any dtype).

    With ``track_grad``, this first forward records the autograd graph from ``leaf`` (the
    inputs or the layer's output) to ``graph_output``, so that a method needing one backward
    pass does not run the model twice. When one backward over every row does not fit,
    ``grad_chunk`` rows (or ``grad_chunk(forward, inputs)``, asked before the first forward:
    a size picked from a memory budget): the first forward then runs that many rows at a
    time, each chunk with its graph, and ``on_chunk(output, leaf, example_index, target)``
    takes what the method needs from that graph right after the chunk ran (its gradient);
    the results are ``chunk_results``, and the method again runs the model only once.

    ``wrap`` changes how the model is called (rule engines, attention capture): the first
    forward and the returned ``forward`` are ``wrap(Forward(...))`` (no ``layer`` then);
    exceptions of the ``passthrough`` types raise unchanged (others from the model are
    worded as "the model could not run"). With ``target_optional`` (methods that do not use
    it, such as attention) a ``target`` of None is not resolved at all and a given one is
    only validated.
    """
    check_model("model", model)
    if layer is not None:
        module = check_layer(model, layer)
        floating = False
    inputs = check_tensor("inputs", inputs, min_ndim=1, floating=floating)
    if inputs.is_floating_point() and not all_finite(inputs):
        check_finite_tensor("inputs", inputs)
    inputs = inputs.detach()
    forward = Forward(
        model,
        n_examples=inputs.shape[0],
        forward_args=forward_args,
        forward_kwargs=forward_kwargs,
        output=output,
    )
    call: Any = wrap(forward) if wrap is not None and layer is None else forward

    def run_rows(rows: torch.Tensor, index: Any, track: bool) -> Any:
        """``(output, leaf)`` of the rows: the leaf is the rows, or the layer's output."""
        if layer is not None:
            return layer_activations(forward, module, rows, index, track=track)
        leaf = rows.detach().requires_grad_(track)
        with torch.set_grad_enabled(track):
            try:
                return call(leaf, index), leaf
            except passthrough:
                raise
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                raise _ModelError(exc) from exc

    if callable(grad_chunk):  # picked now, on the checked inputs, before the first forward
        grad_chunk = grad_chunk(call, inputs)
    if track_grad and grad_chunk is not None and grad_chunk < inputs.shape[0]:
        if on_chunk is None:
            raise TypeError("prepare: `grad_chunk` needs `on_chunk`.")
        prepared = _streamed(
            run_rows,
            call,
            forward,
            inputs,
            target,
            grad_chunk,
            on_chunk,
            target_optional,
            layer is not None,
        )
    else:
        graph, leaf = _first_forward(lambda: run_rows(inputs, None, track_grad), forward, inputs)
        out = graph.detach()
        _check_output(out, inputs)
        resolved = (
            ResolvedTarget("none")
            if target is None and target_optional
            else resolve_target(target, out)
        )
        prepared = Prepared(call, resolved, out, inputs if layer is None else leaf.detach())
        if track_grad:
            prepared.leaf, prepared.graph_output = leaf, graph
    if layer is not None:
        names = {id(m): n for n, m in model.named_modules()}
        prepared.forward = AtLayer(forward, module, inputs)
        prepared.raw_inputs, prepared.layer_name = inputs, names.get(id(module), "")
    return prepared


def _streamed(
    run_rows: Callable[[torch.Tensor, Any, bool], Any],
    call: Any,
    forward: Forward,
    inputs: torch.Tensor,
    target: Target,
    size: int,
    on_chunk: ChunkResult,
    target_optional: bool,
    at_layer: bool,
) -> Prepared:
    """``prepare``'s first forward ``size`` rows at a time, each chunk's graph handed to
    ``on_chunk`` at once (see ``prepare``). The target is resolved for every example on the
    first chunk's output (its shape is every row's; a per-example target is checked whole)
    and scores each chunk's rows; ``"predicted"`` is each chunk's own argmax. The explained
    rows are the inputs, or with a layer its outputs, chunk after chunk."""
    n = inputs.shape[0]
    call.expect(n)  # the layout policy sees the whole work, as a chunked pass would show it
    outputs: list[torch.Tensor] = []
    leaves: list[torch.Tensor] = []
    results: list[Any] = []
    resolved: ResolvedTarget | None = None
    for start in range(0, n, size):
        stop = min(n, start + size)
        index = torch.arange(start, stop, device=inputs.device)
        chunk = inputs[start:stop]
        rows: torch.Tensor | None
        graph, leaf = _first_forward(
            functools.partial(run_rows, chunk, index, True), forward, inputs
        )
        out = graph.detach()
        _check_output(out, inputs, rows=stop - start)
        if resolved is None:
            whole = out[:1].expand(n, *out.shape[1:])  # every row's shape, without the values
            resolved = (
                ResolvedTarget("none")
                if target is None and target_optional
                else resolve_target(target, whole)
            )
        scoring, rows = resolved, index  # (rows: the chunk's examples, for the target)
        if isinstance(target, str):  # "predicted": this chunk's own predictions
            scoring = ResolvedTarget("index", index=out.reshape(out.shape[0], -1).argmax(dim=1))
            rows = None
        results.append(on_chunk(graph, leaf, rows, scoring))
        outputs.append(out)
        if at_layer:
            leaves.append(leaf.detach())
        del graph, leaf
    output = torch.cat(outputs)
    if isinstance(target, str):
        resolved = resolve_target(target, output)
    explained = torch.cat(leaves) if at_layer else inputs
    prepared = Prepared(call, resolved, output, explained)  # type: ignore[arg-type]
    prepared.chunk_results = results
    return prepared


def _first_forward(
    run: Callable[[], tuple[torch.Tensor, torch.Tensor]], forward: Forward, inputs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``run()``, with a failure of the model itself worded for the user."""
    try:
        return run()
    except _ModelError as wrapped:
        args = forward.args or None
        message = model_failure(forward.model, inputs, wrapped.__cause__, args, forward.kwargs)
        raise ValueError(message) from wrapped.__cause__


def _check_output(out: torch.Tensor, inputs: torch.Tensor, rows: int | None = None) -> None:
    """One output row per input row (``rows`` of them, a chunk's; else every row), finite."""
    expected = inputs.shape[0] if rows is None else rows
    if out.ndim == 0 or out.shape[0] != expected:
        got = tuple(out.shape) if rows is None else f"{tuple(out.shape)} for {rows} of them"
        raise ValueError(
            f"The model must return one row per example: `inputs` has {inputs.shape[0]} rows "
            f"but the output has shape {got}. Inputs must be batch first."
        )
    if out.is_floating_point() and not all_finite(out):
        check_finite_tensor("model output", out)


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
        raise TypeError(
            f"`{name}` must be None, a number or a tensor; got {type(baseline).__name__}."
        )
    check_finite_tensor(name, baseline)
    rows = per_row(baseline, inputs)
    if rows is None:
        raise ValueError(
            f"`{name}` of shape {tuple(baseline.shape)} does not broadcast to the inputs' shape "
            f"{tuple(inputs.shape)}; use shape {tuple(inputs.shape[1:])} (one example, shared) or "
            f"{tuple(inputs.shape)} (one per example)."
        )
    return rows


def per_row(value: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor | None:
    """``value`` as a copy of ``inputs``' shape, device and dtype: one example's shape is
    shared by every row, anything else broadcasts against the batch; None when it does not."""
    v = value.detach().to(device=inputs.device, dtype=inputs.dtype)
    if v.shape == inputs.shape[1:]:
        v = v.unsqueeze(0)
    try:
        return torch.broadcast_to(v, inputs.shape).clone()
    except RuntimeError:
        return None
