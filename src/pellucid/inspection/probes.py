"""Probes: record a network's weights, activations and gradients, layer by layer.

Everything runs inside the model-state guard: hooks are removed, ``.grad`` and
``requires_grad`` are left as they were, and gradients are taken with
``torch.autograd.grad`` so nothing accumulates in the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pellucid._evaluate import chunks, map_chunks, resolve_batch_size, select_output
from pellucid._state import model_guard
from pellucid._targets import resolve_target
from pellucid._validation import check_choice, check_layer, check_tensor, describe_value

__all__ = [
    "ACTIVATION_TYPES",
    "ProbeRecord",
    "activation_functions",
    "probe",
    "record_activations",
    "record_gradients",
    "record_weights",
]

#: Module types drawn as activation functions.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.ReLU6,
    nn.Mish,
    nn.SELU,
    nn.CELU,
    nn.Hardswish,
    nn.Hardsigmoid,
)


def _module(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module; got {describe_value(model)}.")
    return model


def _layers(model: nn.Module, layers: Sequence[str] | None, default: list[str]) -> list[str]:
    if layers is None:
        return default
    if isinstance(layers, str) or not isinstance(layers, Sequence):
        raise TypeError(
            f"`layers` must be a list of submodule names; got {describe_value(layers)}."
        )
    for name in layers:
        check_layer(model, name, name="layers")
    return [str(n) for n in layers]


def _weighted(model: nn.Module) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        # a tensor, not only a Parameter: a pruned layer's weight is orig * mask
        if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.ndim >= 2
    ]


def _leaves(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if name and not any(m.children())]


def record_weights(
    model: nn.Module, *, layers: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Detached copies of the weight matrix/kernel of every layer (``{layer name: weight}``).

    Default layers: every module whose ``weight`` has 2 or more dimensions (Linear, Conv).

    Raises:
        TypeError: `model` is not an nn.Module, or `layers` is not a list of names.
        ValueError: a `layers` entry has no `weight`, or is not a submodule.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> {k: tuple(v.shape) for k, v in record_weights(net).items()}
        {'0': (4, 3), '2': (1, 4)}
    """
    model = _module(model)
    modules = dict(model.named_modules())
    names = _layers(model, layers, _weighted(model))
    out = {}
    for name in names:
        weight = getattr(modules[name], "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"`layers` entry {name!r} has no `weight` to record.")
        out[name] = weight.detach().clone()
    return out


def _check_inputs(inputs: Any) -> torch.Tensor:
    return check_tensor("inputs", inputs, min_ndim=1, floating=True, finite=True).detach()


def record_activations(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    layers: Sequence[str] | None = None,
    batch_size: int | None = None,
    eval_mode: bool | None = None,
) -> dict[str, torch.Tensor]:
    """The output of every layer for ``inputs`` (``{layer name: (N, ...) tensor}``).

    Default layers: every leaf module (no children), in definition order.

    Raises:
        TypeError: `model` is not an nn.Module, `inputs` is not a floating-point tensor, or
            `layers` is not a list of names.
        ValueError: `inputs` is empty or holds NaN/inf, or a name in `layers` is not a submodule.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
        >>> acts = record_activations(net, torch.randn(5, 3))
        >>> bool((acts["1"] >= 0).all()), tuple(acts["0"].shape)
        (True, (5, 4))
    """
    model = _module(model)
    inputs = _check_inputs(inputs)
    modules = dict(model.named_modules())
    names = _layers(model, layers, _leaves(model))
    store: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with model_guard(model, eval_mode=eval_mode, method="record_activations"):
        for name in names:
            modules[name].register_forward_hook(
                lambda _m, _i, out, name=name: store[name].append(select_output(out).detach())
            )
        size = resolve_batch_size(batch_size, inputs[0].numel(), total=inputs.shape[0])
        map_chunks(lambda a, b: select_output(model(inputs[a:b])), inputs.shape[0], size)
    return {n: torch.cat(v) if len(v) > 1 else v[0].clone() for n, v in store.items() if v}


def record_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    target: Any = None,
    labels: torch.Tensor | None = None,
    wrt: str = "weights",
    layers: Sequence[str] | None = None,
    batch_size: int | None = None,
    eval_mode: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Gradients per layer, of the loss on ``labels`` or of the summed ``target`` scores.

    Args:
        model: an ``nn.Module``.
        inputs: a batch-first float tensor.
        target: which output to differentiate when no ``labels`` are given.
        labels: class indices (cross-entropy) or values (mean squared error); the loss is
            averaged over the batch as in training.
        wrt: ``"weights"`` (``{layer: d/d weight}``, default layers: Linear/Conv) or
            ``"activations"`` (``{layer: (N, ...) d/d output}``, default layers: leaves).

    Raises:
        TypeError: `model` is not an nn.Module, `inputs` is not a tensor, or `layers` is not a list
            of names.
        ValueError: `labels` of another length, `target` does not fit, or a `layers` entry is not a
            submodule.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 2)
        >>> g = record_gradients(net, torch.ones(4, 3), target=1)
        >>> g[""].tolist()
        [[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]]
    """
    model = _module(model)
    inputs = _check_inputs(inputs)
    check_choice("wrt", wrt, ("weights", "activations"))
    modules = dict(model.named_modules())
    default = _weighted(model) if wrt == "weights" else _leaves(model)
    if (
        wrt == "weights"
        and not default
        and isinstance(getattr(model, "weight", None), nn.Parameter)
    ):
        default = [""]
    names = _layers(model, layers, default)
    if labels is not None:
        labels = check_tensor("labels", labels, min_ndim=1)
        if labels.shape[0] != inputs.shape[0]:
            raise ValueError(
                f"`labels` must have one entry per example ({inputs.shape[0]}); got "
                f"{labels.shape[0]}."
            )
    n = inputs.shape[0]
    size = resolve_batch_size(batch_size, inputs[0].numel(), total=n)
    totals: dict[str, torch.Tensor] = {}
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    with model_guard(model, eval_mode=eval_mode, method="record_gradients"):
        resolved = None
        if labels is None:
            with torch.no_grad():
                resolved = resolve_target(target, select_output(model(inputs)))
        captured: dict[str, torch.Tensor] = {}
        if wrt == "activations":
            for name in names:
                modules[name].register_forward_hook(
                    lambda _m, _i, out, name=name: captured.__setitem__(name, select_output(out))
                )
        else:
            for name in names:
                modules[name].weight.requires_grad_(True)
        for start, stop in chunks(n, size):
            rows = inputs[start:stop].detach().requires_grad_(wrt == "activations")
            with torch.enable_grad():
                out = select_output(model(rows))
                if resolved is not None:
                    idx = torch.arange(start, stop, device=out.device)
                    total = resolved.scores(out, idx).sum()
                elif labels is not None:
                    batch = labels[start:stop].to(out.device)
                    if out.ndim == 2 and out.shape[1] > 1 and not batch.is_floating_point():
                        loss = F.cross_entropy(out, batch, reduction="sum")
                    else:
                        loss = F.mse_loss(
                            out.reshape(batch.shape), batch.to(out.dtype), reduction="sum"
                        )
                    total = loss / n
                if wrt == "activations":
                    tensors = [captured[name] for name in names]
                else:
                    tensors = [modules[name].weight for name in names]
                grads = torch.autograd.grad(total, tensors, allow_unused=True)
            for name, tensor, grad in zip(names, tensors, grads, strict=True):
                grad = torch.zeros_like(tensor) if grad is None else grad.detach()
                if wrt == "activations":
                    parts[name].append(grad)
                else:
                    totals[name] = totals[name] + grad if name in totals else grad
    if wrt == "activations":
        return {name: torch.cat(v) for name, v in parts.items()}
    return totals


def activation_functions(model: nn.Module) -> dict[str, nn.Module]:
    """The distinct activation functions of ``model``, by class name (for plotting curves).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh(), torch.nn.ReLU())
        >>> list(activation_functions(net))
        ['Tanh', 'ReLU']
    """
    model = _module(model)
    found: dict[str, nn.Module] = {}
    for module in model.modules():
        if isinstance(module, ACTIVATION_TYPES):
            found.setdefault(type(module).__name__, module)
    return found


@dataclass(frozen=True)
class ProbeRecord:
    """Weights, activations and weight gradients of a model on a batch, by layer name."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)
    activation_functions: dict[str, nn.Module] = field(default_factory=dict)


def probe(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    target: Any = None,
    labels: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> ProbeRecord:
    """Record weights, activations (leaf modules) and weight gradients in one call.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> rec = probe(net, torch.randn(6, 3), labels=torch.tensor([0, 1, 0, 1, 0, 1]))
        >>> sorted(rec.weights) == sorted(rec.gradients) == ['0', '2']
        True
    """
    return ProbeRecord(
        weights=record_weights(model),
        activations=record_activations(model, inputs, batch_size=batch_size),
        gradients=record_gradients(
            model, inputs, target=target, labels=labels, batch_size=batch_size
        ),
        activation_functions=activation_functions(model),
    )
