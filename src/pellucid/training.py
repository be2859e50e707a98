"""A small, deterministic fit/evaluate loop with hooks for clipping, monitoring and pruning.

Hooks are :class:`Callback` objects. The loop calls, in order, per batch:
``on_batch_begin`` -> forward -> loss (+ every callback's ``extra_loss``) -> backward ->
``on_before_step`` (clipping, monitoring; any callback returning ``False`` skips the
optimizer step) -> ``optimizer.step()`` -> ``on_after_step`` (pruning schedules, mask
re-application). ``on_epoch_end`` sees the epoch's record.

Example:
    >>> import torch
    >>> from pellucid.models import MLP
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> history = fit(MLP(4, 2), (x, y), epochs=2, seed=0, progress=False)
    >>> len(history.epochs)
    2
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pellucid._validation import check_choice, check_float, check_int

__all__ = ["Callback", "History", "TrainState", "evaluate", "fit", "progress_bar"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainState:
    """What callbacks see: the model, optimizer, position in training and the current batch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    step: int = 0  # optimizer steps attempted so far (0-based index of the current step)
    total_steps: int = 0
    inputs: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    outputs: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    history: History | None = None
    info: dict[str, Any] = field(default_factory=dict)  # callbacks may leave per-step notes


class Callback:
    """Base class of training-loop hooks; override what you need. All are no-ops here.

    Order in :func:`fit`: ``on_setup`` (before the optimizer exists), ``on_train_begin``,
    then per epoch ``on_epoch_begin``, per step ``on_batch_begin``, ``extra_loss``,
    ``on_before_step``, ``on_after_step``, then ``on_epoch_end``; ``on_train_end`` last.
    """

    def on_setup(self, model: nn.Module) -> None:
        """Called first, before the optimizer is built from the model's parameters.

        The place for a hook that changes the model's structure (a pruning round that
        removes channels), so that the optimizer sees the parameters it will train. (An
        optimizer passed to ``fit`` as an object was built before: it does not.)
        """

    def on_train_begin(self, state: TrainState) -> None:
        """Called once before the first epoch."""

    def on_epoch_begin(self, state: TrainState) -> None:
        """Called at the start of every epoch."""

    def on_batch_begin(self, state: TrainState) -> None:
        """Called before the forward pass."""

    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        """A term added to the loss (regularizers, distillation); ``state.outputs`` is set."""
        return None

    def on_before_step(self, state: TrainState) -> bool | None:
        """Called after backward, before ``optimizer.step()``; return False to skip the step."""
        return None

    def on_after_step(self, state: TrainState) -> None:
        """Called after ``optimizer.step()`` (or after a skipped step)."""

    def on_epoch_end(self, state: TrainState, record: dict[str, float]) -> None:
        """Called at the end of every epoch with that epoch's record."""

    def on_train_end(self, state: TrainState) -> None:
        """Called once after the last epoch."""


@dataclass
class History:
    """What happened during ``fit``: per-epoch records and per-step losses."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    skipped_steps: int = 0
    seconds: float = 0.0

    def column(self, key: str) -> list[float]:
        """One column of the per-epoch records, e.g. ``history.column("val_accuracy")``."""
        return [record.get(key, math.nan) for record in self.epochs]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "epochs": self.epochs,
            "step_losses": self.step_losses,
            "skipped_steps": self.skipped_steps,
            "seconds": self.seconds,
        }


def progress_bar(
    iterable: Iterable[Any], *, enabled: bool | None, total: int | None = None, desc: str = ""
) -> Iterable[Any]:
    """A tqdm bar when ``enabled`` (None: only when stderr is a terminal); else the iterable."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


