"""How much can be pruned: a metric against the pruning amount, on copies of the model.

:func:`sweep_pruning` prunes a deep copy of the model at every amount (unstructured
magnitude masks, or structured channel removal that really shrinks the layers), optionally
fine-tunes the copy with a function you give, scores it with your metric, and reports the
curve: the measured sparsity (fraction of weights at zero, or of parameters removed), the
score, the largest amount whose score stays within ``tolerance`` of the dense model's, and
the knee of the curve. The model you pass is never changed: not its parameters, masks,
mode, hooks or ``.grad``.

Copies where pruning removed every weight of a layer are flagged (``collapsed``), and so
are copies whose predictions on the rows the metric ran them on are constant or one class
(``dead``, see :func:`~pellucid.pruning.prediction_collapse`), whatever their layers look
like: their score is that of the majority class, not of a pruned model. Both are left out
of ``best_amount`` and named in a :class:`~pellucid.pruning.CollapsedModelWarning`.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> sweep = sweep_pruning(net, lambda m: float(m[0].weight.ne(0).float().mean()),
    ...                       amounts=(0.25, 0.5), scope="layer")
    >>> sweep.amounts, [round(s, 2) for s in sweep.scores]
    ([0.0, 0.25, 0.5], [1.0, 0.75, 0.5])
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pellucid._state import model_guard
from pellucid._validation import check_choice, check_float, describe_value
from pellucid.pruning.collapse import CollapsedModelWarning, prediction_collapse
from pellucid.pruning.measure import count_nonzeros, count_parameters
from pellucid.pruning.structured import plan_channel_pruning
from pellucid.pruning.unstructured import LayerCollapseWarning, prune_magnitude_, sparsity
from pellucid.training import evaluate

__all__ = ["PruningSweep", "sweep_pruning"]

Metric = Callable[[nn.Module], float]


@dataclass(frozen=True)
class PruningSweep:
    """A metric against the pruning amount (index 0 of every list is the dense model).

    Attributes:
        kind: ``"unstructured"`` or ``"structured"``.
        amounts: the requested amounts, starting with 0.0 (the dense copy).
        sparsity: measured: the fraction of prunable weights at zero (unstructured) or of
            the model's parameters removed (structured).
        scores: the metric of each copy.
        parameters: the non-zero parameters of each copy (masked weights not counted).
        tolerance: the allowed drop from the dense score.
        higher_is_better: the metric's direction.
        best_amount: the largest amount whose score is within ``tolerance`` of the dense
            score and whose copy did not collapse (no ``collapsed`` layer, not ``dead``;
            0.0 when none).
        knee: the amount at the knee of the score curve: the point farthest above the chord
            from the first to the last point, both axes scaled to [0, 1] (Kneedle); where
            the score holds and then falls, the last amount before the fall.
        collapsed: per amount, the layers whose weights were all removed.
        dead: per amount, why the copy's predictions on the rows the metric ran collapsed
            (constant outputs, one class for 98% of the rows, accuracy at the majority
            rate), or None (also when the metric did not run the model on a batch).
    """

    kind: str
    amounts: list[float]
    sparsity: list[float]
    scores: list[float]
    parameters: list[int]
    tolerance: float
    higher_is_better: bool
    best_amount: float
    knee: float
    collapsed: list[list[str]] = field(default_factory=list)
    dead: list[str | None] = field(default_factory=list)

    @property
    def dense(self) -> float:
        """The score of the unpruned copy."""
        return self.scores[0]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "kind": self.kind,
            "amounts": self.amounts,
            "sparsity": self.sparsity,
            "scores": [s if math.isfinite(s) else None for s in self.scores],
            "parameters": self.parameters,
            "tolerance": self.tolerance,
            "higher_is_better": self.higher_is_better,
            "best_amount": self.best_amount,
            "knee": self.knee,
            "collapsed": self.collapsed,
            "dead": self.dead,
        }

    def plot(self, *, ax: Any = None, label: str | None = None) -> Any:
        """The curve (see :func:`pellucid.plot.pruning_sweep`)."""
        from pellucid.plot.sweeps import pruning_sweep

        return pruning_sweep(self, ax=ax, label=label)


def _metric(metric: Any) -> Metric:
    if callable(metric):
        return metric
    if isinstance(metric, tuple | list) and len(metric) == 2:
        data = tuple(metric)
        return lambda m: float(evaluate(m, data)["accuracy"])
    raise TypeError(
        "`metric` must be a callable `model -> float` or an `(X, y)` pair (accuracy); "
        f"got {describe_value(metric)}."
    )


def _amounts(amounts: Sequence[float]) -> list[float]:
    values = sorted({check_float("amounts", a, min_value=0.0, max_value=1.0, max_inclusive=False)
                     for a in amounts})  # fmt: skip
    if not values:
        raise ValueError("`amounts` must hold at least one fraction in [0, 1); got none.")
    return [0.0] + [a for a in values if a > 0.0]


def _prune_copy(
    model: nn.Module, amount: float, kind: str, example_inputs: Any, options: dict[str, Any]
) -> tuple[nn.Module, float, list[str]]:
    """A pruned deep copy, its measured sparsity and the layers it collapsed."""
    pruned = copy.deepcopy(model)
    if amount == 0.0:
        return pruned, 0.0, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LayerCollapseWarning)
        if kind == "unstructured":
            prune_magnitude_(pruned, amount=amount, **options)
            measured = sparsity(pruned).overall
        else:
            before = count_parameters(pruned)
            plan_channel_pruning(pruned, example_inputs, amount=amount, **options).apply_(pruned)
            measured = 1.0 - count_parameters(pruned) / before
    collapsed: list[str] = []
    for w in caught:
        if issubclass(w.category, LayerCollapseWarning):
            collapsed.extend(str(w.message).split(":")[0].split("'")[1::2])
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return pruned, measured, collapsed


def _score(
    pruned: nn.Module, score: Metric, labels: torch.Tensor | None
) -> tuple[float, str | None]:
    """The metric of a copy, and why the predictions it made for the metric collapsed."""
    outputs: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.ndim >= 1:
            outputs.append(out.detach())

    handle = pruned.register_forward_hook(keep)
    try:
        value = float(score(pruned.eval()))
    finally:
        handle.remove()
    if not outputs or any(o.shape[1:] != outputs[0].shape[1:] for o in outputs):
        return value, None
    rows = torch.cat(outputs)
    if labels is not None and labels.shape[0] != rows.shape[0]:
        labels = None  # the metric ran other rows than the pair's
    return value, prediction_collapse(rows, labels=labels)


def _warn_collapsed(levels: list[float], collapsed: list[list[str]], dead: list[Any]) -> None:
    if dead[0] is not None:
        warnings.warn(
            f"the dense model itself {dead[0]} on the metric's rows, so the sweep cannot "
            "tell collapsed pruned copies from live ones; check the model and the metric.",
            CollapsedModelWarning,
            stacklevel=3,
        )
        return
    named = [
        f"amount {a:g}: "
        + "; ".join(
            ([f"no weight left in {', '.join(repr(n) for n in layers)}"] if layers else [])
            + ([d] if d else [])
        )
        for a, layers, d in zip(levels, collapsed, dead, strict=True)
        if layers or d
    ]
    if named:
        warnings.warn(
            f"pruned copies collapsed ({' | '.join(named)}): their scores are those "
            "of a constant model, not of a pruned one, and they are left out of "
            "`best_amount`. Pass `min_keep=` to keep a floor of weights in every layer, or "
            "prune less.",
            CollapsedModelWarning,
            stacklevel=3,
        )


def _knee(x: list[float], y: list[float]) -> int:
    """Index of the point farthest above the chord between the ends (axes scaled to [0, 1])."""
    if len(x) < 3:
        return len(x) - 1
    xs = torch.tensor(x, dtype=torch.float64)
    ys = torch.tensor([v if math.isfinite(v) else math.nan for v in y], dtype=torch.float64)
    span_y = (ys.nanquantile(1.0) - ys.nanquantile(0.0)).item() or 1.0
    xn = (xs - xs[0]) / ((xs[-1] - xs[0]).item() or 1.0)
    yn = (ys - ys[-1]) / span_y
    chord = yn[0] + (yn[-1] - yn[0]) * xn  # the straight line from the first to the last point
    return int(torch.nan_to_num(yn - chord, nan=-math.inf).argmax())


def sweep_pruning(
    model: nn.Module,
    metric: Metric | tuple[torch.Tensor, torch.Tensor],
    *,
    amounts: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    kind: str = "unstructured",
    example_inputs: Any = None,
    finetune: Callable[[nn.Module], Any] | None = None,
    tolerance: float = 0.01,
    higher_is_better: bool = True,
    **options: Any,
) -> PruningSweep:
    """Score pruned copies of ``model`` at every amount; the model itself is not changed.

    Args:
        model: the trained network.
        metric: ``model -> float`` (e.g. ``lambda m: evaluate(m, test)["accuracy"]``), or
            an ``(X, y)`` pair scored by accuracy.
        amounts: fractions in [0, 1) to prune (0, the dense copy, is always added).
        kind: ``"unstructured"`` (:func:`~pellucid.pruning.prune_magnitude_`) or
            ``"structured"`` (:func:`~pellucid.pruning.plan_channel_pruning` + ``apply_``).
        example_inputs: inputs the model runs on (``"structured"`` needs them).
        finetune: called on every pruned copy before scoring (e.g.
            ``lambda m: fit(m, train, epochs=2, progress=False)``); masks stay in place.
        tolerance: the allowed drop from the dense score for ``best_amount``.
        higher_is_better: False for a loss or an error rate.
        **options: passed to the pruning function (``scope``, ``importance``, ``min_keep``
            for unstructured; ``importance``, ``ignore``, ``global_ranking``, ``data`` for
            structured).

    Returns:
        A :class:`PruningSweep`; ``.plot()`` draws it.

    Raises:
        TypeError: `model` is not an nn.Module or `metric` is neither accepted kind.
        ValueError: an amount outside [0, 1), an unknown `kind`, ``"structured"`` without
            `example_inputs`, a negative `tolerance`, or what the pruning function refuses.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module; got {describe_value(model)}.")
    score = _metric(metric)
    levels = _amounts(amounts)
    kind = check_choice("kind", kind, ("unstructured", "structured"))
    tolerance = check_float("tolerance", tolerance, min_value=0.0)
    if kind == "structured" and example_inputs is None:
        raise ValueError(
            '`example_inputs` must be given for kind="structured" (a batch the model runs on, '
            "to trace it and verify the shrunken copy); got None."
        )
    labels = metric[1] if isinstance(metric, tuple | list) else None
    measured, scores, params, collapsed, dead = [], [], [], [], []
    with model_guard(model, eval_mode=False):
        for amount in levels:
            pruned, fraction, layers = _prune_copy(model, amount, kind, example_inputs, options)
            if finetune is not None and amount > 0.0:
                finetune(pruned)
            value, reason = _score(pruned, score, labels)
            scores.append(value)
            measured.append(float(fraction))
            params.append(count_nonzeros(pruned))
            collapsed.append(layers)
            dead.append(reason)
    _warn_collapsed(levels, collapsed, dead)
    sign = 1.0 if higher_is_better else -1.0
    ok = [
        a
        for a, s, c, d in zip(levels, scores, collapsed, dead, strict=True)
        if not c and (d is None or dead[0] is not None) and sign * (s - scores[0]) >= -tolerance
    ]
    return PruningSweep(
        kind=kind,
        amounts=levels,
        sparsity=measured,
        scores=scores,
        parameters=params,
        tolerance=tolerance,
        higher_is_better=higher_is_better,
        best_amount=max(ok, default=0.0),
        knee=levels[_knee(measured, [sign * s for s in scores])],
        collapsed=collapsed,
        dead=dead,
    )
