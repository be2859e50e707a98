"""The non-finite gradient policy, decided before any gradient is changed.

* ``"raise"``: raise :class:`NonFiniteGradientError` naming the first parameter whose
  gradient holds NaN/inf; gradients are left bit-identical.
* ``"skip"``: leave the gradients alone and tell the caller to skip this optimizer step.
* ``"zero"``: replace NaN/inf entries by 0, then clip as usual.
* ``"propagate"``: torch's behaviour (a NaN norm makes every gradient NaN).

Detection is a device-side flag: the total 2-norm is non-finite exactly when some entry is
NaN/inf (or, rarely, when huge finite values overflow it); ``"raise"`` and ``"skip"`` read
that flag on the host (one synchronisation per step, as a Python branch needs it) and
confirm a suspect step with the exact per-tensor max-norms (:func:`nonfinite_flags`).
``"zero"`` and ``"propagate"`` never synchronise (their flag may also mark an overflow).

Example:
    >>> import torch
    >>> flags = nonfinite_flags([torch.ones(2), torch.tensor([float("nan")])])
    >>> flags.tolist()
    [False, True]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pellucid._validation import check_choice
from pellucid.clipping.functional import GradNorms

__all__ = [
    "NONFINITE_POLICIES",
    "NonFiniteGradientError",
    "check_policy",
    "guard_",
    "nonfinite_flags",
]

NONFINITE_POLICIES = ("raise", "skip", "zero", "propagate")


class NonFiniteGradientError(RuntimeError):
    """A gradient holds NaN or inf and the policy is ``"raise"``."""


def check_policy(policy: str) -> str:
    """Validate a ``nonfinite=`` policy name.

    Raises:
        ValueError: `policy` is not one of NONFINITE_POLICIES.
    """
    return check_choice("nonfinite", policy, NONFINITE_POLICIES)


@torch.no_grad()
def nonfinite_flags(
    grads: Sequence[torch.Tensor] | GradNorms,
) -> torch.Tensor:
    """One bool per tensor (on the first tensor's device): does it hold a NaN or inf?

    Uses the max-norm of each tensor (cached in a :class:`GradNorms`), so no host sync.
    """
    norms = grads if isinstance(grads, GradNorms) else GradNorms(list(grads))
    if not norms.tensors:
        return torch.zeros(0, dtype=torch.bool)
    first = norms.tensors[0].device
    maxima = torch.stack([n.to(first, torch.float64) for n in norms.norms(math.inf)])
    return ~torch.isfinite(maxima)


def _describe_first(
    grads: Sequence[torch.Tensor], names: Sequence[str], flags: torch.Tensor
) -> str:
    index = int(torch.nonzero(flags)[0])
    grad = grads[index]
    n_nan = int(torch.isnan(grad).sum())
    n_inf = int(torch.isinf(grad).sum())
    return (
        f"{names[index]} (shape {tuple(grad.shape)}: {n_nan} NaN and {n_inf} inf of "
        f"{grad.numel()} entries)"
    )


@torch.no_grad()
def guard_(
    grads: list[torch.Tensor],
    names: Sequence[str],
    policy: str,
    norms: GradNorms,
) -> tuple[torch.Tensor, bool, GradNorms]:
    """Apply ``policy`` to ``grads``; return ``(nonfinite flag, skip, norms to use next)``.

    ``skip`` is a host bool, True only under ``"skip"`` when a non-finite value was found.
    Under ``"zero"`` the gradients are cleaned in place and fresh norms are returned.

    Raises:
        NonFiniteGradientError: under `"raise"`, when a gradient holds NaN/inf (the gradients are
            left unchanged).
    """
    if not grads:
        return torch.zeros((), dtype=torch.bool), False, norms
    # Any NaN/inf entry makes the 2-norm NaN/inf, so a finite 2-norm (usually computed for
    # clipping anyway) proves every entry finite; only then-suspect steps pay for the exact
    # per-tensor max-norm check (a huge but finite gradient can overflow the 2-norm).
    suspect = ~torch.isfinite(norms.total(2.0))
    if policy in ("raise", "skip"):
        if not bool(suspect):
            return suspect, False, norms
        flags = nonfinite_flags(norms)
        found = flags.any()
        if policy == "raise" and bool(found):
            raise NonFiniteGradientError(
                "Non-finite gradient in " + _describe_first(grads, names, flags) + "; "
                f"{int(flags.sum())} of {len(grads)} gradients hold NaN/inf. Gradients were "
                "left unchanged. Lower the learning rate, clip earlier, check the loss for "
                "log(0) or division by zero, or use nonfinite='skip' to drop such steps."
            )
        return found, policy == "skip" and bool(found), norms
    if policy == "zero":
        for g in grads:
            torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
        return suspect, False, GradNorms(grads, foreach=norms.foreach)
    return suspect, False, norms
