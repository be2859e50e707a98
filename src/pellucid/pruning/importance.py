"""Importance criteria: how much each weight, or each output unit, matters.

Per-weight scores have the weight's shape; per-unit scores have one value per output unit
(row of a Linear weight, filter of a convolution, channel of a BatchNorm). Data-driven
criteria accumulate over batches of ``data`` (an ``(X, y)`` pair or a dataset with ``.train``)
and run inside the model-state guard, so the model's mode, flags and ``.grad`` come back.

Example:
    >>> import torch
    >>> w = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    >>> unit_magnitude(w, p=1)
    tensor([3.0000, 0.5000])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pellucid._state import model_guard
from pellucid._validation import check_choice, check_int, check_tensor

__all__ = [
    "activation_gradient",
    "as_pair",
    "bn_scale",
    "gradient_magnitude",
    "magnitude",
    "prunable_parameters",
    "prunable_weights",
    "random_importance",
    "taylor",
    "unit_magnitude",
]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


def prunable_weights(model: nn.Module) -> dict[str, Any]:
    """The Linear and convolution modules whose ``weight`` pruning acts on, by name.

    Example:
        >>> sorted(prunable_weights(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))))
        ['0', '2']
    """
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def _parameter_names(module: nn.Module) -> tuple[str, ...]:
    if isinstance(module, PRUNABLE_TYPES):
        return ("weight",)
    if isinstance(module, nn.RNNBase):
        return tuple(n for n in module._flat_weights_names if n.startswith("weight"))
    if isinstance(module, nn.RNNCellBase):
        return ("weight_ih", "weight_hh")
    if isinstance(module, nn.MultiheadAttention):
        names = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
        return tuple(
            n for n in names if getattr(module, n, None) is not None or hasattr(module, n + "_orig")
        )
    return ()


def prunable_parameters(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Every weight unstructured pruning acts on: ``{key: (module, parameter name)}``.

    Linear and convolution weights are keyed by their module's name (as in
    :func:`prunable_weights`); the other weight matrices by their parameter path:
    recurrent layers' ``weight_ih_l*``/``weight_hh_l*`` (LSTM, GRU, RNN and their cells)
    and ``nn.MultiheadAttention``'s input projections (its ``out_proj`` is a Linear).
    Embeddings are lookups, not pruned.

    Example:
        >>> lstm = nn.Sequential(nn.LSTM(3, 4), nn.Linear(4, 2))
        >>> sorted(prunable_parameters(lstm))
        ['0.weight_hh_l0', '0.weight_ih_l0', '1']
    """
    slots: dict[str, tuple[nn.Module, str]] = {}
    for name, module in model.named_modules():
        for param in _parameter_names(module):
            key = name if param == "weight" else (f"{name}.{param}" if name else param)
            slots[key] = (module, param)
    return slots


def effective_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The weight as the forward pass sees it (``orig * mask`` when pruned)."""
    orig = getattr(module, name + "_orig", None)
    mask = getattr(module, name + "_mask", None)
    if orig is not None and mask is not None:
        return orig * mask
    return getattr(module, name)


def magnitude(weight: torch.Tensor, *, p: int = 1) -> torch.Tensor:
    """Per-weight magnitude ``|w|**p`` (L1 for ``p=1``, squared L2 for ``p=2``).

    Raises:
        TypeError: `weight` is not a tensor, or `p` is not an integer.
        ValueError: `weight` is empty, or `p` < 1.

    Example:
        >>> magnitude(torch.tensor([-2.0, 1.0]), p=2)
        tensor([4., 1.])
    """
    check_tensor("weight", weight)
    check_int("p", p, min_value=1)
    return weight.detach().abs().pow(p)


def unit_magnitude(weight: torch.Tensor, *, p: int = 2, dim: int = 0) -> torch.Tensor:
    """Per-unit magnitude: ``sum |w|**p`` over everything but ``dim`` (0: output units).

    Example:
        >>> unit_magnitude(torch.ones(3, 2, 2, 2), p=2)
        tensor([8., 8., 8.])
    """
    scores = magnitude(weight, p=p)
    if scores.ndim == 1:
        return scores
    return scores.transpose(0, dim).flatten(1).sum(1)


def random_importance(
    model: nn.Module, *, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Uniform random per-weight scores for every prunable weight (the baseline criterion).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> random_importance(nn.Linear(2, 2), generator=g)[""].shape
        torch.Size([2, 2])
    """
    return {
        name: torch.rand(m.weight.shape, generator=generator).to(m.weight.device)
        for name, m in prunable_weights(model).items()
    }


def bn_scale(model: nn.Module) -> dict[str, torch.Tensor]:
    """``|gamma|`` of every affine BatchNorm, by module name (network slimming).

    Example:
        >>> bn = nn.BatchNorm2d(2)
        >>> bn_scale(nn.Sequential(bn))["0"]
        tensor([1., 1.])
    """
    return {
        name: m.weight.detach().abs().clone()
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
    }


