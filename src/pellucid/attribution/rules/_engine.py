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
The module running each operation is tracked with global forward hooks (nothing is added
to the model), so :attr:`RuleEngine.records` says which rule each layer's operation got.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from pellucid._targets import Forward

__all__ = [
    "ACTIVATIONS",
    "RELU_OPS",
    "Rule",
    "RuleEngine",
    "UnsupportedOperationError",
    "apply_rule",
    "eval_batch_norm",
    "freeze_parameters",
    "linear_handlers",
    "unchanged",
    "vjp",
]

#: Linear or structural operations: the ordinary gradient is the right one for every method.
PASS_OPS = frozenset(
    """add __add__ __radd__ __iadd__ add_ sub __sub__ __rsub__ __isub__ sub_ rsub neg __neg__
    neg_ negative positive __pos__ flatten unflatten reshape view view_as permute transpose t
    contiguous T mT squeeze unsqueeze __getitem__ cat concat concatenate stack hstack vstack split
    chunk narrow select expand expand_as repeat clone to type float double half sum mean pad
    identity movedim swapaxes unbind tensor_split split_with_sizes flip roll index_select
    gather __setitem__ _reshape_alias zero_pad2d constant_pad_nd""".split()
)
#: Products and quotients: linear when only one operand (the numerator) depends on inputs.
SCALE_OPS = frozenset(
    """mul __mul__ __rmul__ __imul__ mul_ multiply div __truediv__ __itruediv__ div_ divide
    true_divide matmul __matmul__ __rmatmul__ mm bmm""".split()
)
_DENOMINATOR_OPS = frozenset("div __truediv__ __itruediv__ div_ divide true_divide".split())
#: Dropout is the identity when not training.
DROPOUT_OPS = frozenset(
    "dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout".split()
)

RELU_OPS = frozenset({"relu", "relu_"})
#: Element-wise non-linearities (DeepLIFT's rescale rule applies to all of them).
ACTIVATIONS = frozenset(
    """relu relu_ sigmoid sigmoid_ tanh tanh_ elu elu_ leaky_relu leaky_relu_ softplus gelu
    silu silu_ selu selu_ celu celu_ relu6 hardtanh hardtanh_ mish hardswish hardsigmoid
    logsigmoid""".split()
)
WEIGHTED_OPS = frozenset({"linear", "conv1d", "conv2d", "conv3d"})
AVG_POOL_OPS = frozenset(
    """avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
    adaptive_avg_pool3d""".split()
)
MAX_POOL_OPS = frozenset({"max_pool1d", "max_pool2d", "max_pool3d"})
NORM_OPS = frozenset({"batch_norm"})


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


def _is_inplace(name: str, kwargs: Mapping[str, Any]) -> bool:
    return bool(kwargs.get("inplace", False)) or (name.endswith("_") and not name.startswith("__"))


class Rule:
    """A modified backward for one operation ``y = op(x)``; ``x`` is the dependent input.

    Subclasses implement ``forward(op, x) -> (y, state)`` (no grad) and
    ``backward(op, state, grad_y) -> grad_x``. ``label`` is what ``extras["rules"]`` shows.
    """

    label = "rule"

    def forward(
        self, op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
    ) -> tuple[torch.Tensor, Any]:
        return op(x), None

    def backward(
        self, op: Callable[[torch.Tensor], torch.Tensor], state: Any, grad: torch.Tensor
    ) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must implement backward.")


class _RuleFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, rule: Rule, op: Callable[..., Any], saved: Any
    ) -> torch.Tensor:
        if saved is not None:  # a paired rule (see ``_paired``): the reference's state
            y, state = rule.forward_paired(op, x.detach(), saved)  # type: ignore[attr-defined]
        else:
            y, state = rule.forward(op, x.detach())
        ctx.rule, ctx.op, ctx.state = rule, op, state
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return ctx.rule.backward(ctx.op, ctx.state, grad), None, None, None


def apply_rule(
    rule: Rule, op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, saved: Any = None
) -> torch.Tensor:
    """``op(x)`` whose backward is ``rule``'s (``saved``: a paired rule's reference state)."""
    return _RuleFunction.apply(x, rule, op, saved)


