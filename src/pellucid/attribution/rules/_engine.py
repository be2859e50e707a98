"""Rules attached to the operations a model actually executes, not to its module types.

Rule-based methods (guided backprop, deconvolution, DeepLIFT, LRP) change how gradients
flow through some operations. Module hooks get this wrong when a ReLU module is called
twice, when the model uses ``F.relu`` or ``torch.relu``, or when it adds in place
(``out += x``). Here a ``TorchFunctionMode`` is active only while the model runs: every
torch function called on a tensor that depends on the explained inputs is seen, and

* an operation with a rule runs through the rule (an ``autograd.Function`` whose backward is
  the rule's),
* a linear or structural operation (add, reshape, cat, conv with the ordinary gradient
  where the method wants it, ...) runs unchanged,
* any other operation on input-dependent tensors raises :class:`UnsupportedOperationError`
  naming it: there is no silent fallback to plain gradients.

Dependence is tracked by ``requires_grad``: the method switches off the parameters' flags
inside the model-state guard, so only tensors computed from the explained rows require grad.
The module running each operation is read off the Python stack (nothing is added to the
model), so :attr:`RuleEngine.records` says which rule each layer's operation got (see
``_records``).

A method is a table ``op name -> handler`` (see :class:`Handler`): a handler looks at one
call and returns the :class:`Rule` for it, or None for the ordinary gradient; a
:class:`Decompose` entry runs a compound operation (attention) as the smaller operations
it is made of, each of which then meets its own rule.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from pellucid._evaluate import Forward
from pellucid.attribution.rules._ledger import SHIFT_OPS, Ledger, constant_part, row_sums
from pellucid.attribution.rules._ops import (
    _CACHEABLE,
    _NAMES,
    DENOMINATOR_OPS,
    DROPOUT_OPS,
    PASS_OPS,
    QUERY_OPS,
    SCALE_OPS,
    is_inplace,
    op_name,
)
from pellucid.attribution.rules._records import Bookkeeping

__all__ = [
    "Constant",
    "Decompose",
    "Handler",
    "Rule",
    "RuleEngine",
    "UnsupportedOperationError",
    "gradient",
    "vjp",
]

Op = Callable[..., torch.Tensor]


class UnsupportedOperationError(ValueError):
    """A rule-based method met an operation it has no rule for."""


def _depends(value: Any) -> bool:
    """Whether ``value`` (a tensor, or tuples/lists/dicts of them) holds a tensor that
    requires grad; a hand-written walk (it runs on every operation of the model), cheaper
    than a pytree flatten or a generator per level."""
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, dict):
        value = tuple(value.values())
    elif not isinstance(value, tuple | list):
        return False
    for item in value:
        if isinstance(item, torch.Tensor):
            if item.requires_grad:
                return True
        elif isinstance(item, tuple | list | dict) and _depends(item):
            return True
    return False


def _call_depends(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return _depends(args) or (bool(kwargs) and _depends(kwargs))


class Rule:
    """A modified backward for one operation ``y = op(*xs)`` of ``arity`` operands.

    ``forward(op, *xs) -> (y, state)`` runs without a graph; ``backward(op, state, grad)``
    returns the operands' gradients (one tensor when ``arity`` is 1). ``label`` is what
    ``extras["rules"]`` shows. An operation with several operands of which only one
    depends on the inputs is linear in it: it keeps its ordinary gradient.
    """

    label = "rule"
    arity = 1
    #: Whether ``sum(x * grad_x) == sum(y * grad_y)`` by construction; LRP's ledger measures
    #: the relevance absorbed by the calls of rules that do not conserve it.
    conserves = False

    def forward(self, op: Op, *xs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return op(*xs), None

    def backward(self, op: Op, state: Any, grad: torch.Tensor) -> Any:
        """The operands' gradients from the output's ``grad`` and the ``state`` that
        :meth:`forward` kept.

        Raises:
            TypeError: the subclass does not implement it.
        """
        raise TypeError(f"{type(self).__name__} must implement backward.")


class Constant(Rule):
    """The output is treated as a constant: it is returned detached from the graph, so no
    gradient flows into the operation and later products with it are linear (CP-LRP's
    attention weights)."""

    conserves = True

    def __init__(self, label: str = "constant") -> None:
        self.label = label


class _RuleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, spec: tuple[Rule, Op, Any, Any], *xs: torch.Tensor) -> torch.Tensor:
        # (one argument: torch walks every argument of ``apply``); ``site``: the module that
        # ran the operation (None: the model's own forward) and its name, for ``_plan``
        rule, op, sink, ctx.site = spec
        if len(xs) == 1:
            y, state = rule.forward(op, xs[0].detach())
        else:
            y, state = rule.forward(op, *[x.detach() for x in xs])
        ctx.rule, ctx.op, ctx.state, ctx.sink = rule, op, state, sink
        if sink is not None:  # copies: later in-place operations may change y and xs
            ctx.kept = (y.detach().clone(), tuple(x.detach().clone() for x in xs))
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        grads = ctx.rule.backward(ctx.op, ctx.state, grad)
        if isinstance(grads, torch.Tensor):
            grads = (grads,)
        if ctx.sink is not None:  # relevance in minus relevance out: what the call absorbed
            y, xs = ctx.kept
            absorbed = row_sums(y * grad)
            for x, g in zip(xs, grads, strict=True):
                if g is not None:
                    absorbed = absorbed - row_sums(x * g)
            ctx.sink(absorbed)
        return (None, *grads)


def vjp(op: Op, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``v^T d op / d x`` at ``x`` (the ordinary gradient of ``op``)."""
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(op(xx), xx, v)
    return grad


