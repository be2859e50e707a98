"""Weight constraints applied after the optimizer step: weight clipping and max-norm.

* :func:`weight_clip` — ``θ ← clip(θ, −c, c)`` on every entry (WGAN's critic clamp).
* :func:`max_norm` — Keras' ``MaxNorm``: every unit's incoming weight vector (a row of a
  ``Linear`` weight, an output filter of a convolution: all dimensions but ``dim``) is
  rescaled to norm at most ``max_value``.

A constraint computes the new values (a pure function of the weights, ``constraint(ws)``);
:func:`constrain_` decides the non-finite policy first, then writes them in place (the
gradient clippers' compute-then-apply). :class:`WeightClipper` runs it in
:func:`pellucid.training.fit` after every optimizer step.

Non-finite weights follow the gradient policies: ``"raise"`` names the first parameter
and changes nothing, ``"skip"`` leaves every weight as it is this step, ``"zero"``
replaces NaN/inf by 0 before constraining, ``"propagate"`` constrains as is (NaN stays).

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
    >>> _ = constrain_([w], max_norm(1.0))
    >>> w.detach().norm(dim=1).tolist()
    [1.0, 0.5]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pellucid._validation import check_float, check_int
from pellucid.clipping.guard import NonFiniteGradientError, check_policy, nonfinite_flags
from pellucid.training import Callback, TrainState

__all__ = [
    "NonFiniteWeightError",
    "WeightClipper",
    "WeightConstraint",
    "constrain_",
    "max_norm",
    "weight_clip",
]


class NonFiniteWeightError(NonFiniteGradientError):
    """A weight holds NaN or inf and the policy is ``"raise"``."""


@dataclass(frozen=True)
class WeightConstraint:
    """A pure map from weights to constrained weights, and which parameters it applies to.

    Attributes:
        name: ``"weight_clip"`` or ``"max_norm"``.
        bound: ``c`` or ``max_value``.
        fn: ``list[Tensor] -> list[Tensor]`` (new tensors; the inputs are not changed).
        min_ndim: parameters with fewer dimensions are left alone (max-norm: 2, biases
            and norm scales have no units).
    """

    name: str
    bound: float
    fn: Callable[[list[torch.Tensor]], list[torch.Tensor]]
    min_ndim: int = 0

    def __call__(self, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.fn(weights)


def weight_clip(value: float) -> WeightConstraint:
    """``θ ← clip(θ, −value, value)`` entry-wise (weight clipping).

    Raises:
        TypeError: `value` is not a real number.
        ValueError: `value` is not > 0.

    Example:
        >>> weight_clip(0.5)([torch.tensor([-2.0, 0.1, 3.0])])[0].tolist()
        [-0.5, 0.10000000149011612, 0.5]
    """
    c = check_float("value", value, min_value=0.0, min_inclusive=False)
    return WeightConstraint("weight_clip", c, lambda ws: [w.clamp(-c, c) for w in ws])


def max_norm(max_value: float = 2.0, *, dim: int = 0, eps: float = 1e-7) -> WeightConstraint:
    """Keras ``MaxNorm``: rescale each unit's weight vector to norm ``<= max_value``.

    Args:
        max_value: the largest 2-norm a unit's weights may have.
        dim: the units' dimension (0: output units of ``Linear``/``Conv``); the norm runs
            over all other dimensions.
        eps: added to the norm in the scale ``max_value / (norm + eps)`` of a unit above
            the bound, as Keras does. Units within the bound are left exactly as they are
            (Keras multiplies them by ``norm / (norm + eps)``, a change of ~1e-7).

    Raises:
        TypeError: `max_value`, `dim` or `eps` has the wrong type.
        ValueError: `max_value` is not > 0, `dim` is negative or `eps` is negative.
    """
    bound = check_float("max_value", max_value, min_value=0.0, min_inclusive=False)
    axis = check_int("dim", dim, min_value=0)
    eps = check_float("eps", eps, min_value=0.0)

    def fn(ws: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for w in ws:
            moved = w.movedim(axis, 0)
            norms = moved.reshape(moved.shape[0], -1).norm(dim=1)
            scale = torch.where(norms > bound, bound / (norms + eps), torch.ones_like(norms))
            shape = [-1] + [1] * (w.ndim - 1)
            out.append((moved * scale.reshape(shape)).movedim(0, axis))
        return out

    return WeightConstraint("max_norm", bound, fn, min_ndim=max(2, axis + 1))


def _named(parameters: Any, constraint: WeightConstraint) -> list[tuple[str, torch.Tensor]]:
    if isinstance(parameters, nn.Module):
        named = list(parameters.named_parameters())
    else:
        named = [(f"parameter {i}", p) for i, p in enumerate(parameters)]
    for name, p in named:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"`parameters` must hold tensors; {name} is {type(p).__name__}.")
    return [(n, p) for n, p in named if p.ndim >= constraint.min_ndim]


@torch.no_grad()
def constrain_(
    parameters: nn.Module | Iterable[torch.Tensor],
    constraint: WeightConstraint,
    *,
    nonfinite: str = "raise",
) -> dict[str, torch.Tensor]:
    """Apply ``constraint`` to the parameters in place; returns device-side stats.

    Args:
        parameters: a module (its parameter names appear in errors) or tensors.
        constraint: :func:`weight_clip` or :func:`max_norm`.
        nonfinite: ``"raise"`` (default), ``"skip"``, ``"zero"`` or ``"propagate"``.

    Returns:
        ``{"changed": fraction of entries changed, "nonfinite": bool, "skipped": bool}``
        as 0-d tensors (no host synchronisation unless the policy needs one).

    Raises:
        TypeError: `constraint` is not a WeightConstraint, or `parameters` holds something
            else than tensors.
        ValueError: `nonfinite` is not a known policy.
        NonFiniteWeightError: a weight holds NaN/inf under ``nonfinite="raise"`` (nothing is
            changed).
    """
    if not isinstance(constraint, WeightConstraint):
        raise TypeError(
            f"`constraint` must be weight_clip(c) or max_norm(m); got {type(constraint).__name__}."
        )
    policy = check_policy(nonfinite)
    named = _named(parameters, constraint)
    weights = [p for _, p in named]
    false = torch.zeros((), dtype=torch.bool)
    if not weights:
        return {"changed": torch.zeros(()), "nonfinite": false, "skipped": false}
    flags = nonfinite_flags(weights)
    found = flags.any()
    if policy in ("raise", "skip") and bool(found):
        if policy == "raise":
            first = int(flags.nonzero()[0])
            raise NonFiniteWeightError(
                f"Non-finite weight in {named[first][0]}; {int(flags.sum())} of {len(weights)} "
                "weight tensors hold NaN/inf. Weights were left unchanged. Lower the learning "
                "rate or clip the gradients, or use nonfinite='skip' / 'zero'."
            )
        return {"changed": torch.zeros(()), "nonfinite": found, "skipped": found}
    if policy == "zero":
        for w in weights:
            torch.nan_to_num_(w, nan=0.0, posinf=0.0, neginf=0.0)
    new = constraint(weights)  # compute every new value first ...
    changed = torch.stack([(n != w).sum() for n, w in zip(new, weights, strict=True)]).sum()
    torch._foreach_copy_(weights, new)  # ... then write them all
    total = sum(w.numel() for w in weights)
    return {"changed": changed / total, "nonfinite": found, "skipped": false}


class WeightClipper(Callback):
    """Apply a weight constraint after every optimizer step of :func:`pellucid.training.fit`.

    Args:
        constraint: :func:`weight_clip` or :func:`max_norm`.
        nonfinite: the non-finite weight policy (see :func:`constrain_`).
        parameters: constrain only these (default: all of the model's; max-norm skips
            parameters without units, such as biases).

    Raises:
        TypeError: `constraint` is not a WeightConstraint.
        ValueError: `nonfinite` is not a known policy.

    Example:
        >>> import torch
        >>> from pellucid.models import MLP
        >>> from pellucid.training import fit
        >>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
        >>> net = MLP(4, 2)
        >>> _ = fit(net, (x, y), epochs=1, lr=0.5, callbacks=[WeightClipper(weight_clip(0.05))],
        ...         progress=False)
        >>> bool(all(p.abs().max() <= 0.05 for p in net.parameters()))
        True
    """

    def __init__(
        self, constraint: WeightConstraint, *, nonfinite: str = "raise", parameters: Any = None
    ) -> None:
        if not isinstance(constraint, WeightConstraint):
            raise TypeError(
                "`constraint` must be weight_clip(c) or max_norm(m); got "
                f"{type(constraint).__name__}."
            )
        self.constraint = constraint
        self.nonfinite = check_policy(nonfinite)
        self.parameters = None if parameters is None else list(parameters)
        self._rows: list[torch.Tensor] = []

    def on_train_begin(self, state: TrainState) -> None:
        self._rows = []

    def on_after_step(self, state: TrainState) -> None:
        target = self.parameters if self.parameters is not None else state.model
        stats = constrain_(target, self.constraint, nonfinite=self.nonfinite)
        self._rows.append(
            torch.stack([stats[k].double().cpu().reshape(()) for k in ("changed", "skipped")])
        )

    def summary(self) -> dict[str, float]:
        """Steps, mean fraction of weight entries changed, steps left unconstrained."""
        if not self._rows:
            return {"steps": 0, "changed_fraction": float("nan"), "skipped_steps": 0}
        rows = torch.stack(self._rows)
        return {
            "steps": len(self._rows),
            "changed_fraction": float(rows[:, 0].mean()),
            "skipped_steps": int(rows[:, 1].sum()),
        }