def vjp(
    op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """``v^T d op / d x`` at ``x`` (the ordinary gradient of ``op``)."""
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(op(xx), xx, v)
    return grad


#: ``handler(engine, name, func, args, kwargs) -> Rule | None``; None runs the op unchanged.
Handler = Callable[..., "Rule | None"]


def unchanged(engine: RuleEngine, name: str, func: Any, args: Any, kwargs: Any) -> None:
    """Handler: the ordinary gradient is this method's rule for the op."""
    return None


def eval_batch_norm(engine: RuleEngine, name: str, func: Any, args: Any, kwargs: Any) -> None:
    """Handler: batch norm is affine (ordinary gradient) in eval mode; refused in training."""
    training = kwargs.get("training", args[5] if len(args) > 5 else False)
    if training:
        raise engine.unsupported(
            name,
            " in training mode (it mixes the rows of a batch); call "
            "model.eval() or pass eval_mode=True",
        )
    return None


def linear_handlers() -> dict[str, Handler]:
    """Weighted layers, average pooling and eval-mode batch norm with the ordinary gradient."""
    handlers: dict[str, Handler] = {name: unchanged for name in WEIGHTED_OPS | AVG_POOL_OPS}
    handlers["batch_norm"] = eval_batch_norm
    return handlers


def freeze_parameters(model: Any) -> None:
    """Switch off ``requires_grad`` of every parameter (inside the model guard, which restores
    it), so that only tensors computed from the explained rows require grad."""
    if isinstance(model, nn.Module):
        for param in model.parameters():
            if param.requires_grad:
                param.requires_grad_(False)


#: Operation names by function object (functions and builtins are long-lived; the bound
#: ``__get__`` wrappers of tensor properties are made anew on every access: not cached).
_NAMES: dict[Any, str] = {}
_CACHEABLE = (type(torch.relu), type(_depends), type(torch.Tensor.add))


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__":  # a tensor property such as x.T: name it by the property
        return str(getattr(getattr(func, "__self__", None), "__name__", name))
    if type(func) in _CACHEABLE:
        _NAMES[func] = name
    return name


class _Mode(TorchFunctionMode):
    def __init__(self, engine: RuleEngine) -> None:
        super().__init__()
        self.engine = engine

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        # (``args`` is a tuple and handlers never change ``kwargs``: no copies per operation)
        return self.engine.dispatch(func, args, kwargs if kwargs is not None else {})


class RuleEngine:
    """Runs a model with ``handlers`` attached to the operations it executes.

    Args:
        method: the method's name, used in error messages.
        handlers: op name -> handler returning the :class:`Rule` for that call (or None for
            "unchanged"); names not in ``handlers`` must be linear/structural ops.
        model: the ``nn.Module`` (for layer names in :attr:`records`).
    """

    def __init__(self, method: str, handlers: Mapping[str, Handler], model: Any) -> None:
        self.method = method
        self.handlers = dict(handlers)
        self.names = (
            {id(m): n or type(m).__name__ for n, m in model.named_modules()}
            if isinstance(model, nn.Module)
            else {}
        )
        self.stack: list[nn.Module] = []
        self.records: dict[str, str] = {}
        self.calls: Counter[str] = Counter()

    # ------------------------------------------------------------------ bookkeeping
    def current_module(self) -> nn.Module | None:
        return self.stack[-1] if self.stack else None

    def where(self) -> str:
        module = self.current_module()
        if module is None:
            return "the model's forward"
        return self.names.get(id(module), type(module).__name__)

    def record(self, name: str, label: str) -> None:
        key = f"{self.where()}: {name}"
        self.records[key] = label
        self.calls[key] += 1

    @contextmanager
    def active(self, *, track_modules: bool = True) -> Iterator[None]:
        """Attach the rules for the duration of one model call. ``track_modules`` follows
        the running module (for :attr:`records` and error messages) with global module
        hooks, which put every module call on torch's slower hooked path."""
        if not track_modules:
            try:
                with _Mode(self):
                    yield
            finally:
                self.stack.clear()
            return

        def push(module: nn.Module, args: Any) -> None:
            self.stack.append(module)

        def pop(module: nn.Module, args: Any, out: Any) -> None:
            if self.stack and self.stack[-1] is module:
                self.stack.pop()

        pre = nn.modules.module.register_module_forward_pre_hook(push)
        post = nn.modules.module.register_module_forward_hook(pop, always_call=True)
        try:
            with _Mode(self):
                yield
        finally:
            pre.remove()
            post.remove()
            self.stack.clear()

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

    def dispatch(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = _NAMES.get(func) if type(func) in _CACHEABLE else None
        if name is None:
            name = _op_name(func)
        return self._dispatch(name, func, args, kwargs)

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
        out = func(*args, **kwargs)
        if name in PASS_OPS or name in SCALE_OPS or name in DROPOUT_OPS or not _depends(out):
            return out
        raise self.unsupported(name)

    def _check_linear(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if name in SCALE_OPS:
            operands = [a for a in args[:2] if isinstance(a, torch.Tensor) and a.requires_grad]
            if len(operands) > 1:
                raise self.unsupported(name, " (a product of two input-dependent tensors)")
            if name in _DENOMINATOR_OPS and len(args) > 1 and _depends(args[1]):
                raise self.unsupported(name, " (an input-dependent denominator)")
        if name in DROPOUT_OPS:
            training = kwargs.get("training", args[2] if len(args) > 2 else True)
            p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            if training and p > 0:
                raise self.unsupported(
                    name, " in training mode; call model.eval() or pass eval_mode=True"
                )

    def _op(
        self, name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
        """The op as an out-of-place function of its first argument, and whether the model
        called it in place."""
        inplace = _is_inplace(name, kwargs)
        rest = args[1:]
        call_kwargs = dict(kwargs)
        if "inplace" in call_kwargs:
            call_kwargs["inplace"] = False
        target = func
        if name.endswith("_") and not name.startswith("__"):
            target = getattr(torch, name[:-1], None)
            if target is None:
                raise self.unsupported(name)

        def op(t: torch.Tensor) -> torch.Tensor:
            return target(t, *rest, **call_kwargs)

        return op, inplace

    def _run_rule(
        self,
        name: str,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        rule: Rule,
        saved: Any = None,
    ) -> Any:
        x = args[0]
        if (
            not isinstance(x, torch.Tensor)
            or not x.requires_grad
            or _call_depends(args[1:], kwargs)
        ):
            raise self.unsupported(name, " (its input-dependent argument is not the first one)")
        op, inplace = self._op(name, func, args, kwargs)
        self.record(name, rule.label)
        y = apply_rule(rule, op, x, saved)
        if inplace:
            return x.copy_(y)
        return y
