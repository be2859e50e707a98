"""The one adapter at the public boundary: scikit-learn estimators, numpy arrays, DataFrames.

Every model-agnostic entry point (the registered attribution methods, permutation
importance, the metrics, the surrogates) calls :func:`adapt` once, before validating: a
fitted estimator becomes an :class:`EstimatorModel` (an ``nn.Module`` without parameters
whose forward calls ``predict_proba``, ``decision_function`` or ``predict``), and array or
DataFrame inputs become a tensor (a DataFrame's columns become the feature names). Methods
that need gradients refuse an estimator and point to ``pellucid.models.from_sklearn``.
Nothing here imports scikit-learn or pandas unless the user passed their objects.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["EstimatorModel", "adapt", "adapt_inputs", "adapt_model", "estimator_model"]

RESPONSES = ("auto", "predict_proba", "decision_function", "predict")
_AGNOSTIC = "kernel_shap, lime, occlusion, feature_ablation, sampling_shapley"


def is_estimator(value: Any) -> bool:
    """True for a scikit-learn-style estimator: not callable, has ``fit`` and ``predict``."""
    return (
        not isinstance(value, nn.Module)
        and not callable(value)
        and hasattr(value, "fit")
        and (hasattr(value, "predict") or hasattr(value, "predict_proba"))
    )


def _is_frame(value: Any) -> bool:
    return type(value).__name__ == "DataFrame" and hasattr(value, "columns")


class EstimatorModel(nn.Module):
    """A fitted estimator as a ``Tensor -> Tensor`` model (no parameters, no gradients).

    Rows are flattened to ``(N, D)`` and handed to the estimator as a float64 array (as a
    DataFrame with its ``feature_names_in_`` when it was fitted on one); the response comes
    back as a tensor of the inputs' floating dtype, ``(N, K)`` (``(N, 1)`` for a 1-d
    response).

    Attributes:
        estimator: the fitted estimator (never modified).
        response: the method called: ``predict_proba``, ``decision_function`` or ``predict``.
    """

    def __init__(self, estimator: Any, response: str) -> None:
        super().__init__()
        self.estimator = estimator
        self.response = response
        self._call = getattr(estimator, response)
        self._columns = getattr(estimator, "feature_names_in_", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The estimator's response to the rows ``x`` (as a float tensor on ``x``'s device).

        Raises:
            TypeError: the rows require grad (an estimator has no gradients).
            ValueError: the estimator's response is not numeric.
        """
        if torch.is_grad_enabled() and x.requires_grad:
            raise TypeError(
                f"`model` is a scikit-learn estimator ({type(self.estimator).__name__}), which "
                "has no gradients. Convert an MLPClassifier/MLPRegressor with "
                "`pellucid.models.from_sklearn(estimator)`, or use a model-agnostic method "
                f"({_AGNOSTIC})."
            )
        rows = x.detach().reshape(x.shape[0], -1).cpu().double().numpy()
        if self._columns is not None and len(self._columns) == rows.shape[1]:
            import pandas as pd

            rows = pd.DataFrame(rows, columns=list(self._columns))
        out = np.asarray(self._call(rows))
        if out.dtype.kind not in "biuf":
            raise ValueError(
                f"`model` ({type(self.estimator).__name__}).{self.response} returned "
                f"non-numeric values (dtype {out.dtype}); attribute a numeric response: pass "
                "the estimator through `pellucid.estimator_model(est, response=...)`."
            )
        result = torch.as_tensor(out.reshape(out.shape[0], -1))
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        return result.to(device=x.device, dtype=dtype)