#: ``handler(engine, name, func, args, kwargs) -> Rule | None``; None runs the op unchanged.
Handler = Callable[..., "Rule | None"]


def gradient(engine: RuleEngine, name: str, func: Any, args: Any, kwargs: Any) -> None:
    """Handler: the ordinary gradient is this method's rule for the op."""
    return None


#: How the engine's mode treats an operation (see :meth:`RuleEngine._kind`).
_PLAIN, _GRADIENT, _GENERAL = object(), object(), object()


@dataclass(frozen=True)
class Decompose:
    """Table entry: run a compound operation as ``function(engine, *args, **kwargs)``
    (written with smaller torch operations, each of which meets its own rule)."""

    function: Callable[..., Any]
    label: str = "decomposed"


class _Mode(TorchFunctionMode):
    """The engine's dispatch: every operation of the model, while the rules are attached.
    (It works on the engine's state directly: one Python call less per operation.)"""

    def __init__(self, engine: RuleEngine) -> None:
        super().__init__()
        self.engine = engine

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        # (``args`` is a tuple and handlers never change ``kwargs``: no copies per operation)
        if kwargs is None:
            kwargs = {}
        engine = self.engine
        name = _NAMES.get(func) if type(func) in _CACHEABLE else None
        if name is None:
            name = op_name(func)
        kind = engine._kinds.get(name)
        if kind is None:
            kind = engine._kinds[name] = engine._kind(name)
        if kind is _PLAIN:  # nothing to record or check (and no layer to name)
            return func(*args, **kwargs)
        outer, engine._frame = engine._frame, sys._getframe(1)  # the operation's caller
        try:
            if kind is _GRADIENT:  # the ordinary gradient: recorded when it matters
                first = args[0] if args else None
                if (isinstance(first, torch.Tensor) and first.requires_grad) or _call_depends(
                    args, kwargs
                ):
                    engine.record(name, "gradient")
                return func(*args, **kwargs)
            handler = engine.handlers.get(name)
            if isinstance(handler, Decompose):  # in every pass, whatever depends on the inputs
                if _call_depends(args, kwargs):
                    engine.record(name, handler.label)
                with _Mode(engine):  # torch pops the mode while it calls us: the parts meet it
                    return handler.function(engine, *args, **kwargs)
            return engine._dispatch(name, func, args, kwargs)
        finally:
            engine._frame = outer


