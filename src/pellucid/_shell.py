"""The method shell: validate -> guard the model -> prepare -> build the Explanation, once.

Every public attribution method is its signature, its docstring and a tensor-only core::

    def saliency(model, inputs, *, target=None, absolute=True, ..., eval_mode=None):
        check_bool("absolute", absolute)                      # its own arguments
        with explaining("saliency", locals(), track_grad=True) as run:
            grad = run.gradients()                            # the core: tensors only
            run.result(grad.abs() if absolute else grad, params={"absolute": absolute})
        return run.explanation

:func:`explaining` takes the shared arguments from the call's ``locals()`` (``model``,
``inputs``, ``target``, ``layer``, ``batch_size``, ``max_memory``, ``forward_args``,
``forward_kwargs``, ``output``, ``eval_mode``), enters :func:`~pellucid._state.model_guard`,
runs :func:`~pellucid._evaluate.prepare` once, and on a clean exit builds the
:class:`~pellucid.explanation.Explanation` from what the core handed to :meth:`Run.result`:
the method name, the resolved target, ``batch_size`` and the layer's name in ``params``.
With ``max_memory`` (checked before the model runs), ``run.batch_size`` is the one
:func:`~pellucid._evaluate.pick_batch_size` picks from the method's per-row cost and one
measured row; ``params`` then holds both.

Rule-based methods (DeepLIFT, LRP, guided backprop, deconvolution) and the attention
methods change how the model runs: they pass ``engine=``, a factory called inside the
guard before ``prepare`` with ``(model, inputs)``. What it returns wraps every forward of
the call (``wrap(forward)``, the first one included), names the exceptions that pass
unchanged (``errors``), and is the core's ``run.engine``; when it keeps ``records`` and
``calls`` (the rule engines), they become ``extras["rules"]`` and ``extras["rule_calls"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from pellucid._evaluate import (
    Prepared,
    check_memory_options,
    first_forward_rows,
    graph_gradient,
    path_gradients,
    pick_batch_size,
    prepare,
    prepared_gradients,
    target_scores,
)
from pellucid._state import model_guard
from pellucid._targets import ResolvedTarget
from pellucid.explanation import Explanation

__all__ = ["Run", "check_bool", "explaining"]

#: The arguments the shell handles; everything else belongs to the method's core.
SHARED = (
    "model",
    "inputs",
    "target",
    "layer",
    "batch_size",
    "max_memory",
    "forward_args",
    "forward_kwargs",
)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool, else a TypeError naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False; got {value!r}.")
    return value


class Run:
    """One call of a method inside the shell: the prepared evaluation and its result."""

    def __init__(
        self, name: str, prep: Prepared, batch_size: int | None, engine: Any = None
    ) -> None:
        self.name, self.prep, self.batch_size, self.engine = name, prep, batch_size, engine
        self._explanation: Explanation | None = None
        self._result: dict[str, Any] | None = None
        self.max_memory: Any = None  # the budget as given, when batch_size was picked from it

    # what the core works with
    @property
    def inputs(self) -> torch.Tensor:
        """The explained rows (a layer's activations with ``layer=``)."""
        return self.prep.inputs

    def gradients(self) -> torch.Tensor:
        """d target score / d explained rows: from ``prepare``'s graph when it was kept,
        else ``batch_size`` rows at a time."""
        return prepared_gradients(self.prep, self.batch_size)

    def path_gradients(
        self,
        per_example: int,
        make_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        combine: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Per example, the sum of ``combine(grad, example, step)`` over ``per_example``
        virtual rows ``make_rows(example, step)`` (see
        :func:`~pellucid._evaluate.path_gradients`)."""
        return path_gradients(
            self.prep.forward,
            self.prep.target,
            self.prep.inputs,
            per_example=per_example,
            make_rows=make_rows,
            combine=combine,
            batch_size=self.batch_size,
        )

    def scores(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Target scores, one per example: of the explained inputs (from ``prepare``'s
        forward) or of ``rows`` standing for them (one row per example, no graph)."""
        if rows is None:
            return self.prep.target.scores(self.prep.output, None)
        index = torch.arange(rows.shape[0], device=rows.device)
        return target_scores(
            self.prep.forward, self.prep.target, rows, index, batch_size=self.batch_size
        )

    def result(
        self,
        attributions: torch.Tensor,
        *,
        params: Mapping[str, Any] | None = None,
        extras: Mapping[str, Any] | None = None,
        baseline: torch.Tensor | None = None,
        inputs: torch.Tensor | None = None,
    ) -> None:
        """Hand over the core's result (``inputs`` defaults to the explained rows)."""
        self._result = {
            "attributions": attributions,
            "params": dict(params or {}),
            "extras": dict(extras or {}),
            "baseline": baseline,
            "inputs": self.prep.inputs if inputs is None else inputs,
        }

    @property
    def explanation(self) -> Explanation:
        """The :class:`Explanation` built when the ``with`` block ended."""
        if self._explanation is None:
            raise RuntimeError(f"{self.name}: the method's core returned no result.")
        return self._explanation

    def _build(self) -> None:
        if self._result is None:  # a core that returns something else (``attention_maps``)
            return
        r = self._result
        params = {**r["params"], "batch_size": self.batch_size}
        if self.max_memory is not None:
            params["max_memory"] = self.max_memory
        extras = r["extras"]
        records = getattr(self.engine, "records", None)  # (properties: each asked once)
        calls = getattr(self.engine, "calls", None) if records is not None else None
        if records is not None and calls is not None:
            extras = {**extras, "rules": dict(records), "rule_calls": dict(calls)}
        if self.prep.layer_name is not None:
            params["layer"] = self.prep.layer_name
        self._explanation = Explanation(
            attributions=r["attributions"],
            inputs=r["inputs"],
            method=self.name,
            target=self.prep.target.describe(),
            baseline=r["baseline"],
            params=params,
            extras=extras,
        )


@contextmanager
def explaining(
    name: str,
    call: Mapping[str, Any],
    *,
    track_grad: bool = False,
    engine: Callable[[Any, Any], Any] | None = None,
    work: int | None = None,
    **prepare_kwargs: Any,
) -> Iterator[Run]:
    """Guard the model, prepare the call's inputs and target, and build the Explanation.

    Args:
        name: the method's registered name.
        call: the method's arguments (its ``locals()`` on entry).
        track_grad: keep the first forward's graph when one backward over all rows fits
            ``batch_size`` (methods with a single gradient pass).
        engine: ``engine(model, inputs)``, called inside the guard before ``prepare``: its
            result's ``wrap(forward)`` runs every forward of the call, its ``errors`` pass
            unchanged; it is ``run.engine`` (see the module doc).
        work: model rows per example the call evaluates, when known: ``max_memory`` never
            picks a larger ``batch_size`` than the work needs.
        prepare_kwargs: further arguments of :func:`~pellucid._evaluate.prepare`.
    """
    model, inputs, batch_size = call["model"], call["inputs"], call.get("batch_size")
    layer, max_memory = call.get("layer"), call.get("max_memory")
    budget = check_memory_options(batch_size, max_memory)
    # rows per backward: the first forward keeps one graph for them all, or runs that many
    # rows at a time and hands each chunk's graph to the method's gradient (no second pass);
    # under a budget, as many as it holds, picked before that forward (no layer: a layer's
    # rows are its outputs, measured after it)
    picked: list[int] = []

    def fitting(forward: Any, explained: torch.Tensor) -> int:
        n = explained.shape[0]
        total = None if work is None else max(1, n * work)
        # the probe's backward is estimated from its forward: any score ends the graph
        size = pick_batch_size(
            max_memory, name, forward, ResolvedTarget("none"), explained, total=total
        )
        picked.append(size)
        return size

    rows: int | Callable[[Any, torch.Tensor], int] | None = None
    if track_grad and budget is None:
        rows = first_forward_rows(inputs, batch_size)
    elif track_grad and layer is None:
        rows = fitting

    with model_guard(model, eval_mode=call.get("eval_mode"), method=name):
        attached = None
        if engine is not None:
            attached = engine(model, inputs)
            prepare_kwargs = {"wrap": attached.wrap, "passthrough": attached.errors} | (
                prepare_kwargs
            )
        prep = prepare(
            model,
            inputs,
            target=call.get("target"),
            forward_args=call.get("forward_args"),
            forward_kwargs=call.get("forward_kwargs"),
            output=call.get("output"),
            layer=layer,
            track_grad=rows is not None,
            grad_chunk=rows,
            on_chunk=getattr(attached, "on_chunk", graph_gradient),
            **prepare_kwargs,
        )
        if picked:
            batch_size = picked[0]
        elif budget is not None:
            n = prep.inputs.shape[0]
            batch_size = pick_batch_size(
                max_memory,
                name,
                prep.forward,
                prep.target,
                prep.inputs,
                total=None if work is None else max(1, n * work),
            )
        run = Run(name, prep, batch_size, attached)
        run.max_memory = max_memory
        yield run
        run._build()