def estimator_model(estimator: Any, *, response: str = "auto") -> EstimatorModel:
    """Wrap a fitted scikit-learn estimator as a model pellucid can explain without gradients.

    Args:
        estimator: a fitted estimator (or pipeline) with ``predict_proba``,
            ``decision_function`` or ``predict``.
        response: which method gives the explained scores; ``"auto"`` takes
            ``predict_proba``, else ``decision_function``, else ``predict`` (regressors).

    Raises:
        TypeError: ``estimator`` is not an estimator, or lacks the ``response`` method.
        ValueError: the estimator is not fitted, or ``response`` is unknown.

    Example:
        >>> import numpy as np
        >>> from sklearn.linear_model import LogisticRegression
        >>> X, y = np.eye(4), np.array([0, 1, 0, 1])
        >>> estimator_model(LogisticRegression().fit(X, y)).response
        'predict_proba'
    """
    if isinstance(estimator, EstimatorModel):
        return estimator
    if not is_estimator(estimator):
        raise TypeError(
            "`estimator` must be a fitted scikit-learn estimator with predict_proba, "
            f"decision_function or predict; got {type(estimator).__name__}."
        )
    if response not in RESPONSES:
        raise ValueError(
            f"`response` must be one of {', '.join(map(repr, RESPONSES))}; got {response!r}."
        )
    name = type(estimator).__name__
    try:
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(estimator)
    except NotFittedError:
        raise ValueError(
            f"`model` ({name}) is not fitted; call `.fit(X, y)` before explaining it."
        ) from None
    except TypeError:
        pass  # not a scikit-learn estimator, but duck-typed like one: trust it
    if response == "auto":
        is_classifier = getattr(estimator, "_estimator_type", None) == "classifier" or hasattr(
            estimator, "classes_"
        )
        for candidate in ("predict_proba", "decision_function", "predict"):
            if hasattr(estimator, candidate):
                if candidate == "predict" and is_classifier:
                    break
                return EstimatorModel(estimator, candidate)
        raise TypeError(
            f"`model` ({name}) is a classifier without predict_proba or decision_function: "
            "its predict returns labels, which cannot be attributed. Fit it with probability "
            "estimates (e.g. SVC(probability=True)), or wrap a scoring function yourself."
        )
    if not hasattr(estimator, response):
        raise TypeError(
            f"`model` ({name}) has no {response}; use response='auto' or one of its methods: "
            + ", ".join(r for r in RESPONSES[1:] if hasattr(estimator, r))
            + "."
        )
    return EstimatorModel(estimator, response)


def adapt_model(model: Any, *, method: str = "this method", gradients: bool = False) -> Any:
    """``model`` unchanged, or an estimator wrapped as an :class:`EstimatorModel`.

    With ``gradients``, an estimator (wrapped or not) is refused with a pointer to
    ``from_sklearn``.
    """
    wrapped = isinstance(model, EstimatorModel)
    if not wrapped and not is_estimator(model):
        return model
    if gradients:
        estimator = model.estimator if wrapped else model
        raise TypeError(
            f"`{method}` needs gradients, and `model` is a scikit-learn estimator "
            f"({type(estimator).__name__}) without any. Convert an MLPClassifier/MLPRegressor "
            "with `pellucid.models.from_sklearn(estimator)` first, or use a model-agnostic "
            f"method ({_AGNOSTIC})."
        )
    return estimator_model(model)


def adapt_inputs(inputs: Any, *, name: str = "inputs") -> tuple[Any, list[str] | None]:
    """``(tensor, column names)`` for an array or DataFrame; other values pass unchanged.

    numpy arrays keep float32/float64; integer and bool arrays become float64. A
    DataFrame must be all numeric and complete (the offending column is named).
    """
    if isinstance(inputs, torch.Tensor):
        return inputs, None
    names: list[str] | None = None
    if _is_frame(inputs):
        names = [str(c) for c in inputs.columns]
        for column in inputs.columns:
            kind = inputs[column].dtype.kind
            if kind not in "biuf":
                raise TypeError(
                    f"`{name}` column {str(column)!r} must be numeric; got dtype "
                    f"{inputs[column].dtype}. One-hot encode it, or load the file with "
                    "`pellucid.sources.load_data` and `categorical=[...]`."
                )
            if bool(inputs[column].isna().any()):
                row = int(np.flatnonzero(inputs[column].isna().to_numpy())[0])
                raise ValueError(
                    f"`{name}` column {str(column)!r} has missing values (first at row {row}); "
                    "impute or drop them first."
                )
        inputs = inputs.to_numpy()
    if isinstance(inputs, np.ndarray):
        if inputs.dtype.kind not in "biuf":
            raise TypeError(
                f"`{name}` must be a numeric array; got dtype {inputs.dtype}. Convert it with "
                "`.astype(float)` or one-hot encode non-numeric columns."
            )
        if inputs.dtype.kind != "f":
            inputs = inputs.astype(np.float64)
        return torch.from_numpy(np.ascontiguousarray(inputs)), names
    return inputs, names


def adapt(
    model: Any, inputs: Any, *, method: str = "this method", gradients: bool = False
) -> tuple[Any, Any, list[str] | None]:
    """:func:`adapt_model` and :func:`adapt_inputs` at once: ``(model, inputs, names)``."""
    model = adapt_model(model, method=method, gradients=gradients)
    inputs, names = adapt_inputs(inputs)
    return model, inputs, names