class RuleEngine(Bookkeeping):
    """Runs a model with ``handlers`` attached to the operations it executes.

    Args:
        method: the method's name, used in error messages.
        handlers: op name -> handler returning the :class:`Rule` for that call (or None for
            "unchanged"); names not in ``handlers`` must be linear/structural ops.
        model: the ``nn.Module`` (for layer names in :attr:`records`).

    A table with a ``ledger`` attribute (LRP's) gets the relevance that constants absorb
    measured at every site (see ``_ledger``).
    """

    #: What a shell lets through unchanged when the model runs under the rules.
    errors: tuple[type[Exception], ...] = (UnsupportedOperationError,)

    def __init__(self, method: str, handlers: Mapping[str, Handler], model: Any) -> None:
        super().__init__(model)
        self.method = method
        self.ledger: Ledger | None = getattr(handlers, "ledger", None)
        self.handlers = handlers if type(handlers) is dict else dict(handlers)  # read only
        self._kinds: dict[str, object] = {}
        self.parameter_names = (
            {id(p): n for n, p in model.named_parameters()}
            if self.ledger is not None and isinstance(model, nn.Module)
            else {}
        )

    @contextmanager
    def active(self) -> Iterator[None]:
        """Attach the rules for the duration of one model call."""
        if self.ledger is not None:
            self.ledger.begin()
        with _Mode(self):
            yield

    def wrap(self, forward: Forward) -> Forward:
        """A copy of ``forward`` whose model calls run with the rules attached."""
        model = forward.model

        def call(*args: Any, **kwargs: Any) -> Any:
            with self.active():
                return model(*args, **kwargs)

        return forward.with_model(call)

    # ------------------------------------------------------------------ dispatch
    def unsupported(self, name: str, why: str = "") -> UnsupportedOperationError:
        return UnsupportedOperationError(
            f"{self.method} has no rule for the operation `{name}` (in {self.where()}){why}. "
            f"Rule-based methods refuse unsupported operations instead of silently using plain "
            "gradients; rewrite that part of the model with supported operations or use a "
            "gradient method (integrated_gradients, saliency)."
        )

    def _kind(self, name: str) -> object:
        """How the mode treats every call of ``name`` (decided once per engine):
        :data:`_PLAIN` runs it as it is (a question about a tensor's layout, or a linear or
        structural operation without a handler and without a constant part the ledger would
        watch), :data:`_GRADIENT` runs it and records the ordinary gradient (its handler is
        :func:`gradient`), anything else goes through :meth:`_dispatch`."""
        handler = self.handlers.get(name)
        if handler is gradient:
            return _GRADIENT
        watched = self.ledger is not None and name in SHIFT_OPS
        if handler is None and (name in QUERY_OPS or (name in PASS_OPS and not watched)):
            return _PLAIN
        return _GENERAL

    def _dispatch(self, name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not _call_depends(args, kwargs):
            return func(*args, **kwargs)
        handler = self.handlers.get(name)
        if handler is not None:
            rule = handler(self, name, func, args, kwargs)
            if rule is None:
                self.record(name, "gradient")
                return func(*args, **kwargs)
            return self._run_rule(name, func, args, kwargs, rule)
        self._check_linear(name, args, kwargs)
        shift = None
        if self.ledger is not None and name in SHIFT_OPS:
            shift = constant_part(name, func, args, kwargs)  # before an in-place op runs
        out = func(*args, **kwargs)
        if shift is not None:
            self._watch(name, args, kwargs, out, shift)
        if name in PASS_OPS or name in SCALE_OPS or name in DROPOUT_OPS or not _depends(out):
            return out
        raise self.unsupported(name)

    def _watch(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, shift: Any
    ) -> None:
        """Have the ledger record the relevance the constant ``shift`` takes from ``out``."""
        target = out if isinstance(out, torch.Tensor) else args[0]  # __setitem__: in place
        if self.ledger is None or not _depends(target):
            return
        named = [
            self.parameter_names[id(a)]
            for a in (*args, *kwargs.values())
            if isinstance(a, torch.Tensor) and id(a) in self.parameter_names
        ]
        key = f"{named[0] if named else self.where()}: {name}"
        self.ledger.watch(key, target, shift)

    def _check_linear(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if name in SCALE_OPS:
            operands = [a for a in args[:2] if isinstance(a, torch.Tensor) and a.requires_grad]
            if len(operands) > 1:
                raise self.unsupported(name, " (a product of two input-dependent tensors)")
            if name in DENOMINATOR_OPS and len(args) > 1 and _depends(args[1]):
                raise self.unsupported(name, " (an input-dependent denominator)")
        if name in DROPOUT_OPS:
            training = kwargs.get("training", args[2] if len(args) > 2 else True)
            p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            if training and p > 0:
                raise self.unsupported(
                    name, " in training mode; call model.eval() or pass eval_mode=True"
                )

    def _op(
        self, name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], arity: int = 1
    ) -> tuple[Op, bool]:
        """The op as an out-of-place function of its first ``arity`` arguments, and whether
        the model called it in place."""
        inplace = is_inplace(name, kwargs)
        rest = args[arity:]
        # (handlers never change ``kwargs``: a copy only to run an in-place call out of place)
        call_kwargs = {**kwargs, "inplace": False} if "inplace" in kwargs else kwargs
        target = func
        if name.endswith("_") and not name.startswith("__"):
            target = getattr(torch, name[:-1], None)
            if target is None:
                raise self.unsupported(name)

        def op(*ts: torch.Tensor) -> torch.Tensor:
            return target(*ts, *rest, **call_kwargs)

        return op, inplace

    def _operands(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], arity: int
    ) -> tuple[torch.Tensor, ...]:
        """The rule's operands, checked: tensors, and nothing else depends on the inputs."""
        xs = args[:arity]
        tensors = len(xs) == arity and (
            isinstance(xs[0], torch.Tensor)
            if arity == 1
            else all(isinstance(x, torch.Tensor) for x in xs)
        )
        if (
            not tensors
            or (len(args) > arity and _depends(args[arity:]))
            or (kwargs and _depends(kwargs))
        ):
            raise self.unsupported(name, " (its input-dependent argument is not the first one)")
        return xs

    def _run_rule(
        self, name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], rule: Rule
    ) -> Any:
        xs = self._operands(name, args, kwargs, rule.arity)
        dependent = xs[0].requires_grad if rule.arity == 1 else sum(x.requires_grad for x in xs)
        if dependent < len(xs):
            if dependent == 0:
                return func(*args, **kwargs)
            if rule.arity > 1:  # a product with a constant is linear in the other operand
                self.record(name, "gradient")
                return func(*args, **kwargs)
        op, inplace = self._op(name, func, args, kwargs, rule.arity)
        site = self.record(name, rule.label)
        if isinstance(rule, Constant):
            y = op(*(x.detach() for x in xs))
        else:
            sink = None
            if self.ledger is not None and not rule.conserves:
                sink = self.ledger.sink(f"{self.where()}: {name}")
            y = _RuleFunction.apply((rule, op, sink, (site, name)), *xs)
        if inplace:
            return xs[0].copy_(y)
        return y
