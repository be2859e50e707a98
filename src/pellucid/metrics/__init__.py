"""Is the explanation true? Explanation-quality metrics, batched, one value per example.

Every metric takes the model, the inputs and the attributions (a tensor or an
``Explanation`` of these inputs), evaluates all examples x perturbations as batched forward
passes, leaves the model as it was and returns per-example tensors: nothing is averaged
for you. Curves come back as :class:`PerturbationCurve`, the randomization test as
:class:`RandomizationCheck`.
"""

from __future__ import annotations

from pellucid.metrics.agreement import agreement, kendall, spearman, top_k_overlap
from pellucid.metrics.completeness import completeness_gap
from pellucid.metrics.complexity import complexity, sparseness
from pellucid.metrics.faithfulness import (
    PerturbationCurve,
    deletion_auc,
    deletion_curve,
    faithfulness_correlation,
    insertion_auc,
    insertion_curve,
)
from pellucid.metrics.infidelity import infidelity
from pellucid.metrics.randomization import (
    RandomizationCheck,
    model_randomization_check,
    randomize_module_,
)
from pellucid.metrics.robustness import avg_sensitivity, max_sensitivity, sensitivities

__all__ = [
    "PerturbationCurve",
    "RandomizationCheck",
    "agreement",
    "avg_sensitivity",
    "complexity",
    "completeness_gap",
    "deletion_auc",
    "deletion_curve",
    "faithfulness_correlation",
    "infidelity",
    "insertion_auc",
    "insertion_curve",
    "kendall",
    "max_sensitivity",
    "model_randomization_check",
    "randomize_module_",
    "sensitivities",
    "sparseness",
    "spearman",
    "top_k_overlap",
]
