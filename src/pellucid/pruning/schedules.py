"""Pruning schedules and sparsity regularizers as training-loop callbacks.

* one round of pruning before fine-tuning: :class:`MagnitudePruning` (weight masks, kept
  at zero after every step) and :class:`ChannelPruning` (channels removed before the
  optimizer is built); one-shot is one round, iterative is ``rounds`` of them, each
  removing the same fraction of what is left (:func:`~pellucid.pruning.prune_and_finetune`);
* gradual: :class:`PolynomialPruning`, Zhu & Gupta's (2017) cubic sparsity ramp during
  training, re-applying the masks after every optimizer step;
* regularizers: :class:`BNScaleL1` (network slimming), added to the loss through
  ``extra_loss`` (:class:`~pellucid.pruning.GroupLasso` lives in ``group_lasso.py``).

Example:
    >>> polynomial_sparsity(50, final=0.9, begin_step=0, end_step=100)
    0.7875
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pellucid._validation import check_choice, check_float, check_int
from pellucid.pruning.importance import prunable_weights
from pellucid.pruning.structured import ChannelPruningPlan, plan_channel_pruning
from pellucid.pruning.unstructured import (
    apply_masks_,
    magnitude_masks,
    sparsity,
)
from pellucid.training import Callback, TrainState

__all__ = [
    "BNScaleL1",
    "ChannelPruning",
    "MagnitudePruning",
    "PolynomialPruning",
    "ReapplyMasks",
    "polynomial_sparsity",
    "reapply_masks_",
]


def polynomial_sparsity(
    step: int,
    *,
    final: float,
    initial: float = 0.0,
    begin_step: int = 0,
    end_step: int,
    power: int = 3,
) -> float:
    """Zhu & Gupta's sparsity at ``step``: ``s_f + (s_i - s_f) * (1 - progress) ** power``.

    Raises:
        TypeError: `final` or `initial` is not a real number.
        ValueError: `final` or `initial` is outside [0, 1], or `end_step` < `begin_step`.

    Example:
        >>> polynomial_sparsity(100, final=0.9, begin_step=0, end_step=100)
        0.9
    """
    final = check_float("final", final, min_value=0.0, max_value=1.0)
    initial = check_float("initial", initial, min_value=0.0, max_value=1.0)
    if end_step < begin_step:
        raise ValueError(
            f"`end_step` must be >= `begin_step` ({begin_step}); got {end_step}. "
            "Use end_step == begin_step for a one-shot jump to `final`."
        )
    if end_step == begin_step:
        return final if step >= begin_step else initial
    progress = min(max((step - begin_step) / (end_step - begin_step), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** power


def reapply_masks_(model: nn.Module) -> nn.Module:
    """Zero ``weight_orig`` wherever ``weight_mask`` is 0 (keeps masked entries from drifting).

    Example:
        >>> from torch.nn.utils import prune
        >>> net = prune.l1_unstructured(nn.Linear(4, 4), "weight", amount=0.5)
        >>> int((reapply_masks_(net).weight_orig == 0).sum())
        8
    """
    with torch.no_grad():
        for module in model.modules():
            for name, buf in module.named_buffers(recurse=False):
                if name.endswith("_mask"):
                    orig = getattr(module, name[: -len("_mask")] + "_orig", None)
                    if orig is not None:
                        orig.mul_(buf)
    return model


class ReapplyMasks(Callback):
    """After every optimizer step, zero the masked entries of the original weights."""

    def on_after_step(self, state: TrainState) -> None:
        reapply_masks_(state.model)


class MagnitudePruning(Callback):
    """One round of unstructured pruning as a training hook.

    When :func:`~pellucid.training.fit` begins, masks ``amount`` of the weights that are
    still unpruned (the smallest by magnitude, as :func:`~pellucid.pruning.magnitude_masks`);
    after every optimizer step the masked entries are zeroed again (:class:`ReapplyMasks`).

    Args:
        amount: fraction in [0, 1) of the remaining prunable weights to mask.
        scope, importance: as :func:`~pellucid.pruning.magnitude_masks`.
        generator: for ``importance="random"``.

    Raises:
        TypeError: `amount` is not a real number.
        ValueError: `amount` is outside [0, 1), or `scope` is unknown.

    Example:
        >>> from pellucid.models import MLP
        >>> from pellucid.training import fit
        >>> net, x, y = MLP(4, 2), torch.randn(32, 4), torch.randint(0, 2, (32,))
        >>> _ = fit(net, (x, y), epochs=1, callbacks=[MagnitudePruning(0.5)], progress=False)
        >>> round(sparsity(net).overall, 2)
        0.5
    """

    def __init__(
        self,
        amount: float,
        *,
        scope: str = "global",
        importance: str = "l1",
        generator: torch.Generator | None = None,
    ) -> None:
        self.amount = check_float(
            "amount", amount, min_value=0.0, max_value=1.0, max_inclusive=False
        )
        self.scope = check_choice("scope", scope, ("global", "layer"))
        self.importance = importance
        self.generator = generator

    def on_setup(self, model: nn.Module) -> None:
        masks = magnitude_masks(
            model,
            amount=self.amount,
            scope=self.scope,
            importance=self.importance,
            generator=self.generator,
        )
        apply_masks_(model, masks)

    def on_after_step(self, state: TrainState) -> None:
        reapply_masks_(state.model)


class ChannelPruning(Callback):
    """One round of structured pruning as a training hook.

    Before :func:`~pellucid.training.fit` builds its optimizer, plans channel pruning on the
    model (:func:`~pellucid.pruning.plan_channel_pruning`) and applies the plan, so the
    optimizer trains the shrunk layers. The plan is kept in ``self.plan``.

    Args:
        amount: as :func:`~pellucid.pruning.plan_channel_pruning` (a fraction, a count, or
            ``{layer name: fraction or count}``).
        example_inputs: inputs the model runs on, for tracing.
        importance, data, generator: as :func:`~pellucid.pruning.plan_channel_pruning`.

    Example:
        >>> from pellucid.models import MLP
        >>> from pellucid.training import fit
        >>> net, x, y = MLP(4, 2), torch.randn(32, 4), torch.randint(0, 2, (32,))
        >>> hook = ChannelPruning(0.5, x[:2])
        >>> _ = fit(net, (x, y), epochs=1, callbacks=[hook], progress=False)
        >>> net.net[0].out_features, hook.plan is not None
        (32, True)
    """

    def __init__(
        self,
        amount: float | int | Mapping[str, float | int],
        example_inputs: Any,
        *,
        importance: str | Mapping[str, torch.Tensor] = "l2",
        data: Any = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.amount = amount
        self.example_inputs = example_inputs
        self.importance = importance
        self.data = data
        self.generator = generator
        self.plan: ChannelPruningPlan | None = None

    def on_setup(self, model: nn.Module) -> None:
        self.plan = plan_channel_pruning(
            model,
            self.example_inputs,
            amount=self.amount,
            importance=self.importance,
            data=self.data,
            generator=self.generator,
        )
        self.plan.apply_(model)


class PolynomialPruning(Callback):
    """Gradual magnitude pruning on Zhu & Gupta's cubic schedule.

    Every ``frequency`` steps between ``begin_step`` and ``end_step`` the sparsity target is
    raised along :func:`polynomial_sparsity` and the smallest still-unpruned weights are
    masked (pruned weights stay pruned); masks are re-applied after every step. The current
    target is left in ``state.info["sparsity"]``.

    Args:
        final_sparsity: target in [0, 1) at ``end_step``.
        initial_sparsity: target at ``begin_step``.
        begin_step, end_step: the ramp (``end_step=None``: 3/4 of the training steps).
        frequency: steps between pruning events.
        scope, importance, layers: as :func:`pellucid.pruning.prune_magnitude_`.

    Raises:
        TypeError: a number argument has the wrong type.
        ValueError: `final_sparsity` outside [0, 1), `initial_sparsity` above it, `end_step` <
            `begin_step`, `frequency` < 1, or an unknown `scope`.

    Example:
        >>> from pellucid.models import MLP
        >>> from pellucid.training import fit
        >>> net = MLP(4, 2)
        >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
        >>> cb = PolynomialPruning(0.8, frequency=1)
        >>> _ = fit(net, (x, y), epochs=4, batch_size=16, callbacks=[cb], progress=False)
        >>> round(sparsity(net).overall, 2)
        0.8
    """

    def __init__(
        self,
        final_sparsity: float,
        *,
        initial_sparsity: float = 0.0,
        begin_step: int = 0,
        end_step: int | None = None,
        frequency: int = 10,
        scope: str = "global",
        importance: str = "l1",
        layers: list[str] | None = None,
    ) -> None:
        self.final = check_float(
            "final_sparsity", final_sparsity, min_value=0.0, max_value=1.0, max_inclusive=False
        )
        self.initial = check_float(
            "initial_sparsity", initial_sparsity, min_value=0.0, max_value=self.final
        )
        self.begin_step = check_int("begin_step", begin_step, min_value=0)
        self.end_step = (
            None if end_step is None else check_int("end_step", end_step, min_value=self.begin_step)
        )
        self.frequency = check_int("frequency", frequency, min_value=1)
        self.scope = check_choice("scope", scope, ("global", "layer"))
        self.importance = importance
        self.layers = layers
        self._end = 0

    def on_train_begin(self, state: TrainState) -> None:
        self._end = (
            self.end_step
            if self.end_step is not None
            else max(self.begin_step, int(0.75 * state.total_steps))
        )

    def _prune_to(self, model: nn.Module, target: float) -> None:
        report = sparsity(model)
        if self.layers is not None:
            zeros = sum(
                report.layers[n] * prunable_weights(model)[n].weight.numel() for n in self.layers
            )
            total = sum(prunable_weights(model)[n].weight.numel() for n in self.layers)
            current = zeros / max(total, 1)
        else:
            current = report.overall
        if target <= current:
            return
        amount = min((target - current) / (1.0 - current), 0.999999)
        masks = magnitude_masks(
            model, amount=amount, scope=self.scope, importance=self.importance, layers=self.layers
        )
        apply_masks_(model, masks)

    def on_after_step(self, state: TrainState) -> None:
        step = state.step
        target = polynomial_sparsity(
            step,
            final=self.final,
            initial=self.initial,
            begin_step=self.begin_step,
            end_step=self._end,
        )
        event = self.begin_step <= step <= self._end and (
            (step - self.begin_step) % self.frequency == 0 or step == self._end
        )
        if event:
            self._prune_to(state.model, target)
        reapply_masks_(state.model)
        state.info["sparsity"] = target

    def on_train_end(self, state: TrainState) -> None:
        self._prune_to(state.model, self.final)
        reapply_masks_(state.model)


class BNScaleL1(Callback):
    """Network slimming: add ``strength * sum |gamma|`` over the BatchNorm layers to the loss.

    Raises:
        TypeError: `strength` is not a real number.
        ValueError: `strength` is negative.

    Example:
        >>> from pellucid.models import SmallCNN
        >>> cb = BNScaleL1(1e-4)
        >>> round(cb.extra_loss(TrainState(model=SmallCNN(), optimizer=None)).item(), 6)
        0.0048
    """

    def __init__(self, strength: float = 1e-4) -> None:
        self.strength = check_float("strength", strength, min_value=0.0)

    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        terms = [
            m.weight.abs().sum()
            for m in state.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
        ]
        return self.strength * torch.stack(terms).sum() if terms and self.strength else None
