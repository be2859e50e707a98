"""Helpers that build a method's table: ``operation name -> handler``.

A handler is called with ``(engine, name, func, args, kwargs)`` for one call of an
operation and returns the :class:`Rule` for it, or None for the ordinary gradient.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pellucid._state import freeze_parameters
from pellucid.attribution.rules._engine import Decompose, Handler, Rule, RuleEngine, gradient

__all__ = ["always", "bilinear", "entries", "eval_batch_norm", "freeze_parameters", "gradient"]


def always(rule: Rule) -> Handler:
    """Handler: ``rule`` for every call of the op."""

    def handler(engine: RuleEngine, name: str, func: Any, args: Any, kwargs: Any) -> Rule:
        return rule

    return handler


def _operand(value: Any) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not isinstance(value, nn.Parameter)
    )


def bilinear(rule: Rule) -> Handler:
    """Handler: ``rule`` (of arity 2) for products whose two operands are computed tensors
    (not parameters, not numbers); the decision does not depend on which of them requires
    grad, so a reference pass without a graph makes the same one."""

    def handler(engine: RuleEngine, name: str, func: Any, args: Any, kwargs: Any) -> Rule | None:
        if len(args) >= 2 and _operand(args[0]) and _operand(args[1]):
            return rule
        return None

    return handler


def eval_batch_norm(engine: RuleEngine, name: str, func: Any, args: Any, kwargs: Any) -> None:
    """Handler: batch norm is affine (ordinary gradient) in eval mode; refused in training."""
    training = kwargs.get("training", args[5] if len(args) > 5 else False)
    if training:
        raise engine.unsupported(
            name,
            " in training mode (it mixes the rows of a batch); call "
            "model.eval() or pass eval_mode=True",
        )
    return None


def entries(names: Iterable[str], handler: Handler | Decompose) -> dict[str, Any]:
    """``{name: handler for name in names}``: one line of a method's table."""
    return dict.fromkeys(names, handler)
