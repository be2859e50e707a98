"""The method registry: a method becomes public by registering, and is then contract-tested.

``register`` records a :class:`MethodInfo`; ``attribute`` dispatches by name;
``list_methods`` and ``get_method`` look them up, suggesting the closest name on a typo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pellucid._validation import did_you_mean

__all__ = ["MethodInfo", "attribute", "get_method", "list_methods", "register"]

F = TypeVar("F", bound=Callable[..., Any])

KINDS = ("gradient", "decomposition", "perturbation", "shapley", "surrogate", "attention")


@dataclass(frozen=True)
class MethodInfo:
    """What the registry knows of one attribution method.

    Attributes:
        name: the public name, also the function's name.
        fn: the function ``fn(model, inputs, **kwargs) -> Explanation``.
        kind: one of ``gradient``, ``decomposition``, ``perturbation``, ``shapley``,
            ``surrogate``, ``attention``.
        stochastic: takes ``generator=`` and depends on it.
        needs_layer: requires ``layer=`` (e.g. Grad-CAM).
        input_kinds: input kinds it is meant for (``tabular``, ``image``, ``sequence``).
        contract_kwargs: extra keyword arguments the contract test passes (small budgets).
    """

    name: str
    fn: Callable[..., Any]
    kind: str
    stochastic: bool = False
    needs_layer: bool = False
    input_kinds: tuple[str, ...] = ("tabular", "image")
    summary: str = ""
    contract_kwargs: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, MethodInfo] = {}


def register(
    *,
    kind: str,
    stochastic: bool = False,
    needs_layer: bool = False,
    input_kinds: tuple[str, ...] = ("tabular", "image"),
    contract_kwargs: dict[str, Any] | None = None,
) -> Callable[[F], F]:
    """Decorator: register ``fn`` under its ``__name__``."""
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}; got {kind!r}.")

    def decorator(fn: F) -> F:
        name = fn.__name__
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = MethodInfo(
            name=name,
            fn=fn,
            kind=kind,
            stochastic=stochastic,
            needs_layer=needs_layer,
            input_kinds=input_kinds,
            summary=doc[0] if doc else "",
            contract_kwargs=dict(contract_kwargs or {}),
        )
        return fn

    return decorator


def list_methods(kind: str | None = None) -> list[str]:
    """Names of the registered attribution methods, optionally of one ``kind``.

    Example:
        >>> import pellucid
        >>> "saliency" in pellucid.list_methods()
        True
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(
            f"`kind` must be one of {KINDS}; got {kind!r}." + did_you_mean(kind, KINDS)
        )
    return sorted(n for n, info in _REGISTRY.items() if kind is None or info.kind == kind)


def get_method(name: str) -> MethodInfo:
    """The :class:`MethodInfo` registered under ``name``; suggests close names on a typo."""
    if not isinstance(name, str):
        raise TypeError(f"`method` must be a method name (str); got {type(name).__name__}.")
    if name not in _REGISTRY:
        raise ValueError(
            f"`method` must be a registered attribution method; got {name!r}."
            + did_you_mean(name, _REGISTRY)
            + " See pellucid.list_methods()."
        )
    return _REGISTRY[name]


def attribute(
    model: Any, inputs: Any, *, method: str = "integrated_gradients", **kwargs: Any
) -> Any:
    """Explain ``model`` on ``inputs`` with the registered ``method``.

    Example:
        >>> import torch, pellucid
        >>> net = torch.nn.Linear(3, 1)
        >>> pellucid.attribute(net, torch.ones(2, 3), method="saliency").attributions.shape
        torch.Size([2, 3])
    """
    return get_method(method).fn(model, inputs, **kwargs)
