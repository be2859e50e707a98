"""Rule-based decompositions: DeepLIFT, LRP, guided backprop and deconvolution.

The package is the whole machinery behind the decomposition methods:

* ``_engine``: the :class:`RuleEngine`, which attaches rules to the torch operations a model
  actually executes and refuses any non-linear operation it has no rule for;
* ``_paired``: the paired pass (reference rows first, then the explained rows) that
  DeepLIFT's multipliers need;
* ``_deeplift``, ``_lrp``, ``_guided``: each method's rules and its table of operation ->
  rule handler.

The public methods (:func:`pellucid.attribution.deeplift`, ``lrp``, ``guided_backprop``,
``deconvolution``, ``guided_grad_cam``) are thin shells over what is exported here.
"""

from __future__ import annotations

from pellucid.attribution.rules._deeplift import DEEPLIFT_REFERENCE_OPS, deeplift_handlers
from pellucid.attribution.rules._engine import (
    Handler,
    Rule,
    RuleEngine,
    UnsupportedOperationError,
    freeze_parameters,
)
from pellucid.attribution.rules._guided import DeconvReLU, GuidedReLU, relu_handlers
from pellucid.attribution.rules._lrp import LRP_RULES, LrpRules, lrp_handlers
from pellucid.attribution.rules._paired import (
    PairedEngine,
    PairedForward,
    deeplift_chunks,
    reference_output,
)

__all__ = [
    "DEEPLIFT_REFERENCE_OPS",
    "LRP_RULES",
    "DeconvReLU",
    "GuidedReLU",
    "Handler",
    "LrpRules",
    "PairedEngine",
    "PairedForward",
    "Rule",
    "RuleEngine",
    "UnsupportedOperationError",
    "deeplift_chunks",
    "deeplift_handlers",
    "freeze_parameters",
    "lrp_handlers",
    "reference_output",
    "relu_handlers",
]
