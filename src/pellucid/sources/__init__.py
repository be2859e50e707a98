"""Models and data a user brings: one loader for the CLI, the study and the Python API.

* :func:`load_model` / :class:`ModelSpec`: factories by import path with safetensors or
  ``weights_only`` checkpoints, ``torch.export`` programs, TorchScript files;
* :func:`estimator_model` and :func:`from_sklearn`: scikit-learn estimators explained
  directly (model-agnostic methods) or converted (MLPs, for gradient methods);
* :func:`load_data` / :class:`DataSpec`: CSV/Parquet tables, ``.npz``/``.npy`` arrays,
  image folders, ``torch`` Datasets by import path.
"""

from __future__ import annotations

from pellucid._adapt import EstimatorModel, estimator_model
from pellucid.sources.data import load_data
from pellucid.sources.models import SourceError, import_object, load_model, load_weights
from pellucid.sources.sklearn import from_sklearn
from pellucid.sources.spec import DataSpec, ModelSpec

__all__ = [
    "DataSpec",
    "EstimatorModel",
    "ModelSpec",
    "SourceError",
    "estimator_model",
    "from_sklearn",
    "import_object",
    "load_data",
    "load_model",
    "load_weights",
]