def as_pair(data: Any, name: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` from a pair, or from a dataset's ``.train`` split.

    Raises:
        TypeError: `data` is neither a pair of tensors nor a dataset with `.train`.
        ValueError: inputs and labels have different (or zero) numbers of rows.
    """
    if hasattr(data, "train") and isinstance(data.train, tuple):
        data = data.train
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = data
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape[0] != y.shape[0] or x.shape[0] == 0:
                raise ValueError(
                    f"`{name}` inputs and labels must have the same, non-zero number of rows; "
                    f"got {x.shape[0]} and {y.shape[0]}."
                )
            return x, y
    raise TypeError(
        f"`{name}` must be a pair (inputs, labels) of tensors or a dataset with `.train`; "
        f"got {type(data).__name__}."
    )


def _loss(loss: str | Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    if callable(loss):
        return loss
    name = check_choice("loss", loss, ("cross_entropy", "mse"))
    if name == "cross_entropy":
        return F.cross_entropy
    return lambda out, y: F.mse_loss(out.reshape(y.shape), y.to(out.dtype))


def _batches(
    data: Any, batch_size: int, max_batches: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    x, y = as_pair(data)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    if max_batches is not None:
        check_int("max_batches", max_batches, min_value=1)
    for count, start in enumerate(range(0, x.shape[0], batch_size)):
        if max_batches is not None and count >= max_batches:
            return
        yield x[start : start + batch_size], y[start : start + batch_size]


def _accumulate(
    model: nn.Module,
    data: Any,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    loss: str | Callable[..., torch.Tensor],
    batch_size: int,
    max_batches: int | None,
) -> dict[str, torch.Tensor]:
    """Mean over batches of ``score(weight, grad)`` for every prunable weight."""
    loss_fn = _loss(loss)
    modules = prunable_weights(model)
    totals = {name: torch.zeros_like(effective_weight(m)) for name, m in modules.items()}
    n = 0
    with model_guard(model, eval_mode=True):
        params = [p for p in model.parameters()]
        for p in params:
            p.requires_grad_(True)
        for x, y in _batches(data, batch_size, max_batches):
            for p in params:
                p.grad = None
            loss_fn(model(x), y).backward()
            for name, m in modules.items():
                param = getattr(m, "weight_orig", None)
                param = m.weight if param is None else param
                grad = param.grad if param.grad is not None else torch.zeros_like(param)
                mask = getattr(m, "weight_mask", None)
                if mask is not None:
                    grad = grad * mask
                totals[name] += score(effective_weight(m).detach(), grad.detach())
            n += 1
    return {name: total / max(n, 1) for name, total in totals.items()}


def gradient_magnitude(
    model: nn.Module,
    data: Any,
    *,
    loss: str | Callable[..., torch.Tensor] = "cross_entropy",
    batch_size: int = 128,
    max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """Per-weight ``|dL/dw|`` averaged over batches, for every prunable weight.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> scores = gradient_magnitude(net, (torch.randn(8, 3), torch.randint(0, 2, (8,))))
        >>> scores[""].shape
        torch.Size([2, 3])
    """
    return _accumulate(model, data, lambda w, g: g.abs(), loss, batch_size, max_batches)


def taylor(
    model: nn.Module,
    data: Any,
    *,
    loss: str | Callable[..., torch.Tensor] = "cross_entropy",
    batch_size: int = 128,
    max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """First-order Taylor importance ``|w * dL/dw|`` (Molchanov et al.), averaged over batches.

    Sum the result over a unit's weights for the unit's score.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> taylor(net, (torch.randn(8, 3), torch.randint(0, 2, (8,))))[""].shape
        torch.Size([2, 3])
    """
    return _accumulate(model, data, lambda w, g: (w * g).abs(), loss, batch_size, max_batches)


def activation_gradient(
    model: nn.Module,
    data: Any,
    *,
    layers: list[str] | None = None,
    loss: str | Callable[..., torch.Tensor] = "cross_entropy",
    batch_size: int = 128,
    max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """Attribution-based unit importance: mean ``|activation * gradient|`` of each output unit.

    The activation-times-gradient of a unit is its first-order contribution to the loss
    (the input-x-gradient attribution taken at the layer). Channels of convolutions are
    summed over positions; the result is averaged over examples.

    Args:
        model: the network.
        data: ``(X, y)`` or a dataset (its training split is used).
        layers: module names to score (default: every Linear and convolution).
        loss: the loss whose gradient is taken.
        batch_size, max_batches: how the data is walked.

    Returns:
        ``{layer name: tensor of shape (out units,)}``.

    Raises:
        TypeError: `data` is neither a pair of tensors nor a dataset with `.train`.
        ValueError: `layers` names a module the model does not have, or `loss` is unknown.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
        >>> activation_gradient(net, data, layers=["0"])["0"].shape
        torch.Size([4])
    """
    modules = dict(model.named_modules())
    names = list(prunable_weights(model)) if layers is None else list(layers)
    for name in names:
        if name not in modules:
            raise ValueError(f"`layers` must name submodules of the model; got {name!r}.")
    loss_fn = _loss(loss)
    totals: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    rows = 0

    def hook(name: str) -> Callable[..., None]:
        def _save(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            outputs[name] = out

        return _save

    with model_guard(model, eval_mode=True):
        handles = [modules[n].register_forward_hook(hook(n)) for n in names]
        try:
            for x, y in _batches(data, batch_size, max_batches):
                outputs.clear()
                x = x.clone().requires_grad_(True)
                total = loss_fn(model(x), y).sum()
                # gradients of the captured outputs only: nothing accumulates in `.grad`
                found = [n for n, out in outputs.items() if out.requires_grad]
                grads = dict(
                    zip(
                        found,
                        torch.autograd.grad(total, [outputs[n] for n in found], allow_unused=True),
                        strict=True,
                    )
                )
                for name, out in outputs.items():
                    grad = grads.get(name)
                    grad = grad if grad is not None else torch.zeros_like(out)
                    contrib = (out * grad).detach().abs()
                    channel_dim = (
                        1
                        if out.ndim > 2 and isinstance(modules[name], nn.modules.conv._ConvNd)
                        else out.ndim - 1
                    )
                    per_unit = contrib.transpose(0, channel_dim).flatten(1).sum(1)
                    totals[name] = totals.get(name, 0) + per_unit
                rows += x.shape[0]
        finally:
            for h in handles:
                h.remove()
    return {name: total / max(rows, 1) for name, total in totals.items()}
