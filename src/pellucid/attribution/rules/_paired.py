"""Paired rules: decompositions that compare every row with a reference row (DeepLIFT).

:class:`PairedEngine` runs a model twice per chunk. First the reference rows, without a
graph: every operation in ``reference_ops`` keeps what its :class:`PairedRule` needs, in the
order the operations run. Then the explained rows: the ``k``-th such operation is paired
with the ``k``-th of the reference pass (the same operation on the same shape, else an
error naming it: data-dependent control flow cannot be decomposed), and its rule compares
the two. Only the explained rows carry a graph, so the backward pass is over N rows, not 2N.
A reference that all examples share runs on one row, broadcast against the batch
(:class:`BroadcastMismatch` where an operation's shapes do not allow that).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from pellucid._batching import chunks
from pellucid._targets import Forward
from pellucid.attribution.rules._engine import (
    Rule,
    RuleEngine,
    UnsupportedOperationError,
    _call_depends,
)

__all__ = [
    "JOINT",
    "BroadcastMismatch",
    "PairedEngine",
    "PairedForward",
    "PairedRule",
    "deeplift_chunks",
    "reference_output",
]


class BroadcastMismatch(UnsupportedOperationError):
    """A one-row reference does not broadcast against the batch at some operation (the
    caller reruns the reference with one row per example)."""


#: ``saved`` of a joint pass: the reference is the last row of the same batch.
JOINT = object()


class PairedRule(Rule):
    """A rule that compares every row with its reference row (DeepLIFT's multipliers).

    The engine runs the reference rows first, without a graph: there ``reference(op, x_ref)``
    returns ``(y_ref, saved)``. Then it runs the explained rows, and ``forward_paired(op, x,
    saved)`` returns ``(y, state)`` for ``backward``. ``saved`` must not alias tensors the
    model may still change in place (clone what is kept). In a joint pass ``saved`` is
    :data:`JOINT`: the batch's last row is the reference, and it gets a zero gradient.
    """

    def reference(
        self, op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
    ) -> tuple[torch.Tensor, Any]:
        raise TypeError(f"{type(self).__name__} must implement reference.")

    def forward_paired(
        self, op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, saved: Any
    ) -> tuple[torch.Tensor, Any]:
        raise TypeError(f"{type(self).__name__} must implement forward_paired.")


class PairedEngine(RuleEngine):
    """A :class:`RuleEngine` whose ``reference_ops`` get :class:`PairedRule` s (see above)."""

    def __init__(self, method: str, handlers: Any, model: Any, *, reference_ops: Any) -> None:
        super().__init__(method, handlers, model)
        self.reference_ops = frozenset(reference_ops)
        self._mode: str | None = None
        self._broadcast = False
        self._saved: list[tuple[str, tuple[int, ...], Any]] = []
        self._position, self._rows = 0, 0

    @contextmanager
    def reference_pass(self) -> Iterator[None]:
        """Run the model on reference rows, without a graph: every op in ``reference_ops``
        keeps what its :class:`PairedRule` needs, in the order the ops run."""
        self._mode, self._saved = "reference", []
        try:
            with torch.no_grad():
                yield
        finally:
            self._mode = None

    @contextmanager
    def paired_pass(self, *, broadcast: bool = False) -> Iterator[None]:
        """Run the model on the explained rows: the ``k``-th op in ``reference_ops`` is paired
        with the ``k``-th op of the reference pass (same op, same shape, else an error).
        With ``broadcast`` the reference ran on one row, whose leading dimension must be 1
        where the rows' is the batch (else :class:`BroadcastMismatch`)."""
        self._mode, self._position, self._broadcast = "paired", 0, broadcast
        try:
            yield
            if self._position != len(self._saved):
                name, shape, _ = self._saved[self._position]
                raise self._mismatch(f"`{name}` of shape {shape} never ran on the inputs")
        finally:
            self._mode, self._saved = None, []

    @contextmanager
    def joint_pass(self, rows: int) -> Iterator[None]:
        """Run the model on the explained rows followed by one shared reference row (``rows``
        in all): every op in ``reference_ops`` must see that batch first, else
        :class:`BroadcastMismatch`."""
        self._mode, self._rows = "joint", rows
        try:
            yield
        finally:
            self._mode = None

    def _mismatch(self, what: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(
            f"{self.method} needs the model to run the same operations on the baseline as on "
            f"the inputs, but operation {self._position} differs: {what} (in {self.where()}). "
            "Data-dependent control flow cannot be decomposed; use integrated_gradients."
        )

    def _dispatch(self, name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._mode is not None and name in self.reference_ops:
            return self._dispatch_paired(name, func, args, kwargs)
        if self._mode == "reference":  # nothing requires grad there: no rules needed
            return func(*args, **kwargs)
        return super()._dispatch(name, func, args, kwargs)

    def _paired_rule(
        self, name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> PairedRule:
        rule = self.handlers[name](self, name, func, args, kwargs)
        if not isinstance(rule, PairedRule):
            raise TypeError(f"The handler of `{name}` must return a PairedRule.")
        return rule

    def _dispatch_paired(
        self, name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return func(*args, **kwargs)
        shape = tuple(x.shape)
        if self._mode == "joint":
            if len(shape) == 0 or shape[0] != self._rows:
                raise BroadcastMismatch(f"`{name}`: rows {shape}, expected {self._rows} first")
            if not _call_depends(args, kwargs):
                return func(*args, **kwargs)
            rule = self._paired_rule(name, func, args, kwargs)
            return self._run_rule(name, func, args, kwargs, rule, JOINT)
        if self._mode == "reference":
            rule = self._paired_rule(name, func, args, kwargs)
            op, inplace = self._op(name, func, args, kwargs)
            y, saved = rule.reference(op, x)
            self._saved.append((name, shape, saved))
            return x.copy_(y) if inplace else y
        if self._position >= len(self._saved):
            raise self._mismatch(f"`{name}` of shape {shape} did not run on the baseline")
        ref_name, ref_shape, saved = self._saved[self._position]
        if self._broadcast and ref_name == name and ref_shape != shape:
            if len(shape) == 0 or ref_shape != (1, *shape[1:]):
                raise BroadcastMismatch(f"`{name}`: reference {ref_shape}, rows {shape}")
        elif (ref_name, ref_shape) != (name, shape):
            raise self._mismatch(
                f"`{ref_name}` of shape {ref_shape} on the baseline, `{name}` of shape {shape} "
                "on the inputs"
            )
        self._position += 1
        if not _call_depends(args, kwargs):
            return func(*args, **kwargs)
        rule = self._paired_rule(name, func, args, kwargs)
        return self._run_rule(name, func, args, kwargs, rule, saved)


#: Models whose shared reference row was seen to broadcast at every paired operation (the
#: batch comes first there): later calls append that row to the batch and run one pass.
_BATCH_FIRST: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _batch_first(model: Any) -> bool | None:
    """True or False once known for ``model``; None before (False if it cannot be known)."""
    try:
        return _BATCH_FIRST.get(model)
    except TypeError:  # not weakly referenceable: always the checked two passes
        return False


def _remember(model: Any, verdict: bool) -> None:
    try:
        _BATCH_FIRST[model] = verdict
    except TypeError:
        pass


def _is_shared(baseline: torch.Tensor, forward: Forward) -> bool:
    """Whether every example has the same baseline row and no per-example model argument:
    then one reference row serves every example."""
    return not forward.aligned and torch.equal(baseline, baseline[:1].expand_as(baseline))


class PairedForward(Forward):
    """Runs the baseline rows first (no graph; every non-linearity keeps its reference
    input and output), then the rows themselves with the rules that compare the two. Only
    the explained rows carry a graph, so the backward pass is over N rows, not 2N. When all
    examples share one baseline (zeros, a number, the mean of a background set) the
    reference pass runs on a single row whose activations broadcast against the batch;
    a model whose intermediate shapes do not allow that is rerun with all baseline rows.
    Once a model has shown that the batch comes first at every paired operation, later
    calls append the reference row to the batch and run a single pass (the separate pass
    over one row cost 17% of DeepLIFT on the digits SmallCNN).
    ``reference_output`` is the baselines' output of the last call, one row per input row."""

    def __init__(self, engine: PairedEngine, forward: Forward, baseline: torch.Tensor) -> None:
        self._adopt(forward)
        self.pools, self.convnet = (), False  # the rules see the model's own operations
        self.engine, self.baseline = engine, baseline
        self.shared = _is_shared(baseline, forward)
        self.reference_output: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, example_index: torch.Tensor | None = None) -> torch.Tensor:
        if self.shared and _batch_first(self.model) is not False:
            try:
                if _batch_first(self.model) is None:
                    # First sight of this model: the strict two-pass check (the one-row
                    # reference must broadcast at every paired operation), then the
                    # joint pass every call uses, so that results do not depend on history.
                    self._pair(x, example_index, shared=True)
                    _remember(self.model, True)
                    self.engine.records.clear()  # the joint pass records the rules again
                    self.engine.calls.clear()
                return self._joint(x)
            except BroadcastMismatch:
                _remember(self.model, False)
        return self._pair(x, example_index, shared=False)

    def _joint(self, x: torch.Tensor) -> torch.Tensor:
        """One pass over the rows and the shared reference row appended to them."""
        n = x.shape[0]
        rows = torch.cat([x, self.baseline[:1].to(x.dtype)])
        with self.engine.active(), self.engine.joint_pass(n + 1):
            out = super().__call__(rows, None)
        if out.ndim == 0 or out.shape[0] != n + 1:
            raise BroadcastMismatch(f"the output has shape {tuple(out.shape)}")
        self.reference_output = out[n:].detach().expand(n, *out.shape[1:])
        return out[:n]

    def _pair(
        self, x: torch.Tensor, example_index: torch.Tensor | None, *, shared: bool
    ) -> torch.Tensor:
        if shared:
            base, base_index = self.baseline[:1], None
        else:
            base, base_index = self.baseline, example_index
            if example_index is not None:
                base = base.index_select(0, example_index.to(base.device))
        base = base.to(x.dtype)
        try:  # the reference pass records nothing per layer: no module tracking (faster)
            with self.engine.active(track_modules=False), self.engine.reference_pass():
                reference = super().__call__(base, base_index)
        except UnsupportedOperationError:
            with self.engine.active(), self.engine.reference_pass():  # to name the layer
                super().__call__(base, base_index)
            raise

        with self.engine.active(), self.engine.paired_pass(broadcast=shared):
            out = super().__call__(x, example_index)
        if shared and reference.ndim > 0:
            reference = reference.expand(x.shape[0], *reference.shape[1:])
        self.reference_output = reference
        return out


def reference_output(forward: PairedForward) -> torch.Tensor:
    if forward.reference_output is None:
        raise RuntimeError("deeplift: the reference pass did not run.")
    return forward.reference_output


def deeplift_chunks(
    forward: PairedForward, target: Any, x: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    grads, diffs = [], []
    for start, stop in chunks(x.shape[0], size):
        index = torch.arange(start, stop, device=x.device)
        rows = x[start:stop].detach().requires_grad_(True)
        with torch.enable_grad():
            s_in = target.scores(forward(rows, index), index)
            (grad,) = torch.autograd.grad(s_in.sum(), rows)
        s_ref = target.scores(reference_output(forward), index)
        grads.append(grad)
        diffs.append((s_in - s_ref).detach())
    return torch.cat(grads), torch.cat(diffs)
