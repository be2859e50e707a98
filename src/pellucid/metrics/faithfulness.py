"""Faithfulness: does the model's output move the way the attributions say it should?

* Deletion and insertion curves (Petsiuk et al. 2018; pixel flipping, Bach et al. 2015):
  remove (or insert) features in order of attribution and follow the target score.
* ``faithfulness_correlation`` (Bhatt et al. 2020): Pearson correlation between the sum of
  the attributions of random feature subsets and the drop in score when they are removed.
* ``infidelity`` (Yeh et al. 2019) lives in :mod:`pellucid.metrics.infidelity`.

Every metric evaluates all examples x perturbations as batched forwards, returns one value
per example and leaves the model as it was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pellucid._evaluate import check_memory_options
from pellucid._state import model_guard
from pellucid._validation import check_int, check_tensor
from pellucid.metrics._common import flat_features, score_rows, setup_metric
from pellucid.metrics._perturb import fill_values, per_example
from pellucid.metrics.agreement import pearson_rows

__all__ = [
    "PerturbationCurve",
    "deletion_auc",
    "deletion_curve",
    "faithfulness_correlation",
    "insertion_auc",
    "insertion_curve",
]


@dataclass(frozen=True)
class PerturbationCurve:
    """A deletion or insertion curve for every example.

    Attributes:
        kind: ``"deletion"`` or ``"insertion"``.
        fractions: ``(P,)`` fraction of features removed (inserted) at each point, 0 to 1.
        scores: ``(N, P)`` target score of every example at each point.
        auc: ``(N,)`` area under each curve over ``fractions`` (trapezoid rule). Low is
            faithful for deletion, high for insertion.
    """

    kind: str
    fractions: torch.Tensor
    scores: torch.Tensor
    auc: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _groups(feature_mask: Any, inputs: torch.Tensor) -> torch.Tensor:
    """A shared ``feature_mask`` of one example's shape -> flat group ids ``0..G-1``."""
    mask = check_tensor("feature_mask", feature_mask)
    if mask.is_floating_point() or mask.dtype == torch.bool:
        raise TypeError(f"`feature_mask` must hold integer group ids; got dtype {mask.dtype}.")
    if tuple(mask.shape) != tuple(inputs.shape[1:]):
        raise ValueError(
            f"`feature_mask` must have the shape of one example {tuple(inputs.shape[1:])} "
            f"(shared by all examples); got {tuple(mask.shape)}."
        )
    _, flat = torch.unique(mask.reshape(-1).to(inputs.device), return_inverse=True)
    return flat


