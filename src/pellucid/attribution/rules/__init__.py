"""Rule-based decompositions: DeepLIFT, LRP, guided backprop and deconvolution.

A method is a table ``operation name -> handler``; a handler returns the rule for one call
(None: the ordinary gradient), and rules are small declarative values. Adding an operation
to a method is adding a table entry. The package:

* ``_ops``: the names of the operations, grouped (linear, products, activations, ...);
* ``_engine``: the :class:`RuleEngine`, which attaches rules to the torch operations a model
  actually executes and refuses any non-linear operation its table does not name; the rule
  base class and the table helpers (``always``, ``bilinear``, ``gradient``, ``Decompose``);
* ``_records``: the engine's bookkeeping (which layer ran each operation, which rule it got);
* ``_paired``: the paired pass (reference rows, then the explained rows) that DeepLIFT's
  multipliers need, and its reference-pass strategies;
* ``_elementwise``: ``grad_map(grad) * slope`` rules (guided, deconvolution, LRP identity);
* ``_attention``: attention written as the operations it is made of;
* ``_ledger``: LRP's ledger of the relevance absorbed by constants (biases, embeddings);
* ``_deeplift``, ``_lrp``, ``_guided``: each method's rules and table;
* ``_methods``: what each public method hands the method shell (``engine=``): the rule
  engine factories, DeepLIFT's baseline and paired pass, and ``rule_gradients``.

The public methods (:func:`pellucid.attribution.deeplift`, ``lrp``, ``guided_backprop``,
``deconvolution``, ``guided_grad_cam``) are thin shells over what is exported here.
"""

from __future__ import annotations

from pellucid.attribution.rules._deeplift import DEEPLIFT_REFERENCE_OPS, DEEPLIFT_RULES
from pellucid.attribution.rules._engine import (
    Handler,
    Rule,
    RuleEngine,
    UnsupportedOperationError,
)
from pellucid.attribution.rules._guided import DECONVOLUTION_RULES, GUIDED_RULES
from pellucid.attribution.rules._lrp import (
    LRP_RULES,
    LrpRules,
    LrpTable,
    conservation,
    lrp_handlers,
)
from pellucid.attribution.rules._methods import DeepLiftRules, rule_gradients, rules_for
from pellucid.attribution.rules._paired import PairedEngine, PairedForward
from pellucid.attribution.rules._tables import freeze_parameters

__all__ = [
    "DECONVOLUTION_RULES",
    "DeepLiftRules",
    "DEEPLIFT_REFERENCE_OPS",
    "DEEPLIFT_RULES",
    "GUIDED_RULES",
    "LRP_RULES",
    "Handler",
    "LrpRules",
    "LrpTable",
    "PairedEngine",
    "PairedForward",
    "Rule",
    "RuleEngine",
    "UnsupportedOperationError",
    "conservation",
    "freeze_parameters",
    "lrp_handlers",
    "rule_gradients",
    "rules_for",
]
