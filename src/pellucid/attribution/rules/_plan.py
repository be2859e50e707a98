"""DeepLIFT's joint pass without the function mode, once the engine has shown it is exact.

The rule engine (``_engine``) sees every torch operation a model runs, which is what makes
its decomposition trustworthy on any model, and what costs most of DeepLIFT's time on a
small one: the mode's dispatch of every operation and the records read off the stack.
Most CNNs put every non-linearity in a leaf module (``nn.ReLU``, ``nn.MaxPool2d``), and
every other operation on the explained rows is linear. For those models the engine's
first joint pass is turned into a :class:`JointPlan`:

* the sites: the leaf modules whose calls met a rule, with the rule and operation the
  engine built for them (an exact ``torch.nn`` type with its usual ``forward`` only;
  anything else, such as an ``F.relu`` in a model's own ``forward``, means no plan);
* the signature of the autograd graph of that pass (:func:`signature`): every backward
  node's type, which of its operands depend on the inputs, batch norm's training flag,
  and for rule nodes the module that ran them.

A later joint pass on the same model runs with the sites' ``forward`` replaced by the rule
(on the calling thread, for this call; the instance attribute is removed afterwards, even
when the model raises) and nothing else attached. Its graph must have the plan's signature:
then it is the graph the engine would have built, node for node, since the engine's choice
for an operation depends only on what the signature holds. Any difference (a functional
``F.relu`` on a new path, a module switched to training mode, another branch taken)
discards the pass, and the engine runs it instead, for this and every later call on that
model. The records are the plan's: the same graph met the same rules.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pellucid.attribution.rules._engine import _RuleFunction

__all__ = ["JointPlan", "engine_only", "learn", "plan_for", "signature"]

#: Leaf modules whose ``forward`` is one call of one operation: the names the engine may see
#: for that operation, and the attributes its arguments come from (a plan checks them on
#: every call).
_SITES: dict[type[nn.Module], tuple[frozenset[str], tuple[str, ...]]] = {
    nn.ReLU: (frozenset({"relu", "relu_"}), ("inplace",)),
    nn.ReLU6: (frozenset({"hardtanh", "hardtanh_", "relu6"}), ("min_val", "max_val", "inplace")),
    nn.LeakyReLU: (frozenset({"leaky_relu", "leaky_relu_"}), ("negative_slope", "inplace")),
    nn.ELU: (frozenset({"elu", "elu_"}), ("alpha", "inplace")),
    nn.GELU: (frozenset({"gelu"}), ("approximate",)),
    nn.SiLU: (frozenset({"silu", "silu_"}), ("inplace",)),
    nn.Hardswish: (frozenset({"hardswish", "hardswish_"}), ("inplace",)),
    nn.Sigmoid: (frozenset({"sigmoid"}), ()),
    nn.Tanh: (frozenset({"tanh"}), ()),
    **dict.fromkeys(
        (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d),
        (
            frozenset({"max_pool1d", "max_pool2d", "max_pool3d"}),
            ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
        ),
    ),
}

_RULE_NODE = "_RuleFunctionBackward"


def signature(output: torch.Tensor, stop: Any) -> tuple[Any, ...] | None:
    """The autograd graph of ``output`` down to the node ``stop`` (the inputs' own node), as
    a tuple in a fixed depth-first order; None when ``output`` has no graph or a batch-norm
    node does not say whether it ran in training mode."""
    root = output.grad_fn
    if root is None:
        return None
    entries: list[Any] = []
    seen: dict[int, int] = {}
    stack: list[Any] = [root]  # autograd nodes (their attributes are not typed)
    while stack:
        node = stack.pop()
        key = id(node)
        first = seen.get(key)
        if first is not None:  # a join: where paths meet is part of the graph's shape
            entries.append(first)
            continue
        seen[key] = len(entries)
        if node is stop:
            entries.append("inputs")
            continue
        name = type(node).__name__
        nexts = node.next_functions
        if name == _RULE_NODE:
            module, op_name = node.site
            entries.append((name, id(module), op_name, len(nexts)))
        elif "BatchNorm" in name:  # affine in eval mode only (cuDNN's node too)
            training = getattr(node, "_saved_training", None)
            if training is None:  # a node that does not say: no plan
                return None
            entries.append((name, bool(training), *[f is None for f, _ in nexts]))
        else:  # which operands depend on the inputs (the others are None)
            entries.append((name, *[f is None for f, _ in nexts]))
        for f, _ in reversed(nexts):
            if f is not None:
                stack.append(f)
    return tuple(entries)


@dataclass(frozen=True)
class _Site:
    module: nn.Module
    name: str  # the operation's name, as the engine saw it
    rule: Any
    op: Callable[..., torch.Tensor]
    inplace: bool
    attributes: tuple[Any, ...]


def _attributes(module: nn.Module) -> tuple[Any, ...] | None:
    known = _SITES.get(type(module))
    if known is None or "forward" in module.__dict__:
        return None
    state = module.__dict__
    return tuple([state.get(n) for n in known[1]])


@dataclass(frozen=True)
class JointPlan:
    """A joint pass learned from the engine (see the module doc)."""

    sites: tuple[_Site, ...]
    signature: tuple[Any, ...]
    records: list[tuple[str, list[Any]]]

    def run(
        self,
        call: Callable[[], torch.Tensor],
        inputs: torch.Tensor,
        rows: int,
        mismatch: type[Exception],
        *,
        capture: list[tuple[_Site, torch.Tensor]] | None = None,
        bound: list[tuple[str, Any]] | None = None,
    ) -> Any:
        """``call()`` with the rules at the sites; None when the sites changed or the graph
        differs from the plan's (the caller runs the engine instead).

        A joint pass (the reference row last) with ``capture`` also appends every site
        call's reference operand (a copy of its last row), in call order. With ``bound``
        (the operation's name and the rule bound to such a reference, for every site call
        in order) the rows run alone: each site call pairs them with its reference, as the
        joint pass did.

        Raises:
            mismatch: a site's input does not have ``rows`` rows (the engine's error then).
        """
        for site in self.sites:
            if _attributes(site.module) != site.attributes:
                return None
        owner = threading.get_ident()
        patched = []
        rules = None if bound is None else iter(bound)
        try:
            for site in self.sites:
                site.module.__dict__["forward"] = _forward(
                    site, rows, owner, mismatch, capture, rules
                )
                patched.append(site.module)
            out = call()
        except _Unbound:  # the sites ran otherwise than in the captured pass
            return None
        finally:
            for module in patched:
                module.__dict__.pop("forward", None)
        if not isinstance(out, torch.Tensor) or signature(out, inputs.grad_fn) != self.signature:
            return None
        return out


class _Unbound(Exception):
    """The sites ran otherwise than in the joint pass whose references they are bound to."""


#: ``_RuleFunction.apply`` without ``Function.apply``'s Python layer, which binds default
#: arguments (a ``setup_context`` it does not have) and maps functorch's dead wrappers over
#: every argument: a site's operand is a fresh activation, never such a wrapper. Under a
#: functorch transform (``vmap``, ``grad``) the usual entry runs.
_APPLY: Callable[..., torch.Tensor] = getattr(
    super(torch.autograd.Function, _RuleFunction), "apply", _RuleFunction.apply
)
_TRANSFORMS_ACTIVE: Callable[[], bool] = getattr(
    torch._C, "_are_functorch_transforms_active", lambda: True
)


def _forward(
    site: _Site,
    rows: int,
    owner: int,
    mismatch: type[Exception],
    capture: list[tuple[_Site, torch.Tensor]] | None = None,
    rules: Iterator[tuple[str, Any]] | None = None,
) -> Callable[..., Any]:
    module, inplace = site.module, site.inplace
    spec = (site.rule, site.op, None, (module, site.name))
    plain = type(module).forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        x = args[0] if len(args) == 1 and not kwargs else None
        if not isinstance(x, torch.Tensor) or not x.requires_grad or threading.get_ident() != owner:
            return plain(module, *args, **kwargs)
        if x.ndim == 0 or x.shape[0] != rows:
            raise mismatch(f"`{type(module).__name__}`: rows {tuple(x.shape)}")
        call = spec
        if rules is not None:
            name, rule = next(rules, ("", None))
            if name != site.name:
                raise _Unbound
            call = (rule, site.op, None, spec[3])
        elif capture is not None:  # the reference row's operand, before an in-place write
            capture.append((site, x[-1:].detach().clone()))
        y = _RuleFunction.apply(call, x) if _TRANSFORMS_ACTIVE() else _APPLY(call, x)
        return x.copy_(y) if inplace else y

    return forward


def learn(
    model: Any, engine: Any, out: Any, inputs: torch.Tensor, before: list[tuple[str, list[Any]]]
) -> JointPlan | None:
    """The plan of the engine's joint pass that gave ``out`` on ``inputs`` (``before``: the
    engine's records before that pass), or None when some rule did not run in a leaf module
    of a known type (see the module doc)."""
    if not isinstance(model, nn.Module) or not isinstance(out, torch.Tensor):
        return None
    shape = signature(out, inputs.grad_fn)
    if shape is None or inputs.grad_fn is None:
        return None
    sites: dict[int, _Site] = {}
    stack: list[Any] = [out.grad_fn]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen or node is inputs.grad_fn:
            continue
        seen.add(id(node))
        if type(node).__name__ == _RULE_NODE:
            module, name = node.site
            known = _SITES.get(type(module))
            if module is model or known is None or name not in known[0]:  # (or a hook's op)
                return None
            attributes = _attributes(module)
            if attributes is None:
                return None
            inplace = bool(getattr(module, "inplace", False))
            site = sites.setdefault(
                id(module), _Site(module, name, node.rule, node.op, inplace, attributes)
            )
            if site.name != name or type(getattr(site.rule, "rule", site.rule)) is not type(
                getattr(node.rule, "rule", node.rule)
            ):
                return None
        stack.extend(f for f, _ in node.next_functions)
    if not sites:
        return None
    earlier = {key: entry[1] for key, entry in before}
    records = [
        (key, [label, calls - earlier.get(key, 0)])
        for key, (label, calls) in engine.snapshot_records()
        if calls > earlier.get(key, 0)
    ]
    return JointPlan(tuple(sites.values()), shape, records)


#: Per model: its plan, or False once the model has none (or a pass did not match it).
_PLANS: weakref.WeakKeyDictionary[Any, JointPlan | bool] = weakref.WeakKeyDictionary()


def plan_for(model: Any) -> JointPlan | bool | None:
    """The model's plan; False when it has none; None before its first joint pass."""
    try:
        return _PLANS.get(model)
    except TypeError:
        return False


def remember(model: Any, plan: JointPlan | bool) -> None:
    try:
        _PLANS[model] = plan
    except TypeError:
        pass


@contextmanager
def engine_only() -> Iterator[None]:
    """Within the block no plan is found, learned or discarded: every joint pass runs the
    engine (to compare with it, in tests and benchmarks)."""
    global _PLANS
    saved, _PLANS = _PLANS, _NoPlans()
    try:
        yield
    finally:
        _PLANS = saved


class _NoPlans(weakref.WeakKeyDictionary):  # type: ignore[type-arg]
    """A plan store that never holds a plan."""

    def get(self, key: Any, default: Any = None) -> Any:
        return False

    def __setitem__(self, key: Any, value: Any) -> None:
        pass
