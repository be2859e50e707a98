"""Collapsed models: constant or near-constant predictions, or accuracy at the majority rate.

A model pruned too far can predict one class for every input. Its explanations are then
trivially "sparse" and a surrogate tree copies it with fidelity 1.0, so it would count as
evidence that pruning makes a model more interpretable, and a pruning sweep would report
the majority-class score as that of a pruned model. The study checks every variant with
:func:`detect_collapse` and excludes collapsed ones from its interpretability verdicts,
saying so in the report; :func:`~pellucid.pruning.sweep_pruning` checks the outputs of
every pruned copy with :func:`prediction_collapse`, flags collapsed copies and warns
(:class:`CollapsedModelWarning`).

Example:
    >>> import torch
    >>> dead = torch.nn.Linear(3, 2)
    >>> with torch.no_grad():
    ...     _ = dead.weight.zero_()
    >>> detect_collapse(dead, torch.randn(50, 3))
    'constant predictions (output spread 0 across 50 test rows)'
"""

from __future__ import annotations

from typing import Any

import torch

from pellucid._warnings import PellucidWarning

__all__ = [
    "MAJORITY_MARGIN",
    "ONE_CLASS_SHARE",
    "CollapsedModelWarning",
    "detect_collapse",
    "prediction_collapse",
]


class CollapsedModelWarning(PellucidWarning):
    """A pruned model predicts a constant or one class: its score is not a pruned model's."""


#: A classifier predicting one class for at least this share of the rows has collapsed
#: (unless the labels themselves are that unbalanced).
ONE_CLASS_SHARE = 0.98

#: Accuracy within this margin of the majority-class rate counts as no better than it.
MAJORITY_MARGIN = 0.01


@torch.no_grad()
def detect_collapse(
    model: Any, inputs: torch.Tensor, *, labels: torch.Tensor | None = None
) -> str | None:
    """Why ``model`` has collapsed on ``inputs``, or None when it has not.

    Runs ``model(inputs)`` and judges the outputs with :func:`prediction_collapse`.

    Args:
        model: a callable ``Tensor -> Tensor`` (in the mode it should be judged in).
        inputs: a batch of test rows.
        labels: their class labels, for the majority-rate check (optional).

    Returns:
        A short reason such as ``"predicts class 1 for 100% of 143 test rows"``, or None.
    """
    return prediction_collapse(model(inputs), labels=labels)


@torch.no_grad()
def prediction_collapse(outputs: torch.Tensor, *, labels: torch.Tensor | None = None) -> str | None:
    """Why a model whose outputs on a batch of rows are ``outputs`` has collapsed, or None.

    Collapsed means: constant outputs (spread across rows at most 1e-6 of their scale); for
    a classifier (two or more output columns), one predicted class for at least 98% of the
    rows while the labels are not that unbalanced, or, with ``labels``, an accuracy within
    0.01 of the majority-class rate (no better than always guessing the commonest label).

    Args:
        outputs: the model's outputs, one row per example (N, ...).
        labels: the rows' class labels, for the majority-rate check (optional).

    Returns:
        A short reason, or None.

    Example:
        >>> prediction_collapse(torch.tensor([[0.0, 1.0], [0.2, 0.9], [0.1, 3.0]]))
        'predicts class 1 for 100% of 3 test rows'
    """
    out = outputs.detach().to(torch.float64).reshape(outputs.shape[0], -1)
    n = out.shape[0]
    spread = float(out.std(dim=0).max()) if n > 1 else 0.0
    scale = max(float(out.abs().mean()), 1.0)
    if n > 1 and spread <= 1e-6 * scale:
        return f"constant predictions (output spread {spread:.2g} across {n} test rows)"
    if out.shape[1] < 2:
        return None
    pred = out.argmax(dim=1)
    counts = torch.bincount(pred, minlength=out.shape[1])
    share = float(counts.max()) / n
    majority = 0.0
    if labels is not None:
        labels = labels.reshape(-1).to(pred.device).long()
        majority = float(torch.bincount(labels).max()) / n
    if share >= ONE_CLASS_SHARE and majority < ONE_CLASS_SHARE:
        return f"predicts class {int(counts.argmax())} for {share:.0%} of {n} test rows"
    if labels is not None and majority < ONE_CLASS_SHARE:
        accuracy = float((pred == labels).double().mean())
        if accuracy <= majority + MAJORITY_MARGIN:
            return (
                f"accuracy {accuracy:.3f} is at the majority-class rate {majority:.3f} on "
                f"{n} test rows"
            )
    return None