def _curve(
    kind: str,
    model: Any,
    inputs: Any,
    attributions: Any,
    *,
    target: Any,
    baseline: Any,
    step: int | None,
    absolute: bool,
    feature_mask: torch.Tensor | None,
    blur_sigma: float,
    batch_size: int | None,
    max_memory: Any,
    forward_args: Any,
    forward_kwargs: Mapping[str, Any] | None,
    output: Any,
    eval_mode: bool | None,
) -> PerturbationCurve:
    if not isinstance(absolute, bool):
        raise TypeError(f"`absolute` must be True or False; got {absolute!r}.")
    check_memory_options(batch_size, max_memory)
    with model_guard(model, eval_mode=eval_mode, method=f"the {kind} curve"):
        setup = setup_metric(
            model,
            inputs,
            attributions,
            target=target,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
            output=output,
        )
        x = flat_features(setup.inputs)
        n = x.shape[0]
        fill = flat_features(fill_values(baseline, setup.inputs, blur_sigma=blur_sigma))
        attr = flat_features(setup.attributions)
        groups = None
        if feature_mask is not None:
            groups = _groups(feature_mask, setup.inputs)
            total = int(groups.max()) + 1
            attr = torch.zeros(n, total, dtype=attr.dtype, device=attr.device).index_add_(
                1, groups, attr
            )
        d = attr.shape[1]
        step = check_int(
            "step",
            max(1, math.ceil(d / 50)) if step is None else step,  # default: about 50 points
            min_value=1,
            max_value=d,
            hint=f" The inputs have {d} features per example.",
        )
        order = torch.argsort(attr.abs() if absolute else attr, dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(d, device=order.device).expand(n, d).contiguous()
        )
        if groups is not None:  # every element takes its group's rank
            rank = rank.index_select(1, groups)
        counts = torch.clamp(torch.arange(0, d + step, step, device=x.device), max=d)
        counts = counts[: math.ceil(d / step) + 1]
        points = counts.numel()
        start_rows, end_rows = (x, fill) if kind == "deletion" else (fill, x)
        shape = setup.inputs.shape[1:]

        def make_rows(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            r = torch.arange(start, stop, device=x.device)
            example, k = r // points, r % points
            changed = rank.index_select(0, example) < counts.index_select(0, k).unsqueeze(1)
            rows = torch.where(
                changed, end_rows.index_select(0, example), start_rows.index_select(0, example)
            )
            return rows.reshape(-1, *shape), example

        scores = score_rows(
            setup, make_rows, n * points, batch_size=batch_size, max_memory=max_memory
        )
    fractions = counts.to(x.dtype) / d
    scores = scores.reshape(n, points)
    auc = torch.trapezoid(scores, fractions, dim=1)
    return PerturbationCurve(kind=kind, fractions=fractions, scores=scores, auc=auc)


_CURVE_DOC = """

    Features are ranked by attribution (largest first; by magnitude with ``absolute=True``)
    and {verb} ``step`` at a time; every point of every example's curve is one row of a
    batched forward pass.

    Args:
        model: a callable ``Tensor -> Tensor``, usually an ``nn.Module``.
        inputs: a batch-first float tensor ``(N, ...)``.
        attributions: a tensor of the inputs' shape or an ``Explanation`` of these inputs
            (its ``target`` is reused when ``target`` is None).
        target: which output to follow (int, per-example, ``"predicted"``, callable, None).
        baseline: the value of a removed feature: None (zeros), a number, a tensor of one
            example's or of the batch's shape, or ``"blur"`` (a Gaussian-blurred copy of the
            image, ``blur_sigma`` pixels).
        step: features changed per point (default: about 50 points per curve).
        absolute: rank by ``|attribution|`` instead of the signed value.
        feature_mask: optional integer group ids of one example's shape (e.g. the same id
            for the channels of a pixel, or superpixels): groups are ranked by their summed
            attribution and removed together; ``step`` and ``fractions`` count groups.
        batch_size: rows per forward pass.
        max_memory: a budget for the call's peak memory, in bytes or as a size such as
            ``"2GB"`` or ``"512MiB"``: picks ``batch_size`` from the perturbed rows' cost and
            the model's activations measured on one row. Pass it or ``batch_size``, not both.

    Returns:
        A :class:`PerturbationCurve` with one curve and one AUC per example.
"""


def deletion_curve(
    model: Any,
    inputs: torch.Tensor,
    attributions: Any,
    *,
    target: Any = None,
    baseline: Any = None,
    step: int | None = None,
    absolute: bool = False,
    feature_mask: torch.Tensor | None = None,
    blur_sigma: float = 1.0,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> PerturbationCurve:
    """The target score as the most important features are removed (replaced by ``baseline``).

    Raises:
        TypeError: `model` is not callable, `inputs` or `attributions` is not a tensor, or an option
            has the wrong type.
        ValueError: `attributions` does not match the shape of `inputs`, `target` does not fit the
            model's output, or `step` or `feature_mask` is out of range;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(4, 1, bias=False)
        >>> _ = net.weight.data.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
        >>> x = torch.ones(1, 4)
        >>> deletion_curve(net, x, x * net.weight.detach(), step=1).scores
        tensor([[10.,  6.,  3.,  1.,  0.]])
    """
    return _curve(
        "deletion",
        model,
        inputs,
        attributions,
        target=target,
        baseline=baseline,
        step=step,
        absolute=absolute,
        feature_mask=feature_mask,
        blur_sigma=blur_sigma,
        batch_size=batch_size,
        max_memory=max_memory,
        forward_args=forward_args,
        forward_kwargs=forward_kwargs,
        output=output,
        eval_mode=eval_mode,
    )


def insertion_curve(
    model: Any,
    inputs: torch.Tensor,
    attributions: Any,
    *,
    target: Any = None,
    baseline: Any = None,
    step: int | None = None,
    absolute: bool = False,
    feature_mask: torch.Tensor | None = None,
    blur_sigma: float = 1.0,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> PerturbationCurve:
    """The target score as the most important features are inserted into ``baseline``.

    Raises:
        TypeError: `model` is not callable, `inputs` or `attributions` is not a tensor, or an option
            has the wrong type.
        ValueError: `attributions` does not match the shape of `inputs`, `target` does not fit the
            model's output, or `step` or `feature_mask` is out of range;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(4, 1, bias=False)
        >>> _ = net.weight.data.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
        >>> x = torch.ones(1, 4)
        >>> insertion_curve(net, x, x * net.weight.detach(), step=1).scores
        tensor([[ 0.,  4.,  7.,  9., 10.]])
    """
    return _curve(
        "insertion",
        model,
        inputs,
        attributions,
        target=target,
        baseline=baseline,
        step=step,
        absolute=absolute,
        feature_mask=feature_mask,
        blur_sigma=blur_sigma,
        batch_size=batch_size,
        max_memory=max_memory,
        forward_args=forward_args,
        forward_kwargs=forward_kwargs,
        output=output,
        eval_mode=eval_mode,
    )


deletion_curve.__doc__ = (deletion_curve.__doc__ or "").rstrip() + _CURVE_DOC.format(verb="removed")
insertion_curve.__doc__ = (insertion_curve.__doc__ or "").rstrip() + _CURVE_DOC.format(
    verb="inserted"
)


def deletion_auc(
    model: Any, inputs: torch.Tensor, attributions: Any, **kwargs: Any
) -> torch.Tensor:
    """Area under the deletion curve per example (``deletion_curve(...).auc``); lower is better.

    Raises:
        TypeError: `model` is not callable, `inputs` or `attributions` is not a tensor, or an option
            has the wrong type.
        ValueError: `attributions` does not match the shape of `inputs`, `target` does not fit the
            model's output, or `step` or `feature_mask` is out of range;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(4, 1, bias=False)
        >>> _ = net.weight.data.fill_(1.0)
        >>> deletion_auc(net, torch.ones(2, 4), torch.ones(2, 4), step=1)
        tensor([2., 2.])
    """
    return deletion_curve(model, inputs, attributions, **kwargs).auc


def insertion_auc(
    model: Any, inputs: torch.Tensor, attributions: Any, **kwargs: Any
) -> torch.Tensor:
    """Area under the insertion curve per example (``insertion_curve(...).auc``); higher is better.

    Raises:
        TypeError: `model` is not callable, `inputs` or `attributions` is not a tensor, or an option
            has the wrong type.
        ValueError: `attributions` does not match the shape of `inputs`, `target` does not fit the
            model's output, or `step` or `feature_mask` is out of range;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(4, 1, bias=False)
        >>> _ = net.weight.data.fill_(1.0)
        >>> insertion_auc(net, torch.ones(2, 4), torch.ones(2, 4), step=1)
        tensor([2., 2.])
    """
    return insertion_curve(model, inputs, attributions, **kwargs).auc


def faithfulness_correlation(
    model: Any,
    inputs: torch.Tensor,
    attributions: Any,
    *,
    target: Any = None,
    n_samples: int = 100,
    subset_size: int | None = None,
    baseline: Any = None,
    masks: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> torch.Tensor:
    """Faithfulness correlation (Bhatt et al. 2020), one value in [-1, 1] per example.

    For ``n_samples`` random subsets ``S`` of ``subset_size`` features, the features in ``S``
    are replaced by ``baseline``; the result is the Pearson correlation, over the subsets,
    between ``sum(attributions[S])`` and ``f(x) - f(x with S removed)``. NaN for an example
    whose attribution sums or score drops do not vary.

    Args:
        n_samples: number of random subsets per example.
        subset_size: features per subset (default: a quarter of the features).
        baseline: value of a removed feature (None: zeros, a number or a tensor).
        masks: optional boolean subsets to use instead of random ones, shape
            ``(n_samples, *features)`` (shared) or ``(N, n_samples, *features)``; handy to
            score several explanations or models on the same perturbations.
        generator: random source of the subsets.
        batch_size: rows per forward pass.
        max_memory: a budget for the call's peak memory, in bytes or as a size such as
            ``"2GB"`` or ``"512MiB"``: picks ``batch_size`` from the perturbed rows' cost and
            the model's activations measured on one row. Pass it or ``batch_size``, not both.

    Raises:
        TypeError: `model` is not callable, `inputs` or `attributions` is not a tensor, or an option
            has the wrong type.
        ValueError: `attributions` does not match the shape of `inputs`, `target` does not fit the
            model's output, or `n_samples` < 2 or `subset_size` is out of range;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(6, 1)
        >>> x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
        >>> r = faithfulness_correlation(net, x, x * net.weight.detach(), n_samples=20)
        >>> torch.allclose(r, torch.ones(3))
        True
    """
    check_memory_options(batch_size, max_memory)
    with model_guard(model, eval_mode=eval_mode, method="faithfulness_correlation"):
        setup = setup_metric(
            model,
            inputs,
            attributions,
            target=target,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
            output=output,
        )
        x = flat_features(setup.inputs)
        n, d = x.shape
        fill = flat_features(fill_values(baseline, setup.inputs, blur_sigma=1.0))
        attr = flat_features(setup.attributions)
        if masks is not None:
            chosen = per_example(masks, setup.inputs, name="masks")
            if chosen.dtype != torch.bool:
                raise TypeError(f"`masks` must be a boolean tensor; got dtype {chosen.dtype}.")
            n_samples = chosen.shape[1]
            chosen = chosen.reshape(n, n_samples, d)
            # row r is example r // S, sample r % S: contiguous slices of per-example masks
            flat = chosen.reshape(n * n_samples, d) if chosen.stride(0) != 0 else None
            size = None
        else:
            n_samples = check_int("n_samples", n_samples, min_value=2)
            if subset_size is None:
                subset_size = max(1, d // 4)
            size = check_int(
                "subset_size",
                subset_size,
                min_value=1,
                max_value=d,
                hint=f" The inputs have {d} features per example.",
            )
        sums: list[torch.Tensor] = []
        shape = setup.inputs.shape[1:]

        def make_rows(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            r = torch.arange(start, stop, device=x.device)
            example = r // n_samples
            if size is None:
                mask = chosen[0, r % n_samples] if flat is None else flat[start:stop]
            else:
                noise = torch.rand(stop - start, d, generator=generator, dtype=torch.float32)
                top = noise.to(x.device).topk(size, dim=1).indices
                mask = torch.zeros(stop - start, d, dtype=torch.bool, device=x.device)
                mask.scatter_(1, top, True)
            sums.append((attr.index_select(0, example) * mask).sum(dim=1))
            rows = torch.where(mask, fill.index_select(0, example), x.index_select(0, example))
            return rows.reshape(-1, *shape), example

        perturbed = score_rows(
            setup, make_rows, n * n_samples, batch_size=batch_size, max_memory=max_memory
        )
    drops = setup.scores.unsqueeze(1) - perturbed.reshape(n, n_samples)
    return pearson_rows(torch.cat(sums).reshape(n, n_samples), drops)
