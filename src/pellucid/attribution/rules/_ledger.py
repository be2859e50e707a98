"""Where relevance goes that does not reach the inputs: LRP's ledger of absorbed relevance.

LRP redistributes the explained score ``f(x)`` layer by layer; relevance is conserved by
every rule except where a constant takes part in a layer's output. A bias, batch norm's
shift, layer norm's bias, the epsilon stabilizer, a positional embedding added to the
token stream, a class token concatenated to it: each *absorbs* its share (as zennit and
AttnLRP do, and as PA-LRP names for positional encodings). So the attributions alone do not
sum to ``f(x)``; the attributions plus the absorbed relevance do.

The :class:`Ledger` measures the absorbed relevance independently of the attributions, at
every site where it happens, during the same backward pass:

* a rule that does not conserve by construction (epsilon, gamma, alpha-beta; see
  ``Rule.conserves``) reports ``sum(y * grad_y) - sum(x * grad_x)`` of its call;
* a linear operation with a constant operand (``x + pos``, ``cat([cls, x])``, ``x - c``,
  padding with a value, writing a constant into the stream) reports ``sum(c * grad_y)``,
  ``c`` being the operation's output with the input-dependent operands set to zero.

Sums are per example (the batch is the first dimension of every tensor the decompositions
see: attention is decomposed batch first). A site is named like ``extras["rules"]``:
``"layer: op"``, or ``"parameter name: op"`` when the constant is a named parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["SHIFT_OPS", "Ledger", "constant_part", "row_sums"]

#: Linear operations through which a constant operand can enter the relevance flow.
SHIFT_OPS = frozenset(
    """add __add__ __radd__ __iadd__ add_ sub __sub__ __rsub__ __isub__ sub_ rsub cat concat
    concatenate stack hstack vstack pad constant_pad_nd __setitem__""".split()
)
_INPLACE = frozenset({"__iadd__", "add_", "__isub__", "sub_", "__setitem__"})


def row_sums(t: torch.Tensor) -> torch.Tensor:
    """Per-example sums of ``t`` (the batch is its first dimension)."""
    t = t.detach()
    if t.dim() == 0:
        return t.reshape(1)
    return t.reshape(t.shape[0], -1).sum(dim=1)


def _depends(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.requires_grad


def _constant(value: Any) -> bool:
    """A constant operand that adds something: a tensor that does not depend on the inputs
    (not all zero), or a non-zero number."""
    if isinstance(value, torch.Tensor):
        return not value.requires_grad and value.is_floating_point() and bool(value.any())
    return isinstance(value, int | float) and not isinstance(value, bool) and value != 0


def _has_constant(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if name in ("cat", "concat", "concatenate", "stack", "hstack", "vstack"):
        parts = args[0] if args else kwargs.get("tensors", ())
        return any(_constant(p) for p in parts)
    if name in ("pad", "constant_pad_nd"):
        value = kwargs.get("value", args[3] if name == "pad" and len(args) > 3 else None)
        if name == "constant_pad_nd":
            value = kwargs.get("value", args[2] if len(args) > 2 else 0)
        mode = kwargs.get("mode", args[2] if name == "pad" and len(args) > 2 else "constant")
        return mode == "constant" and _constant(value)
    if name == "__setitem__":
        return len(args) > 2 and (_constant(args[2]) or not _depends(args[2]))
    operands = list(args[:2]) + [v for k, v in kwargs.items() if k == "other"]
    return any(_constant(v) for v in operands) and any(_depends(v) for v in operands)


def _zeroed(value: Any) -> Any:
    if _depends(value):
        return torch.zeros_like(value.detach())
    if isinstance(value, list | tuple):
        return type(value)(_zeroed(v) for v in value)
    return value


def constant_part(
    name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> torch.Tensor | None:
    """The output of the linear op ``func(*args)`` with every input-dependent operand set to
    zero: the constant it adds. None when it adds no constant."""
    if name not in SHIFT_OPS or not _has_constant(name, args, kwargs):
        return None
    zeroed = [_zeroed(a) for a in args]
    if name in _INPLACE and isinstance(zeroed[0], torch.Tensor):
        zeroed[0] = zeroed[0].detach().clone()  # never write into the model's own tensors
    with torch.no_grad():
        out = func(*zeroed, **{k: _zeroed(v) for k, v in kwargs.items()})
    out = zeroed[0] if out is None else out  # __setitem__ writes into its first operand
    return out if isinstance(out, torch.Tensor) else None


class Ledger:
    """Relevance absorbed per site and per example, collected during backward passes.

    Each model call (:meth:`begin`) opens an entry; sites created during that call add
    their per-example sums to it when the backward pass reaches them. Calls whose output
    was never differentiated (a forward without graph) leave an empty entry.
    """

    def __init__(self) -> None:
        self._calls: list[dict[str, list[torch.Tensor]]] = []

    def begin(self) -> None:
        """A new model call (one chunk of rows)."""
        self._calls.append({})

    def sink(self, key: str) -> Callable[[torch.Tensor], None]:
        """A function that records one contribution (per-example sums) of site ``key`` to
        the current call."""
        if not self._calls:
            self.begin()
        entry = self._calls[-1]

        def add(rows: torch.Tensor) -> None:
            entry.setdefault(key, []).append(rows.detach())

        return add

    def watch(self, key: str, out: torch.Tensor, constant: torch.Tensor) -> None:
        """Record ``sum(constant * grad_out)`` when the backward pass reaches ``out``."""
        add = self.sink(key)

        def hook(grad: torch.Tensor) -> None:
            add(row_sums(constant * grad))

        out.register_hook(hook)

    def absorbed(self, rows: int) -> dict[str, torch.Tensor] | None:
        """Site -> absorbed relevance per example (``rows`` of them), in call order; None
        when the contributions cannot be told apart by example (a site whose tensors do
        not have the batch first)."""
        calls = [c for c in self._calls if c]
        keys = list(dict.fromkeys(k for c in calls for k in c))
        sizes: list[int] = []
        for call in calls:
            lengths = {t.shape[0] for parts in call.values() for t in parts}
            if len(lengths) != 1:
                return None
            sizes.append(lengths.pop())
        if sum(sizes) != rows:
            return None if calls else {}
        out: dict[str, torch.Tensor] = {}
        for key in keys:
            like = next(parts[0] for c in calls if (parts := c.get(key)))
            pieces = [
                torch.stack(parts).sum(0)
                if (parts := call.get(key))
                else torch.zeros(size, dtype=like.dtype, device=like.device)
                for call, size in zip(calls, sizes, strict=True)
            ]
            out[key] = torch.cat(pieces)
        return out
