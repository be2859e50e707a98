"""pellucid: a PyTorch-native workbench for understanding neural networks.

Train it stably (``pellucid.clipping``, ``pellucid.monitoring``), make it small
(``pellucid.pruning``), explain it (``pellucid.attribute`` and the attribution functions,
``pellucid.inspection``) and check that the explanation is faithful (``pellucid.metrics``).
"""

from __future__ import annotations

__version__ = "0.1.0"

from pellucid import attribution  # noqa: F401  (registers the attribution methods)
from pellucid._registry import MethodInfo, attribute, get_method, list_methods
from pellucid._warnings import PellucidWarning
from pellucid.attribution import *  # noqa: F403  (names listed in attribution.__all__)
from pellucid.attribution import __all__ as _attribution_all
from pellucid.explanation import Explanation
from pellucid.monitoring import GradientMonitor

__all__ = [
    "__version__",
    "Explanation",
    "GradientMonitor",
    "MethodInfo",
    "PellucidWarning",
    "attribute",
    "get_method",
    "list_methods",
    *_attribution_all,
]
