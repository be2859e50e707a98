"""The method registry: a method becomes public by registering, and is then contract-tested.

``register`` records a :class:`MethodInfo`; ``attribute`` dispatches by name;
``list_methods`` and ``get_method`` look them up, suggesting the closest name on a typo.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pellucid._adapt import adapt
from pellucid._validation import did_you_mean

if TYPE_CHECKING:
    from pellucid.explanation import Explanation

__all__ = ["VOCABULARY", "MethodInfo", "attribute", "get_method", "list_methods", "register"]

F = TypeVar("F", bound=Callable[..., Any])

KINDS = ("gradient", "decomposition", "perturbation", "shapley", "surrogate", "attention")

#: Every keyword a registered method may take, with the one meaning it has everywhere. A
#: test checks each method's signature against it: a new keyword is a deliberate addition
#: here, not a synonym of an existing one (``noise`` not ``noise_scale``, ``n_repeats`` not
#: ``repeats``, ``generator`` not ``seed``, ``explain_kwargs`` not ``method_kwargs``).
#: ``method`` is reserved for :func:`attribute`'s dispatch; ``target`` is always the output
#: explained, ``labels`` always ground truth for a loss (never a synonym of ``target``).
VOCABULARY: dict[str, str] = {
    # the call: every method
    "model": "the model, a callable Tensor -> output, usually an nn.Module",
    "inputs": "the batch-first inputs explained",
    "target": "which output is explained: int, one per example, 'predicted', callable, None",
    "batch_size": "rows per forward (or forward+backward) pass; None picks one",
    "max_memory": "a peak-memory budget (bytes or '2GB') that picks batch_size",
    "forward_args": "extra positional model arguments (batch-aligned ones follow the rows)",
    "forward_kwargs": "extra keyword model arguments",
    "output": "which part of a tuple/dict/ModelOutput return value is explained",
    "eval_mode": "True: eval mode for this call; None (default): warn in training mode",
    # shared by several methods
    "layer": "a submodule (or its dotted name) whose output is explained or weighted",
    "baseline": "the reference input: None/zeros, a number, a tensor or a named baseline",
    "mask_token": "the token id removed tokens take, for token-id inputs of perturbation methods",
    "background": "reference examples (rows shaped like one input)",
    "background_weights": "weights of the background rows",
    "n_steps": "quadrature nodes along a path",
    "n_samples": "random samples per example",
    "generator": "the torch.Generator random source (same state, same result)",
    "noise": "standard deviation of Gaussian noise",
    "feature_mask": "integer groups of input features treated as one player",
    "n_segments": "number of image segments when no feature_mask is given",
    "window": "occlusion window shape",
    "stride": "occlusion window step",
    "alpha": "lime: ridge penalty; lrp: weight of the positive part (alpha-beta rule)",
    "head_fusion": "how attention heads are combined: mean, max or min",
    "upsample": "how a layer map is upsampled to the inputs: linear or nearest",
    "reshape": "a layer output as feature maps: None, 'tokens' (ViT/Swin) or a callable",
    # one method each
    "absolute": "saliency: |gradient| instead of the signed gradient",
    "antithetic": "sampling_shapley: pair each permutation with its reverse",
    "base": "smoothgrad: the wrapped gradient method",
    "beta": "lrp: weight of the negative part (alpha-beta rule)",
    "composite": "lrp: rules per layer type",
    "epsilon": "lrp: stabilizer of the epsilon rule",
    "explain_kwargs": "keyword arguments of a wrapped explanation method",
    "gamma": "lrp: weight of positive parameters (gamma rule)",
    "ignore_bias": "lrp: leave biases and shifts out of the rules (their relevance to the inputs)",
    "kernel_width": "lime: width of the proximity kernel",
    "quadrature": "integrated_gradients: the rule placing the nodes on the path",
    "query": "attention_rollout: the output position explained",
    "relu": "grad_cam: keep the positive part of the map",
    "residual": "attention_rollout: add the identity for the skip connection",
    "rule": "lrp: the rule applied to every layer",
    "train_data": "lime: data whose statistics scale the perturbations",
    "variant": "smoothgrad: mean, mean of squares or variance over the noisy copies",
}

#: Kinds whose methods differentiate the model (a scikit-learn estimator is refused).
GRADIENT_KINDS = ("gradient", "decomposition", "attention")


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
        public = _accepting_estimators(fn, gradients=kind in GRADIENT_KINDS or needs_layer)
        _REGISTRY[name] = MethodInfo(
            name=name,
            fn=public,
            kind=kind,
            stochastic=stochastic,
            needs_layer=needs_layer,
            input_kinds=input_kinds,
            summary=doc[0] if doc else "",
            contract_kwargs=dict(contract_kwargs or {}),
        )
        return cast(F, public)

    return decorator


def _accepting_estimators(fn: Callable[..., Any], *, gradients: bool) -> Callable[..., Any]:
    """``fn`` behind the public-boundary adapter (``_adapt.adapt``): a scikit-learn
    estimator, a numpy array or a DataFrame is converted once, before the method runs; a
    DataFrame's column names land in ``extras["feature_names"]``."""

    @functools.wraps(fn)
    def public(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        model, inputs, names = adapt(model, inputs, method=fn.__name__, gradients=gradients)
        result = fn(model, inputs, *args, **kwargs)
        if names is not None and dataclasses.is_dataclass(result):
            result = dataclasses.replace(
                result,  # type: ignore[type-var]
                extras={**getattr(result, "extras", {}), "feature_names": names},
            )
        return result

    return public


def list_methods(kind: str | None = None) -> list[str]:
    """Names of the registered attribution methods, optionally of one ``kind``.

    Raises:
        ValueError: `kind` is not a known kind of method.

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


def get_method(name: str, *, argument: str = "method") -> MethodInfo:
    """The :class:`MethodInfo` registered under ``name``; suggests close names on a typo.

    ``argument`` is the keyword the name came from, named in the error.

    Raises:
        TypeError: `name` is not a string.
        ValueError: no method is registered under `name` (close names are suggested).
    """
    if not isinstance(name, str):
        raise TypeError(f"`{argument}` must be a method name (str); got {type(name).__name__}.")
    if name not in _REGISTRY:
        raise ValueError(
            f"`{argument}` must be a registered attribution method; got {name!r}."
            + did_you_mean(name, _REGISTRY)
            + " See pellucid.list_methods()."
        )
    return _REGISTRY[name]


def attribute(
    model: Any, inputs: Any, *, method: str = "integrated_gradients", **kwargs: Any
) -> Explanation:
    """Explain ``model`` on ``inputs`` with the registered ``method``.

    Example:
        >>> import torch, pellucid
        >>> net = torch.nn.Linear(3, 1)
        >>> pellucid.attribute(net, torch.ones(2, 3), method="saliency").attributions.shape
        torch.Size([2, 3])
    """
    result: Explanation = get_method(method).fn(model, inputs, **kwargs)
    return result
