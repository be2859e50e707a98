"""Paired rules: decompositions that compare every row with a reference row (DeepLIFT).

:class:`PairedEngine` runs a model twice per chunk. First the reference rows, without a
graph: every operation in ``reference_ops`` keeps what its :class:`PairedRule` needs, in the
order the operations run. Then the explained rows: the ``k``-th such operation is paired
with the ``k``-th of the reference pass (the same operation on the same shape, else an
error naming it: data-dependent control flow cannot be decomposed), and its rule compares
the two. Only the explained rows carry a graph, so the backward pass is over N rows, not 2N.
A reference that all examples share runs on one row, broadcast against the batch
(:class:`BroadcastMismatch` where an operation's shapes do not allow that), or rides with
the batch as its last row in a single pass: the reference-pass strategies
:class:`TwoPasses` and :class:`JointPass` choose. When a call's rows come in chunks, the
joint pass runs with the first chunk only and keeps the reference row's run at every paired
operation (:func:`reference_run`); the later chunks run alone, paired with those, by the
model's plan or by the engine's paired pass (:meth:`PairedForward._bound_pass`), so the
reference row runs, and is differentiated through, once per call.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from pellucid._evaluate import Forward
from pellucid.attribution.rules._engine import (
    _GENERAL,
    Rule,
    RuleEngine,
    UnsupportedOperationError,
    _Mode,
)
from pellucid.attribution.rules._plan import JointPlan, learn, plan_for, remember

__all__ = [
    "BroadcastMismatch",
    "PairedEngine",
    "PairedForward",
    "PairedRule",
    "scaled_rows",
]


class BroadcastMismatch(UnsupportedOperationError):
    """A one-row reference does not broadcast against the batch at some operation (the
    caller reruns the reference with one row per example)."""


Op = Callable[..., torch.Tensor]


class PairedRule(Rule):
    """A rule that compares every row with its reference row (DeepLIFT's multipliers).

    ``evaluate(op, *xs) -> (y, aux)`` runs the operation (``aux``: what else the rule needs
    of a run, e.g. max pooling's argmax; None by default). The reference rows run first,
    without a graph; the engine keeps their operands, output and ``aux``. Then for the
    explained rows ``pair(op, xs, y, aux, refs, y_ref, aux_ref)`` returns the state of
    ``backward``. The references may be one row that broadcasts against the batch.
    """

    def evaluate(self, op: Op, *xs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return op(*xs), None

    def pair(
        self,
        op: Op,
        xs: tuple[torch.Tensor, ...],
        y: torch.Tensor,
        aux: Any,
        refs: tuple[torch.Tensor, ...],
        y_ref: torch.Tensor,
        aux_ref: Any,
    ) -> Any:
        raise TypeError(f"{type(self).__name__} must implement pair.")

    def joint_forward(self, op: Op, *xs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """``(y, state)`` for a batch whose last row is the shared reference (a joint pass):
        :meth:`evaluate` on the whole batch, :meth:`pair` of its rows with its last row."""
        y, aux = self.evaluate(op, *xs)
        head = tuple(x[:-1] for x in xs), y[:-1], _rows(aux, _HEAD)
        last = tuple(x[-1:] for x in xs), y[-1:], _rows(aux, _LAST)
        return y, self.pair(op, *head, *last)

    def joint_backward(self, op: Op, state: Any, grad: torch.Tensor) -> Any:
        """The operands' gradients for a joint pass's batch: :meth:`backward` of the rows,
        and zero for the reference row (the explained scores do not depend on it)."""
        grads = self.backward(op, state, grad[:-1])
        if isinstance(grads, torch.Tensor):
            grads = (grads,)
        return tuple(None if g is None else _padded(g) for g in grads)


def _padded(g: torch.Tensor) -> torch.Tensor:
    """``g`` with a zero row appended."""
    out = g.new_empty(g.shape[0] + 1, *g.shape[1:])
    out[:-1].copy_(g)
    out[-1:].zero_()
    return out


def scaled_rows(grad: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """``grad * state`` on every row but the last, zero on the last: one pass for an
    element-wise rule's :meth:`PairedRule.joint_backward` (no copy into a padded tensor)."""
    out = torch.empty_like(grad, memory_format=torch.contiguous_format)
    torch.mul(grad[:-1], state, out=out[:-1])
    out[-1:].zero_()
    return out


def _rows(value: Any, rows: slice) -> Any:
    if isinstance(value, torch.Tensor):
        return value[rows]
    if isinstance(value, tuple):
        return tuple(_rows(v, rows) for v in value)
    return value


_HEAD, _LAST = slice(None, -1), slice(-1, None)


class _Bound(Rule):
    """A :class:`PairedRule` with its saved reference run (operands, output, ``aux``)."""

    def __init__(self, rule: PairedRule, saved: Any) -> None:
        self.rule, self.saved, self.label, self.arity = rule, saved, rule.label, rule.arity

    def forward(self, op: Op, *xs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        y, aux = self.rule.evaluate(op, *xs)
        refs, y_ref, aux_ref = self.saved
        return y, self.rule.pair(op, xs, y, aux, refs, y_ref, aux_ref)

    def backward(self, op: Op, state: Any, grad: torch.Tensor) -> Any:
        return self.rule.backward(op, state, grad)


class _Joint(Rule):
    """A :class:`PairedRule` in a joint pass: the reference is the batch's last row, which
    gets a zero gradient."""

    def __init__(self, rule: PairedRule) -> None:
        self.rule, self.label, self.arity = rule, rule.label, rule.arity
        self.forward = rule.joint_forward  # type: ignore[method-assign]
        self.backward = rule.joint_backward  # type: ignore[method-assign]


def reference_run(
    name: str, rule: PairedRule, op: Op, refs: tuple[Any, ...]
) -> tuple[str, tuple[tuple[int, ...], ...], Any, PairedRule]:
    """A paired op's run on the reference row alone, as a reference pass keeps it (name,
    operand shapes, ``(operands, output, aux)``) and its rule: what a later paired pass of
    other rows pairs them with."""
    with torch.no_grad():
        y, aux = rule.evaluate(op, *refs)
    shapes = tuple(tuple(t.shape) if isinstance(t, torch.Tensor) else () for t in refs)
    return name, shapes, (refs, y, aux), rule


def _shape_of(value: Any) -> Any:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _last_row(t: Any, rows: int) -> Any:
    """A joint batch's operand for the reference row alone (a copy): its last row when it
    has the batch's rows, else all of it (a constant)."""
    if not isinstance(t, torch.Tensor):
        return t
    t = t.detach()
    return (t[-1:] if t.ndim and t.shape[0] == rows else t).clone()


class PairedEngine(RuleEngine):
    """A :class:`RuleEngine` whose ``reference_ops`` get :class:`PairedRule` s (see above)."""

    def __init__(
        self,
        method: str,
        handlers: Any,
        model: Any,
        *,
        reference_ops: Any,
        kinds: dict[str, object] | None = None,
    ) -> None:
        super().__init__(method, handlers, model)
        self.reference_ops = frozenset(reference_ops)
        if kinds is not None:  # decisions shared by every engine of one constant table
            self._kinds = kinds
        self._mode: str | None = None
        self._broadcast = False
        self._saved: list[tuple[str, tuple[tuple[int, ...], ...], Any]] = []
        self._position, self._rows = 0, 0
        self._capture: list[tuple[str, tuple[tuple[int, ...], ...], Any, PairedRule]] | None = None

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
    def paired_pass(
        self, *, broadcast: bool = False, saved: list[tuple[str, Any, Any]] | None = None
    ) -> Iterator[None]:
        """Run the model on the explained rows: the ``k``-th op in ``reference_ops`` is paired
        with the ``k``-th op of the reference pass (same op, same shape, else an error).
        With ``broadcast`` the reference ran on one row, whose leading dimension must be 1
        where the rows' is the batch (else :class:`BroadcastMismatch`). ``saved``: the
        references a joint pass captured, instead of a reference pass's.

        Raises:
            UnsupportedOperationError: the explained rows ran other operations than the
                reference rows (data-dependent control flow).
            BroadcastMismatch: with ``broadcast``, an operation's shapes do not let the one-row
                reference broadcast against the batch.
        """
        self._mode, self._position, self._broadcast = "paired", 0, broadcast
        if saved is not None:
            self._saved = saved
        try:
            yield
            if self._position != len(self._saved):
                name, shapes, _ = self._saved[self._position]
                raise self._mismatch(f"`{name}` of shape {shapes[0]} never ran on the inputs")
        finally:
            self._mode, self._saved = None, []

    def joint_pass(
        self,
        call: Callable[[], Any],
        rows: int,
        *,
        capture: list[tuple[str, Any, Any, PairedRule]] | None = None,
    ) -> Any:
        """``call()`` (a model call) with the rules attached, on the explained rows followed
        by one shared reference row (``rows`` in all): every op in ``reference_ops`` must see
        that batch first, else :class:`BroadcastMismatch`. (A plain call, not a context
        manager: it runs on every DeepLIFT call.) ``capture`` gets every paired op's
        reference run (see :func:`reference_run`), in order, for later paired passes."""
        if self.ledger is not None:
            self.ledger.begin()
        self._mode, self._rows, self._capture = "joint", rows, capture
        try:
            with _Mode(self):
                return call()
        finally:
            self._mode, self._capture = None, None

    def _mismatch(self, what: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(
            f"{self.method} needs the model to run the same operations on the baseline as on "
            f"the inputs, but operation {self._position} differs: {what} (in {self.where()}). "
            "Data-dependent control flow cannot be decomposed; use integrated_gradients."
        )

    def _kind(self, name: str) -> object:
        return _GENERAL if name in self.reference_ops else super()._kind(name)

    def _dispatch(self, name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._mode is not None and name in self.reference_ops:
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                rule = self.handlers[name](self, name, func, args, kwargs)
                if isinstance(rule, PairedRule):
                    return self._dispatch_paired(name, func, args, kwargs, rule)
                if rule is not None:
                    raise TypeError(f"The handler of `{name}` must return a PairedRule.")
        if self._mode == "reference":  # nothing requires grad there: no rules needed
            return func(*args, **kwargs)
        return super()._dispatch(name, func, args, kwargs)

    def _dispatch_paired(
        self, name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], rule: PairedRule
    ) -> Any:
        xs = args[: rule.arity]
        if self._mode == "joint":
            for t in xs:
                if isinstance(t, torch.Tensor) and t.requires_grad:
                    if t.ndim == 0 or t.shape[0] != self._rows:
                        raise BroadcastMismatch(f"`{name}`: rows {tuple(t.shape)}")
            if self._capture is not None:  # before an in-place op writes the operands
                op, _ = self._op(name, func, args, kwargs, rule.arity)
                refs = tuple(_last_row(t, self._rows) for t in xs)
                self._capture.append(reference_run(name, rule, op, refs))
            return self._run_rule(name, func, args, kwargs, _Joint(rule))
        shapes = tuple(tuple(t.shape) if isinstance(t, torch.Tensor) else () for t in xs)
        if self._mode == "reference":
            op, inplace = self._op(name, func, args, kwargs, rule.arity)
            y, aux = rule.evaluate(op, *xs)
            self._saved.append((name, shapes, (tuple(t.clone() for t in xs), y.clone(), aux)))
            return xs[0].copy_(y) if inplace else y
        if self._position >= len(self._saved):
            raise self._mismatch(f"`{name}` of shape {shapes[0]} did not run on the baseline")
        ref_name, ref_shapes, saved = self._saved[self._position]
        if ref_name != name or len(ref_shapes) != len(shapes):
            raise self._mismatch(f"`{ref_name}` on the baseline, `{name}` on the inputs")
        for ref_shape, shape in zip(ref_shapes, shapes, strict=True):
            if ref_shape == shape:
                continue
            if not self._broadcast or len(shape) == 0 or ref_shape != (1, *shape[1:]):
                if self._broadcast:
                    raise BroadcastMismatch(f"`{name}`: reference {ref_shape}, rows {shape}")
                raise self._mismatch(
                    f"`{name}` of shape {ref_shape} on the baseline, of shape {shape} on the inputs"
                )
        self._position += 1
        return self._run_rule(name, func, args, kwargs, _Bound(rule, saved))


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


def _same_rows(a: Any, b: Any) -> bool:
    """Whether two runs of the same rows agree up to the rounding of differently sized
    batches (a GPU's TF32 convolutions round at about 1e-3)."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        return False
    a, b = a.detach(), b.detach()
    if not a.is_floating_point():
        return torch.equal(a, b)
    if a.dtype == torch.float64:
        rtol = 1e-9
    else:
        rtol = 1e-4 if a.device.type == "cpu" and a.dtype == torch.float32 else 1e-2
    scale = b.abs().max().clamp_min(torch.finfo(b.dtype).tiny)
    return bool((a - b).abs().max() <= rtol * scale)


def _is_shared(baseline: torch.Tensor, forward: Forward) -> bool:
    """Whether every example has the same baseline row and no per-example model argument:
    then one reference row serves every example."""
    return not forward.aligned and torch.equal(baseline, baseline[:1].expand_as(baseline))


class TwoPasses:
    """Reference-pass strategy: the baseline rows run first, then the explained rows. When
    all examples share one baseline the reference runs on one row, which must broadcast
    at every paired operation; else (:class:`BroadcastMismatch`) on all baseline rows."""

    def __call__(
        self, forward: PairedForward, x: torch.Tensor, index: torch.Tensor | None
    ) -> torch.Tensor:
        if forward.shared and _batch_first(forward.model) is not False:
            try:
                return forward._pair(x, index, shared=True)
            except BroadcastMismatch:
                _remember(forward.model, False)
        return forward._pair(x, index, shared=False)


class JointPass(TwoPasses):
    """Reference-pass strategy: once a model has shown (by the checked two passes, on first
    sight) that the batch comes first at every paired operation, a shared reference row is
    appended to the batch and one pass serves both. Results do not depend on history: the
    first sight's two passes only decide; the joint pass computes. Measured against
    :class:`TwoPasses` with its one-row reference (process CPU time, best of interleaved
    rounds, one thread): within noise on the small reference models (SmallCNN 1.01x,
    MLP 0.99x, TinyResNet 1.05x the two passes' time) and 9% faster on torchvision's
    resnet18 at 3x64x64, batch 8 (0.908x and 0.910x in two runs), where it keeps DeepLIFT
    within 1.2x of its compute floor (``benchmarks/bench_decomposition.py --resnet18``);
    so it stays. :data:`REFERENCE_PASS` is the single place that chooses."""

    def __call__(
        self, forward: PairedForward, x: torch.Tensor, index: torch.Tensor | None
    ) -> torch.Tensor:
        if not forward.shared or _batch_first(forward.model) is False:
            return super().__call__(forward, x, index)
        try:
            if _batch_first(forward.model) is None:
                return self._first_sight(forward, x, index)
            return forward._joint(x)
        except BroadcastMismatch:
            _remember(forward.model, False)
        return forward._pair(x, index, shared=False)

    @staticmethod
    def _first_sight(
        forward: PairedForward, x: torch.Tensor, index: torch.Tensor | None
    ) -> torch.Tensor:
        """The checked two passes, then the joint pass, whose rows must give the same
        outputs: a model that mixes rows in eval mode (a batch statistic) would see the
        reference row among the explained ones, so it keeps separate passes instead."""
        separate = forward._pair(x, index, shared=True)
        reference = forward.reference_output
        forward.engine.clear_records()  # the joint pass records the rules again
        joint = forward._joint(x)
        joint_reference = forward.reference_output
        if _same_rows(joint, separate) and _same_rows(joint_reference, reference):
            _remember(forward.model, True)
            return joint
        _remember(forward.model, False)
        forward.engine.clear_records()
        return forward._pair(x, index, shared=False)


#: The strategy DeepLIFT uses.
REFERENCE_PASS: TwoPasses = JointPass()


class PairedForward:
    """Runs every row with its reference (see the module doc): only the explained rows
    carry a graph, so the backward pass is over N rows, not 2N. How the references run is
    ``strategy``'s choice (:class:`TwoPasses`, :class:`JointPass`; default
    :data:`REFERENCE_PASS`). ``reference_output`` is the baselines' output of the last
    call, one row per input row. A composition around the method's ``Forward``: the same
    model call, in the given layout (the rules see the model's own operations)."""

    def __init__(
        self,
        engine: PairedEngine,
        forward: Forward,
        baseline: torch.Tensor,
        strategy: TwoPasses | None = None,
        *,
        shared: bool | None = None,
    ) -> None:
        self.base = forward.with_model(forward.model, kernels="off")
        self.model, self.n_examples = forward.model, forward.n_examples
        self.engine, self.baseline = engine, baseline
        self._reference = baseline[:1]  # the shared row a joint pass appends
        self.strategy = REFERENCE_PASS if strategy is None else strategy
        # ``shared=True``: every row's baseline is known to be the same (a number, zeros)
        self.shared = not forward.aligned if shared else _is_shared(baseline, forward)
        self.reference_output: torch.Tensor | None = None
        # a call's rows in chunks (``expect``): the first joint pass keeps the reference
        # row's run at every paired operation (``_runs``), later chunks pair with those
        self._expected: int | None = None
        self._done = 0
        self._runs: list[Any] | None = None
        self._reference_row: torch.Tensor | None = None

    @property
    def aligned(self) -> bool:
        return self.base.aligned

    def expect(self, rows: int) -> None:
        """``rows`` rows are coming, in chunks: the shared reference row then runs with the
        first chunk only (its layout is the given one: nothing else to plan)."""
        self._expected, self._done = rows, 0
        self._runs = self._reference_row = None

    def __call__(self, x: torch.Tensor, example_index: torch.Tensor | None = None) -> torch.Tensor:
        return self.strategy(self, x, example_index)

    def _joint(self, x: torch.Tensor) -> torch.Tensor:
        """One pass over the rows and the shared reference row appended to them. In a call
        whose rows come in chunks (``expect``), that pass also keeps the reference row's
        run at every paired operation, and the later chunks run alone, paired with those
        (``_bound_pass``): the reference runs once per call, not once per chunk."""
        n, reference = x.shape[0], self._reference
        if self._runs is not None and x.requires_grad:
            return self._bound_pass(x)
        more = self._expected is not None and self._done + n < self._expected
        rows = torch.cat([x, reference if reference.dtype == x.dtype else reference.to(x.dtype)])
        out = self._planned(rows, n + 1, capture=more and x.requires_grad)
        if out.ndim == 0 or out.shape[0] != n + 1:
            self._runs = None
            raise BroadcastMismatch(f"the output has shape {tuple(out.shape)}")
        self._done += n
        self._reference_row = out[n:].detach()
        self.reference_output = self._reference_row.expand(n, *out.shape[1:])
        return out[:n]

    def _planned(self, rows: torch.Tensor, n_rows: int, *, capture: bool = False) -> Any:
        """The joint pass: by the model's plan when it has one and the pass matches it, else
        by the engine (whose first joint pass with a graph on a model gives the plan; see
        ``_plan``). A pass without a graph (a first forward that keeps none) has nothing to
        check against the plan: the engine runs it. With ``capture``, the reference row's
        run at every paired operation is kept (``_runs``), for the later chunks."""
        plan = plan_for(self.model) if rows.requires_grad else False
        runs: list[Any] | None = [] if capture else None

        def call() -> Any:
            return self.base(rows, None)

        if isinstance(plan, JointPlan):
            captured: list[Any] | None = [] if capture else None
            out = plan.run(call, rows, n_rows, BroadcastMismatch, capture=captured)
            if out is not None:
                self.engine.replay(plan.records)
                if captured is not None:
                    self._runs = [
                        reference_run(
                            site.name, getattr(site.rule, "rule", site.rule), site.op, (x,)
                        )
                        for site, x in captured
                    ]
                return out
            remember(self.model, False)
        if plan is not None:
            out = self.engine.joint_pass(call, n_rows, capture=runs)
        else:
            before = self.engine.snapshot_records()
            out = self.engine.joint_pass(call, n_rows, capture=runs)
            remember(self.model, learn(self.model, self.engine, out, rows, before) or False)
        if runs is not None:
            self._runs = runs
        return out

    def _bound_pass(self, x: torch.Tensor) -> torch.Tensor:
        """A later chunk's rows alone, every paired operation paired with the reference
        row's run the first chunk kept: by the model's plan when it holds (the graph must
        match it, as a joint pass's must), else by the engine's paired pass."""
        runs, n = self._runs, x.shape[0]
        if runs is None or self._reference_row is None:
            raise RuntimeError("deeplift: no reference run was kept for this chunk.")
        plan, out = plan_for(self.model), None
        # a copy, as the joint pass's concatenation is (not the leaf itself): its node is
        # where the plan's signature stops
        rows = x.clone()
        if isinstance(plan, JointPlan):
            bound = [(name, _Bound(rule, saved)) for name, _, saved, rule in runs]
            out = plan.run(lambda: self.base(rows, None), rows, n, BroadcastMismatch, bound=bound)
            if out is not None:
                self.engine.replay(plan.records)
            else:
                remember(self.model, False)
        if out is None:
            saved = [(name, shapes, kept) for name, shapes, kept, _ in runs]
            with self.engine.active(), self.engine.paired_pass(broadcast=True, saved=saved):
                out = self.base(rows, None)
        if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != n:
            raise BroadcastMismatch(f"the output has shape {_shape_of(out)}")
        self._done += n
        self.reference_output = self._reference_row.expand(n, *out.shape[1:])
        return out

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
        with self.engine.active(), self.engine.reference_pass():
            reference = self.base(base, base_index)

        with self.engine.active(), self.engine.paired_pass(broadcast=shared):
            out = self.base(x, example_index)
        if shared and reference.ndim > 0:
            reference = reference.expand(x.shape[0], *reference.shape[1:])
        self.reference_output = reference
        return out
