"""Global views of a model: surrogates, probes of weights/activations/gradients."""

from __future__ import annotations

from pellucid.inspection.permutation import PermutationImportance, permutation_importance
from pellucid.inspection.probes import (
    ProbeRecord,
    activation_functions,
    probe,
    record_activations,
    record_gradients,
    record_weights,
)
from pellucid.inspection.surrogate import GlobalSurrogate, Rule

__all__ = [
    "GlobalSurrogate",
    "PermutationImportance",
    "ProbeRecord",
    "Rule",
    "activation_functions",
    "permutation_importance",
    "probe",
    "record_activations",
    "record_gradients",
    "record_weights",
]
