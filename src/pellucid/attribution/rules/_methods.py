"""What the public methods attach: each rule-based method's engine, for the method shell.

:func:`pellucid._shell.explaining` takes an ``engine=`` factory that it calls inside the
model-state guard, before the first forward. Here are those factories:

* :func:`rules_for`: guided backprop, deconvolution and LRP (the gradient with a table of
  rules attached), parameters frozen first;
* :class:`DeepLiftRules`: the baseline resolved on the inputs and the paired engine; its
  :meth:`~DeepLiftRules.gradients` gives the multipliers and the output differences, from
  the first forward's graph when one backward fits ``batch_size``, else chunk by chunk;
* :func:`rule_gradients`: a whole rule pass for a method that already runs inside the shell
  for something else (guided Grad-CAM's guided half).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from pellucid._evaluate import (
    Forward,
    Prepared,
    chunks,
    first_forward_rows,
    grad_batch_size,
    graph_gradient,
    pick_batch_size,
    prepare,
    prepared_gradients,
    scored_gradient,
)
from pellucid._targets import ResolvedTarget, Target
from pellucid.attribution._baselines import resolve_baseline
from pellucid.attribution.rules._deeplift import DEEPLIFT_REFERENCE_OPS, DEEPLIFT_RULES
from pellucid.attribution.rules._engine import Handler, RuleEngine, UnsupportedOperationError
from pellucid.attribution.rules._paired import PairedEngine, PairedForward
from pellucid.attribution.rules._tables import freeze_parameters

__all__ = ["DeepLiftRules", "rule_gradients", "rules_for"]


def rules_for(method: str, handlers: Mapping[str, Handler]) -> Callable[[Any, Any], RuleEngine]:
    """The shell's ``engine=`` for a method whose rules modify the gradient: inside the guard
    (which restores them) the parameters stop requiring grad, so that only tensors computed
    from the explained rows do, and a :class:`RuleEngine` with ``handlers`` runs the model."""

    def attach(model: Any, inputs: Any) -> RuleEngine:
        freeze_parameters(model)
        return RuleEngine(method, handlers, model)

    return attach


#: How DeepLIFT's engines treat each operation name (see ``RuleEngine._kind``): a function
#: of the name and of the constant table and reference operations only, never of a model,
#: so every call shares it instead of deciding again.
_DEEPLIFT_KINDS: dict[str, object] = {}


class DeepLiftRules:
    """The shell's ``engine=`` for DeepLIFT: every forward runs its rows with their baselines
    (a :class:`PairedForward`); :attr:`reference` is the baseline, resolved on the inputs.

    Args:
        baseline: the user's ``baseline`` (see :func:`pellucid.attribution.deeplift`).
        background: reference examples for ``baseline="mean"``.

    Raises:
        ValueError: `baseline` is ``"uniform"`` (random: pass the drawn tensor).
    """

    errors = (UnsupportedOperationError,)

    def __init__(self, baseline: Any, background: torch.Tensor | None) -> None:
        if isinstance(baseline, str) and baseline == "uniform":
            raise ValueError("`baseline='uniform'` is random; pass the drawn tensor to deeplift.")
        self.baseline, self.background = baseline, background
        self._reference: torch.Tensor | None = None
        self._engine: PairedEngine | None = None
        self._forward: PairedForward | None = None
        self._inputs: Any = None

    def __call__(self, model: Any, inputs: Any) -> DeepLiftRules:
        self._inputs = inputs  # the baseline is resolved once ``prepare`` checked them
        freeze_parameters(model)
        self._engine = PairedEngine(
            "deeplift",
            DEEPLIFT_RULES,
            model,
            reference_ops=DEEPLIFT_REFERENCE_OPS,
            kinds=_DEEPLIFT_KINDS,
        )
        return self

    @property
    def engine(self) -> PairedEngine:
        """The paired engine that runs the model's operations with DeepLIFT's rules.

        Raises:
            RuntimeError: the rules were not attached to a model yet.
        """
        if self._engine is None:
            raise RuntimeError("deeplift: the rules were not attached to a model.")
        return self._engine

    @property
    def reference(self) -> torch.Tensor:
        """The baseline, of the inputs' shape.

        Raises:
            RuntimeError: the rules were not attached to a model yet.
        """
        if self._reference is None:
            raise RuntimeError("deeplift: the rules were not attached to a model.")
        return self._reference

    @property
    def records(self) -> dict[str, str]:
        return self.engine.records

    @property
    def calls(self) -> Any:
        return self.engine.calls

    def wrap(self, forward: Forward) -> PairedForward:
        """The paired forward; ``prepare`` calls it after checking the inputs, before the
        model's first run, so the baseline is resolved here.

        Raises:
            ValueError: `baseline` is unknown or does not broadcast to the inputs.
        """
        x = self._inputs.detach()
        self._reference = resolve_baseline(
            self.baseline,
            Prepared(None, None, None, x),  # type: ignore[arg-type]
            background=self.background,
        )
        shared = self.baseline is None or isinstance(self.baseline, int | float | bool)
        shared = shared or self.baseline in ("zeros", "mean")
        self._forward = PairedForward(self.engine, forward, self._reference, shared=shared or None)
        return self._forward

    def on_chunk(
        self,
        output: torch.Tensor,
        leaf: torch.Tensor,
        index: torch.Tensor | None,
        target: ResolvedTarget,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk of ``prepare``'s first forward (see its ``grad_chunk``): the multipliers
        of its rows and their ``f(x) - f(baseline)``, from the chunk's graph and the
        reference pass that ran with it.

        Raises:
            RuntimeError: the rules were not attached to a model yet.
            ValueError: the target score does not depend on the inputs.
        """
        if self._forward is None:
            raise RuntimeError("deeplift: the rules were not attached to a model.")
        return _multipliers(self._forward, output, leaf, index, target)

    def gradients(
        self, prep: Prepared, batch_size: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The multipliers (d score / d inputs under the rules) and ``f(x) - f(baseline)``
        per example: from ``prepare``'s graph when it was kept, else chunk by chunk.

        Raises:
            TypeError: ``prep`` was not prepared with these rules.
        """
        forward = prep.forward
        if not isinstance(forward, PairedForward):
            raise TypeError("deeplift: the prepared forward must be a PairedForward.")
        if prep.chunk_results is not None:  # taken chunk by chunk by the first forward
            grads, diffs = zip(*prep.chunk_results, strict=True)
            return torch.cat(grads), torch.cat(diffs)
        if prep.graph_output is not None and prep.leaf is not None:
            return _multipliers(forward, prep.graph_output, prep.leaf, None, prep.target)
        x = prep.inputs
        size = grad_batch_size(batch_size, x[0].numel(), total=x.shape[0], like=x)
        return _chunked(forward, prep.target, x, size)


def _reference_output(forward: PairedForward) -> torch.Tensor:
    if forward.reference_output is None:
        raise RuntimeError("deeplift: the reference pass did not run.")
    return forward.reference_output


def _chunked(
    forward: PairedForward, target: ResolvedTarget, x: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    grads, diffs = [], []
    forward.expect(x.shape[0])
    for start, stop in chunks(x.shape[0], size):
        index = torch.arange(start, stop, device=x.device)
        rows = x[start:stop].detach().requires_grad_(True)
        with torch.enable_grad():
            out = forward(rows, index)
        grad, diff = _multipliers(forward, out, rows, index, target)
        grads.append(grad)
        diffs.append(diff)
    return torch.cat(grads), torch.cat(diffs)


def _multipliers(
    forward: PairedForward,
    output: torch.Tensor,
    leaf: torch.Tensor,
    index: torch.Tensor | None,
    target: ResolvedTarget,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The multipliers (d score / d ``leaf`` through the rules' graph of ``output``) and
    ``f(x) - f(baseline)`` per row, from the reference pass that ran with ``output``."""
    grad, scores = scored_gradient(output, leaf, index, target)
    return grad, scores - target.scores(_reference_output(forward), index)


def rule_gradients(
    method: str,
    handlers: Mapping[str, Handler],
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target,
    batch_size: int | None,
    forward_args: Any,
    forward_kwargs: Mapping[str, Any] | None,
    output: Any,
    max_memory: Any = None,
) -> tuple[Prepared, torch.Tensor, RuleEngine]:
    """Prepare, then the gradient of the target w.r.t. the inputs with ``handlers`` attached
    (``batch_size`` rows at a time, or as many as ``max_memory`` holds on this pass; without
    a budget the first forward's graphs give it, the model runs once).

    For a method already inside the shell (guided Grad-CAM's guided half); must run inside
    ``model_guard`` (the parameters' ``requires_grad`` is switched off).
    """
    engine = rules_for(method, handlers)(model, inputs)
    rows = first_forward_rows(inputs, batch_size) if max_memory is None else None
    prep = prepare(
        model,
        inputs,
        target=target,
        forward_args=forward_args,
        forward_kwargs=forward_kwargs,
        output=output,
        wrap=engine.wrap,
        passthrough=engine.errors,
        track_grad=rows is not None,  # one graph, or one per chunk (see ``prepare``)
        grad_chunk=rows,
        on_chunk=graph_gradient,
    )
    if max_memory is not None:
        batch_size = pick_batch_size(max_memory, method, prep.forward, prep.target, prep.inputs)
    return prep, prepared_gradients(prep, batch_size), engine
