"""The model-parameter randomization test (Adebayo et al. 2018), cascading from the top.

An explanation that does not change when the model's weights are replaced by random ones
cannot be explaining the model. The layers of a *copy* of the model are re-initialized one
after another, from the output towards the input; after each step the method explains the
randomized copy and its rank correlation with the original explanation is recorded. The
user's model is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pellucid._evaluate import prepare
from pellucid._state import model_guard
from pellucid._validation import check_float, check_layer, describe_value
from pellucid.metrics._common import make_explainer, rows_target
from pellucid.metrics.agreement import MEASURES, agreement

__all__ = ["RandomizationCheck", "model_randomization_check", "randomize_module_"]


@dataclass(frozen=True)
class RandomizationCheck:
    """The result of :func:`model_randomization_check`.

    Attributes:
        method: the explained method's name.
        layers: the layers randomized, in order (cascading: each step adds one).
        correlations: ``(len(layers), N)`` agreement of the explanation of the randomized
            copy with the original explanation, after each step.
        threshold: an example passes when its agreement after the last step is below it.
        measure: the agreement measure used.
    """

    method: str
    layers: tuple[str, ...]
    correlations: torch.Tensor
    threshold: float
    measure: str

    @property
    def final(self) -> torch.Tensor:
        """``(N,)`` agreement once every listed layer is randomized."""
        return self.correlations[-1]

    @property
    def passed(self) -> torch.Tensor:
        """``(N,)`` True where the explanation changed enough (NaN counts as changed)."""
        return ~(self.final >= self.threshold)

    @property
    def fraction_passed(self) -> float:
        """Share of the examples that pass."""
        return float(self.passed.to(torch.float64).mean())

    def summary(self) -> str:
        """One sentence: did the method pass, with the median final agreement."""
        verdict = "passes" if self.fraction_passed >= 0.5 else "FAILS"
        median = float(self.final.nanmedian()) if self.final.numel() else float("nan")
        return (
            f"{self.method} {verdict} the randomization check: median {self.measure} "
            f"agreement {median:.2f} after randomizing {len(self.layers)} layer(s) "
            f"(threshold {self.threshold:.2f}; {100 * self.fraction_passed:.0f}% of examples "
            "pass)."
        )


def randomize_module_(module: nn.Module, *, generator: torch.Generator | None = None) -> None:
    """Re-draw the parameters of ``module`` (not of its children) in place.

    Uses the module's own ``reset_parameters()`` when it has one, seeded from ``generator``
    without touching the global random state; otherwise each parameter is redrawn from a
    normal distribution with its current standard deviation.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(3, 3)
        >>> before = layer.weight.detach().clone()
        >>> randomize_module_(layer, generator=torch.Generator().manual_seed(0))
        >>> bool((layer.weight != before).any())
        True
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    params = list(module.parameters(recurse=False))
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            return
        for param in params:
            std = float(param.std()) if param.numel() > 1 else 1.0
            param.normal_(0.0, std if std > 0 else 1.0)


def _default_layers(model: nn.Module) -> list[str]:
    names = [name for name, m in model.named_modules() if any(True for _ in m.parameters(False))]
    return list(reversed(names))


def model_randomization_check(
    model: nn.Module,
    inputs: torch.Tensor,
    explain: str | Callable[..., Any],
    *,
    target: Any = None,
    layers: Sequence[str] | None = None,
    measure: str = "spearman",
    absolute: bool = True,
    threshold: float = 0.5,
    generator: torch.Generator | None = None,
    explain_kwargs: Mapping[str, Any] | None = None,
    eval_mode: bool | None = None,
) -> RandomizationCheck:
    """Cascading model-parameter randomization (Adebayo et al. 2018) on a copy of ``model``.

    Args:
        model: an ``nn.Module`` (it is deep-copied; the original is never changed).
        inputs: a batch-first float tensor.
        explain: a registered method name or a callable
            ``explain(model, inputs, *, target, **explain_kwargs) -> Tensor | Explanation``.
        target: which output to explain, fixed on the original model's outputs (so
            ``"predicted"`` keeps the original prediction).
        layers: names of the layers to randomize, in order (default: every module with
            parameters of its own, from the output back to the input).
        measure: ``"spearman"``, ``"kendall"`` or ``"top_k"``.
        absolute: compare rankings of ``|attribution|``.
        threshold: an example passes when the final agreement is below this.
        generator: random source of the new weights.

    Raises:
        TypeError: `model` is not an nn.Module, or `layers` is not a non-empty list of names.
        ValueError: `model` has no parameters, a `layers` entry is unknown, `explain` or `measure`
            is unknown, or `threshold` is out of range.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
        ...                           torch.nn.Linear(16, 1))
        >>> check = model_randomization_check(net, torch.randn(4, 8), "saliency",
        ...                                   generator=torch.Generator().manual_seed(0))
        >>> check.layers
        ('2', '0')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            "`model` must be an nn.Module: the check randomizes its parameters; got "
            f"{describe_value(model)}."
        )
    run = make_explainer(explain, explain_kwargs)
    threshold = check_float("threshold", threshold, min_value=-1.0, max_value=1.0)
    if measure not in MEASURES:
        agreement(torch.zeros(1, 1), torch.zeros(1, 1), measure=measure)  # raises the message
    if layers is None:
        names = _default_layers(model)
        if not names:
            raise ValueError("`model` has no parameters to randomize.")
    else:
        if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
            raise TypeError(
                f"`layers` must be a non-empty list of submodule names; got {describe_value(layers)}."
            )
        names = [str(name) for name in layers]
        for name in names:
            check_layer(model, name, name="layers")
    method = explain if isinstance(explain, str) else getattr(explain, "__name__", "explain")
    with model_guard(model, eval_mode=eval_mode, method="the randomization check"):
        prep = prepare(model, inputs, target=target)
        x = prep.inputs
        fixed = rows_target(prep.target, torch.arange(x.shape[0], device=x.device))
        original = run(model, x, fixed)
        randomized = copy.deepcopy(model)
    modules = dict(randomized.named_modules())
    rows = []
    with model_guard(randomized, eval_mode=eval_mode, method="the randomization check"):
        for name in names:
            randomize_module_(modules[name], generator=generator)
            explained = run(randomized, x, fixed)
            rows.append(agreement(original, explained, measure=measure, absolute=absolute))
    return RandomizationCheck(
        method=method,
        layers=tuple(names),
        correlations=torch.stack(rows),
        threshold=threshold,
        measure=measure,
    )
