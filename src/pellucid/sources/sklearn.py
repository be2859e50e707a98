"""``from_sklearn``: a fitted scikit-learn MLP as an equivalent ``nn.Module``.

The module holds the estimator's weights (``coefs_``, ``intercepts_``) in ``nn.Linear``
layers, its hidden activation and its output activation, so that every gradient and
decomposition method works on it and its outputs equal the estimator's
(``predict_proba`` for a classifier, ``predict`` for a regressor).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["BinaryProbabilities", "from_sklearn"]

_HIDDEN = {
    "identity": nn.Identity,
    "logistic": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
}


class BinaryProbabilities(nn.Module):
    """``z (N, 1) -> [1 - sigmoid(z), sigmoid(z)]`` (N, 2): a binary classifier's probabilities."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(z)
        return torch.cat([1.0 - p, p], dim=1)


def from_sklearn(
    estimator: Any, *, output: str = "probabilities", dtype: torch.dtype = torch.float64
) -> nn.Sequential:
    """Convert a fitted ``MLPClassifier`` or ``MLPRegressor`` into an equivalent network.

    Args:
        estimator: the fitted scikit-learn MLP (not modified).
        output: ``"probabilities"`` ends with the estimator's output activation (softmax,
            the binary two-column sigmoid, multi-label sigmoid, or identity for a
            regressor), so outputs equal ``predict_proba`` / ``predict``; ``"logits"``
            stops before it (the pre-activation scores, one per output unit).
        dtype: the parameters' dtype (float64 reproduces the estimator to 1e-12).

    Returns:
        ``nn.Sequential`` of ``Linear`` layers and activations, in eval mode.

    Raises:
        TypeError: ``estimator`` is not a scikit-learn MLP.
        ValueError: it is not fitted, or ``output`` is unknown.

    Example:
        >>> import numpy as np
        >>> from sklearn.neural_network import MLPRegressor
        >>> X = np.linspace(-1, 1, 20).reshape(10, 2)
        >>> mlp = MLPRegressor(hidden_layer_sizes=(4,), max_iter=50).fit(X, X.sum(1))
        >>> net = from_sklearn(mlp)
        >>> bool(np.allclose(net(torch.as_tensor(X)).squeeze(1).detach().numpy(), mlp.predict(X)))
        True
    """
    kind = type(estimator).__name__
    if kind not in ("MLPClassifier", "MLPRegressor") or not hasattr(estimator, "get_params"):
        raise TypeError(
            "`estimator` must be a fitted scikit-learn MLPClassifier or MLPRegressor; got "
            f"{kind}. Other estimators can be explained directly by the model-agnostic "
            "methods (kernel_shap, lime, permutation_importance, GlobalSurrogate)."
        )
    if output not in ("probabilities", "logits"):
        raise ValueError(f"`output` must be 'probabilities' or 'logits'; got {output!r}.")
    if not hasattr(estimator, "coefs_"):
        raise ValueError(f"`estimator` ({kind}) is not fitted; call `.fit(X, y)` first.")
    activation = estimator.activation
    if activation not in _HIDDEN:
        raise ValueError(
            f"`estimator.activation` must be one of {sorted(_HIDDEN)}; got {activation!r}."
        )
    layers: list[nn.Module] = []
    count = len(estimator.coefs_)
    for i, (weight, bias) in enumerate(zip(estimator.coefs_, estimator.intercepts_, strict=True)):
        linear = nn.Linear(weight.shape[0], weight.shape[1], dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(weight.T, dtype=dtype))
            linear.bias.copy_(torch.as_tensor(bias, dtype=dtype))
        layers.append(linear)
        if i < count - 1:
            layers.append(_HIDDEN[activation]())
    if output == "probabilities":
        final = estimator.out_activation_
        if final == "softmax":
            layers.append(nn.Softmax(dim=1))
        elif final == "logistic":
            binary = kind == "MLPClassifier" and len(estimator.classes_) == 2
            binary = binary and estimator.n_outputs_ == 1
            layers.append(BinaryProbabilities() if binary else nn.Sigmoid())
        elif final != "identity":
            raise ValueError(f"Unsupported output activation {final!r} of {kind}.")
    return nn.Sequential(*layers).eval()
