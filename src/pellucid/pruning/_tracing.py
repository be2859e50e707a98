"""Tracing for structured pruning: ``torch.fx`` with known leaves and a fallback.

Attention blocks, channels-last norms and per-sample scalings are traced as one node each
(their channels are handled by the layer table). Ignored modules are leaves too. A module
whose forward ``torch.fx`` cannot trace (Python control flow on tensor values) is traced as
a leaf that is kept whole, and the trace is retried; the plan then says which modules were
kept and why. Only when the model's own forward cannot be traced is the plan refused, with
the failing line given relative to its package (never through the user's folder names).
"""

from __future__ import annotations

import traceback
from typing import Any

from torch import fx, nn

from pellucid.pruning._layers import is_leaf
from pellucid.pruning._recording import relative_where

__all__ = ["trace", "traced_leaf"]

_MAX_RETRIES = 64
_FX = fx.Tracer()


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves
        self.failed: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return traced_leaf(m, module_qualified_name, self.leaves)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed is None:  # the innermost module whose forward failed
                self.failed = self.path_of_module(m)
            raise


def traced_leaf(m: nn.Module, name: str, leaves: set[str]) -> bool:
    """Whether ``m`` is traced as one node: kept-whole and ignored modules, pellucid's known
    leaves (norms, attention, per-sample scalings) and ``torch.fx``'s (``torch.nn`` layers)."""
    return name in leaves or is_leaf(m) or _FX.is_leaf_module(m, name)


def _where(err: BaseException) -> str:
    """The last frame of the failure outside torch and pellucid, as ``package/file.py:line``."""
    return relative_where(traceback.extract_tb(err.__traceback__))


def trace(model: nn.Module, ignore: set[str]) -> tuple[fx.GraphModule, dict[str, str]]:
    """Trace ``model``; returns the graph module and ``{module kept whole: why}``."""
    leaves: dict[str, str] = {}
    for _ in range(_MAX_RETRIES):
        tracer = _Tracer(set(ignore) | set(leaves))
        try:
            graph = tracer.trace(model)
        except Exception as err:  # fx raises many types; find the module that failed
            failing = tracer.failed or ""
            if not failing or failing in leaves:
                raise ValueError(
                    f"`model` cannot be traced by torch.fx{_where(err)}: "
                    f"{type(err).__name__}: {err}. Structured pruning needs a traceable "
                    "forward: move data-dependent Python control flow (if/for on tensor "
                    "values) out of `forward`, into a submodule (which is then kept whole)."
                ) from err
            leaves[failing] = (
                f"module {failing!r} cannot be traced by torch.fx{_where(err)} "
                f"({type(err).__name__}); it is kept whole"
            )
            continue
        return fx.GraphModule(tracer.root, graph), leaves
    raise ValueError("`model` cannot be traced by torch.fx: too many untraceable modules.")