def _as_tensors(data: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept ``(X, y)`` tuples or objects with ``X_train``/``y_train`` style attributes."""
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = data
    elif hasattr(data, "X") and hasattr(data, "y"):
        x, y = data.X, data.y
    else:
        raise TypeError(
            f"`{name}` must be a pair (inputs, labels) of tensors, or a DataLoader; "
            f"got {type(data).__name__}."
        )
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"`{name}` must hold tensors; got {type(x).__name__}, {type(y).__name__}.")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`{name}` inputs and labels must have the same number of rows; "
            f"got {x.shape[0]} and {y.shape[0]}."
        )
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` must not be empty.")
    return x, y


def _loss_fn(loss: str | LossFn) -> LossFn:
    if callable(loss):
        return loss
    name = check_choice("loss", loss, ("cross_entropy", "mse"))
    if name == "cross_entropy":
        return F.cross_entropy
    return lambda out, y: F.mse_loss(out.reshape(y.shape), y.to(out.dtype))


def _optimizer(
    optimizer: str | torch.optim.Optimizer | Callable[..., torch.optim.Optimizer],
    model: nn.Module,
    lr: float,
    weight_decay: float,
) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer):
        return optimizer(model.parameters())
    name = check_choice("optimizer", optimizer, ("adam", "adamw", "sgd"))
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def fit(
    model: nn.Module,
    train: Any,
    *,
    epochs: int = 10,
    optimizer: str | torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    loss: str | LossFn = "cross_entropy",
    batch_size: int = 64,
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    clipper: Callback | None = None,
    monitor: Callback | None = None,
    validation: Any = None,
    progress: bool | None = None,
    stop_on_nonfinite: bool = True,
) -> History:
    """Train ``model`` in place on ``train`` and return the :class:`History`.

    Args:
        model: the network; trained in place (left in eval mode at the end).
        train: ``(X, y)`` tensors, or any iterable of ``(x, y)`` batches (e.g. a DataLoader);
            batches are moved to the model's device (a CPU loader may feed a GPU model).
        epochs: passes over the data.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"``, an optimizer, or a factory
            ``params -> optimizer``.
        lr, weight_decay: used when ``optimizer`` is a name.
        loss: ``"cross_entropy"``, ``"mse"`` or a callable ``(outputs, labels) -> loss``.
        batch_size: rows per step when ``train`` is a pair of tensors.
        seed: the shuffling order and any randomness in the model (dropout) follow it.
        callbacks: hooks, see :class:`Callback`.
        clipper, monitor: callbacks run first in ``on_before_step`` (monitor sees the
            gradients before clipping; the clipper may skip a step).
        validation: ``(X, y)`` evaluated after every epoch (``val_loss``, ``val_accuracy``).
        progress: a progress bar (None: only on a terminal).
        stop_on_nonfinite: stop early (and record it) once the loss is NaN/inf for a whole
            epoch, instead of spending time on a diverged model.

    Raises:
        TypeError: `model` is not an nn.Module, `train` is neither tensors nor an iterable of
            batches, a callback is not a Callback, or an integer argument is not an integer.
        ValueError: `epochs` or `batch_size` < 1, `seed` < 0, `lr` <= 0, an unknown `loss` or
            `optimizer` name, or inputs and labels with different numbers of rows.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}.")
    epochs = check_int("epochs", epochs, min_value=1)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    check_float("lr", lr, min_value=0.0, min_inclusive=False)
    loss_fn = _loss_fn(loss)
    hooks = _hooks(monitor, clipper, callbacks)
    tensors = (
        None
        if hasattr(train, "__iter__") and not isinstance(train, tuple | list)
        else _as_tensors(train, "train")
    )
    for hook in hooks:
        hook.on_setup(model)
    generator = torch.Generator().manual_seed(seed)
    opt = _optimizer(optimizer, model, lr, weight_decay)
    history = History()
    n_batches = math.ceil(tensors[0].shape[0] / batch_size) if tensors is not None else len(train)
    state = TrainState(model=model, optimizer=opt, total_steps=epochs * n_batches, history=history)
    start = time.perf_counter()
    device = next((p.device for p in model.parameters()), None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for hook in hooks:
            hook.on_train_begin(state)
        bar = progress_bar(range(epochs), enabled=progress, total=epochs, desc="fit")
        for epoch in bar:
            state.epoch = epoch
            model.train()
            for hook in hooks:
                hook.on_epoch_begin(state)
            pending: list[torch.Tensor] = []
            for x, y in _batches(train, tensors, batch_size, generator):
                x, y = _on_device(x, device), _on_device(y, device)
                _train_step(state, hooks, loss_fn, x, y, pending)
            losses = _host_losses(pending)
            history.step_losses.extend(losses)
            record = _epoch_record(model, epoch, losses, start, validation, loss_fn)
            history.epochs.append(record)
            for hook in hooks:
                hook.on_epoch_end(state, record)
            if stop_on_nonfinite and losses and not any(math.isfinite(v) for v in losses):
                record["stopped_nonfinite"] = 1.0
                break
        for hook in hooks:
            hook.on_train_end(state)
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


def _hooks(
    monitor: Callback | None, clipper: Callback | None, callbacks: Sequence[Callback]
) -> list[Callback]:
    """The hooks in calling order (monitor, clipper, then the others), type-checked."""
    hooks: list[Callback] = [c for c in (monitor, clipper) if c is not None] + list(callbacks)
    for hook in hooks:
        if not isinstance(hook, Callback):
            raise TypeError(
                f"`callbacks` must hold pellucid.training.Callback objects; "
                f"got {type(hook).__name__}."
            )
    return hooks


def _batches(
    train: Any,
    tensors: tuple[torch.Tensor, torch.Tensor] | None,
    batch_size: int,
    generator: torch.Generator,
) -> Iterable[Any]:
    """One epoch of ``(x, y)`` batches: shuffled slices of tensors, or the user's iterable."""
    if tensors is None:
        return train
    order = torch.randperm(tensors[0].shape[0], generator=generator)
    return (
        (tensors[0][order[i : i + batch_size]], tensors[1][order[i : i + batch_size]])
        for i in range(0, order.numel(), batch_size)
    )


def _on_device(value: Any, device: torch.device | None) -> Any:
    """A batch's tensor on the model's device (a CPU data loader feeding a GPU model)."""
    if device is None or not isinstance(value, torch.Tensor) or value.device == device:
        return value
    return value.to(device, non_blocking=True)


def _host_losses(pending: list[torch.Tensor]) -> list[float]:
    """The epoch's step losses as floats, in one transfer from the device."""
    if not pending:
        return []
    values: list[float] = torch.stack([v.reshape(()).double() for v in pending]).cpu().tolist()
    return values


def _epoch_record(
    model: nn.Module,
    epoch: int,
    losses: list[float],
    start: float,
    validation: Any,
    loss_fn: LossFn,
) -> dict[str, float]:
    record: dict[str, float] = {
        "epoch": float(epoch + 1),
        "loss": float(sum(losses) / len(losses)) if losses else math.nan,
        "seconds": time.perf_counter() - start,
    }
    if validation is not None:
        for key, value in evaluate(model, validation, loss=loss_fn).items():
            record[f"val_{key}"] = value
    return record


def _train_step(
    state: TrainState,
    hooks: list[Callback],
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    losses: list[torch.Tensor],
) -> None:
    state.inputs, state.labels = x, y
    state.info = {}
    for hook in hooks:
        hook.on_batch_begin(state)
    state.optimizer.zero_grad(set_to_none=True)
    outputs = state.model(x)
    state.outputs = outputs
    loss = loss_fn(outputs, y)
    for hook in hooks:
        extra = hook.extra_loss(state)
        if extra is not None:
            loss = loss + extra
    state.loss = loss
    loss.backward()
    losses.append(loss.detach())  # read once per epoch: no wait for the device per step
    do_step = True
    for hook in hooks:
        if hook.on_before_step(state) is False:
            do_step = False
    if do_step:
        state.optimizer.step()
    else:
        state.history.skipped_steps += 1  # type: ignore[union-attr]
    for hook in hooks:
        hook.on_after_step(state)
    state.step += 1


def evaluate(
    model: Callable[[torch.Tensor], torch.Tensor],
    data: Any,
    *,
    loss: str | LossFn | None = None,
    batch_size: int = 512,
) -> dict[str, float]:
    """Loss and (for integer labels) accuracy of ``model`` on ``(X, y)``, in eval mode.

    The model's train/eval mode is restored afterwards.

    Raises:
        TypeError: `data` is not a pair of tensors.
        ValueError: inputs and labels have different numbers of rows, `data` is empty, or `loss` is
            an unknown name.
    """
    x, y = _as_tensors(data, "data")
    if isinstance(model, nn.Module):
        device = next((p.device for p in model.parameters()), None)
        x, y = _on_device(x, device), _on_device(y, device)
    classification = not y.is_floating_point()
    loss_fn = _loss_fn(loss if loss is not None else ("cross_entropy" if classification else "mse"))
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            outputs = torch.cat(
                [model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
            )
    finally:
        if was_training:
            model.train()  # type: ignore[attr-defined,union-attr]
    result = {"loss": float(loss_fn(outputs, y))}
    if classification:
        result["accuracy"] = float((outputs.argmax(dim=1) == y).float().mean())
    else:
        residual = ((outputs.reshape(y.shape) - y) ** 2).sum()
        total = ((y - y.mean()) ** 2).sum().clamp_min(1e-12)
        result["r2"] = float(1 - residual / total)
    return result
