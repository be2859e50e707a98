"""Prune a copy of a trained model and fine-tune it, in one call.

:func:`prune_and_finetune` runs the one-shot, iterative or gradual schedule (unstructured
or structured), optionally with knowledge distillation from the dense model, and returns
the pruned copy with its sparsity and test metrics. The study and other tools build their
pruned variants with it.

Example:
    >>> import torch
    >>> from pellucid.models import MLP
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> res = prune_and_finetune(MLP(4, 2), (x, y), kind="structured", amount=0.5, epochs=1)
    >>> res.model.net[0].out_features
    32
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pellucid._validation import check_choice, check_float, check_int
from pellucid.pruning.distill import Distillation
from pellucid.pruning.importance import as_pair
from pellucid.pruning.schedules import ChannelPruning, MagnitudePruning, PolynomialPruning
from pellucid.pruning.structured import ChannelPruningPlan, plan_channel_pruning
from pellucid.pruning.unstructured import SparsityReport, detach_pruned_, make_permanent_, sparsity
from pellucid.training import Callback, History, evaluate, fit

__all__ = ["PruneResult", "prune_and_finetune"]


@dataclass
class PruneResult:
    """What :func:`prune_and_finetune` produced.

    Attributes:
        model: the pruned, fine-tuned copy (masks made permanent unless asked otherwise).
        kind, amount: as requested.
        plans: the channel plans of every round (structured).
        history: one fit ``History`` per round.
        sparsity: the final zero-weight report.
        metrics: ``evaluate`` on the test split when the data had one.
    """

    model: nn.Module
    kind: str
    amount: float
    plans: list[ChannelPruningPlan] = field(default_factory=list)
    history: list[History] = field(default_factory=list)
    sparsity: SparsityReport | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def prune_and_finetune(
    model: nn.Module,
    data: Any,
    *,
    kind: str,
    amount: float,
    epochs: int = 5,
    schedule: str = "one_shot",
    rounds: int = 3,
    lr: float = 1e-3,
    batch_size: int = 64,
    scope: str = "global",
    importance: str = "l2",
    distill: bool = False,
    temperature: float = 4.0,
    example_inputs: torch.Tensor | None = None,
    make_permanent: bool = True,
    seed: int = 0,
    loss: str = "cross_entropy",
) -> PruneResult:
    """Prune a copy of ``model`` and fine-tune it with ``pellucid.training.fit``.

    Schedules: ``"one_shot"`` prunes once, then fine-tunes ``epochs`` epochs;
    ``"iterative"`` runs ``rounds`` of prune-then-fine-tune (``epochs`` each), every round
    removing ``1 - (1 - amount) ** (1 / rounds)`` of what is left; ``"gradual"``
    (unstructured only) fine-tunes ``epochs`` epochs while :class:`PolynomialPruning` ramps
    the sparsity up to ``amount`` over the first 70% of the steps. ``model`` is not changed.

    Args:
        model: the trained dense model.
        data: a dataset (``.train``, and ``.test`` for the metrics) or an ``(X, y)`` pair.
        kind: ``"unstructured"`` (weight masks) or ``"structured"`` (channels removed).
        amount: final fraction of weights (unstructured) or channels (structured) removed.
        schedule: ``"one_shot"``, ``"iterative"`` or ``"gradual"``.
        rounds: prune/fine-tune rounds of the iterative schedule.
        epochs, lr, batch_size, seed, loss: fine-tuning, per round.
        scope: ``"global"`` or ``"layer"`` (unstructured).
        importance: ``"l2"``/``"l1"``/``"random"`` (both kinds) or another criterion of
            :func:`plan_channel_pruning` (structured).
        distill: fine-tune with knowledge distillation from the dense model.
        temperature: distillation temperature.
        example_inputs: inputs for tracing (structured); default: two training rows.
        make_permanent: fold unstructured masks into the weights at the end.

    Raises:
        TypeError: `data` is not a dataset or an `(X, y)` pair of tensors, or a number argument has
            the wrong type.
        ValueError: an unknown `kind`, `schedule` or `scope`; `amount` outside [0, 1); `rounds` < 1;
            `epochs` < 0 (< 1 for the gradual schedule); or `schedule="gradual"` with
            `kind="structured"`.

    Example:
        >>> from pellucid.models import MLP
        >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
        >>> res = prune_and_finetune(MLP(4, 2), (x, y), kind="unstructured", amount=0.5, epochs=1)
        >>> round(res.sparsity.overall, 2)
        0.5
    """
    kind, amount, rounds = _check(kind, amount, schedule, rounds, epochs)
    train = as_pair(data)
    test = getattr(data, "test", None)
    detach_pruned_(model)
    student = copy.deepcopy(model)
    teacher = copy.deepcopy(model).eval() if distill else None
    example = example_inputs if example_inputs is not None else train[0][:2]
    result = PruneResult(model=student, kind=kind, amount=amount)
    original: dict[str, int] = {}
    for r in range(rounds):
        generator = torch.Generator().manual_seed(seed + r)
        if schedule == "gradual":
            steps = epochs * -(-train[0].shape[0] // batch_size)
            hook: Callback = _gradual(amount, steps, scope, importance)
        elif kind == "unstructured":
            per_round = 1.0 - (1.0 - amount) ** (1.0 / rounds)
            imp = importance if importance in ("l1", "l2", "random") else "l1"
            hook = MagnitudePruning(per_round, scope=scope, importance=imp, generator=generator)
        else:
            counts = _channel_counts(student, example, amount, r, rounds, original)
            hook = ChannelPruning(
                counts, example, importance=importance, data=train, generator=generator
            )
        hooks = (
            [hook] if teacher is None else [hook, Distillation(teacher, temperature=temperature)]
        )
        if epochs > 0:
            result.history.append(
                fit(
                    student,
                    train,
                    epochs=epochs,
                    lr=lr,
                    batch_size=batch_size,
                    seed=seed + r,
                    callbacks=hooks,
                    loss=loss,
                    progress=False,
                )
            )
        else:  # prune without fine-tuning: only the setup hooks run
            for each in hooks:
                each.on_setup(student)
        if isinstance(hook, ChannelPruning) and hook.plan is not None:
            result.plans.append(hook.plan)
    if kind == "unstructured" and make_permanent:
        make_permanent_(student)
    student.eval()
    result.sparsity = sparsity(student)
    if isinstance(test, tuple):
        result.metrics = evaluate(student, test)
    return result


def _check(
    kind: str, amount: float, schedule: str, rounds: int, epochs: int
) -> tuple[str, float, int]:
    """Validate the schedule before anything is copied; return kind, amount and rounds."""
    kind = check_choice("kind", kind, ("unstructured", "structured"))
    amount = check_float("amount", amount, min_value=0.0, max_value=1.0, max_inclusive=False)
    schedule = check_choice("schedule", schedule, ("one_shot", "iterative", "gradual"))
    rounds = check_int("rounds", rounds, min_value=1) if schedule == "iterative" else 1
    if schedule == "gradual" and kind == "structured":
        raise ValueError(
            "`schedule='gradual'` ramps weight sparsity and needs kind='unstructured'; use "
            "schedule='iterative' for structured pruning."
        )
    check_int("epochs", epochs, min_value=1 if schedule == "gradual" else 0)
    return kind, amount, rounds


def _gradual(amount: float, steps: int, scope: str, importance: str) -> PolynomialPruning:
    """The gradual schedule: the ramp ends at 70% of the ``steps``, ~40 pruning events."""
    return PolynomialPruning(
        amount,
        end_step=max(0, int(0.7 * steps) - 1),
        frequency=max(1, steps // 40),
        scope=scope,
        importance=importance if importance in ("l1", "l2") else "l1",
    )


def _channel_counts(
    model: nn.Module,
    example: Any,
    amount: float,
    r: int,
    rounds: int,
    original: dict[str, int],
) -> float | dict[str, int]:
    """What round ``r`` of ``rounds`` removes: ``amount`` in one round; else per-group counts.

    Every round keeps ``floor(C0 * (1 - amount) ** ((r + 1) / rounds))`` channels of a group
    that had ``C0`` (recorded in ``original`` on the first round), so the last round lands
    exactly where one-shot would.
    """
    if rounds == 1:
        return amount
    current = plan_channel_pruning(model, example, amount=0.0)
    if r == 0:
        original.update({g.leader: g.channels for g in current.groups})
    fraction = (1.0 - amount) ** ((r + 1) / rounds)
    return {
        g.leader: g.channels - max(1, math.floor(original[g.leader] * fraction + 1e-9))
        for g in current.groups
        if g.frozen is None
    }
