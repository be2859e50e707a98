"""Global surrogates: a small, readable model fitted to the network's own predictions.

A decision tree or a linear/logistic model learns to imitate the network (not the labels)
from the inputs or from a hidden layer's activations. How well it imitates it on held-out
rows is its *fidelity* (agreement of the predicted classes, or R² of the scores); only a
faithful surrogate's rules say something about the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pellucid._adapt import adapt
from pellucid._evaluate import map_chunks, resolve_batch_size, select_output
from pellucid._state import model_guard
from pellucid._validation import check_choice, check_float, check_int, check_layer, describe_value

__all__ = ["MIN_HELD_OUT", "GlobalSurrogate", "Rule"]

#: Fewest held-out rows for which a fidelity estimate is reported.
MIN_HELD_OUT = 10


@dataclass(frozen=True)
class Rule:
    """One leaf of a surrogate tree: conditions (feature index, ``"<="`` or ``">"``, threshold)
    that all hold, and the prediction there."""

    conditions: tuple[tuple[int, str, float], ...]
    prediction: Any
    samples: int

    def applies(self, features: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows (surrogate features) this rule covers."""
        # sklearn trees compare float32 features against float64 thresholds
        x = np.asarray(features, dtype=np.float32).astype(np.float64)
        mask = np.ones(x.shape[0], dtype=bool)
        for feature, op, threshold in self.conditions:
            column = x[:, feature]
            mask &= column <= threshold if op == "<=" else column > threshold
        return mask


class GlobalSurrogate:
    """A decision tree or linear model that imitates a network's predictions.

    Args:
        model: the network, a callable ``Tensor -> Tensor`` (an ``nn.Module`` for ``layer``).
        kind: ``"tree"`` or ``"linear"`` (logistic regression for classes).
        layer: fit on this hidden layer's activations (a submodule or its dotted name)
            instead of the inputs.
        task: ``"auto"`` (classes when the network has several outputs, else scores),
            ``"classification"`` or ``"regression"``.
        max_depth: the tree's depth limit.
        min_samples_leaf: the tree's smallest leaf.
        alpha: L2 penalty of the linear model on standardized features (0: none).
        feature_names: names of the input features (default ``x[j]``).
        class_names: names of the network's classes, used in the rules.
        test_size: share of the rows held out for ``fidelity_`` when ``fit`` gets no
            ``validation`` rows.
        random_state: seed of the split and the tree.
        batch_size: rows per forward pass.

    Attributes (after ``fit``):
        surrogate_: the fitted scikit-learn estimator.
        task_: ``"classification"`` or ``"regression"``.
        fidelity_: agreement (classes) or R² (scores) with the network on held-out rows.
        train_fidelity_: the same on the rows it was fitted on.
        n_held_out_: rows behind ``fidelity_``.
        complexity_: ``{"depth", "leaves"}`` for a tree, ``{"nonzero"}`` for a linear model.
        feature_names_: names of the surrogate's features.
        classes_: the class indices it predicts (classification).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1)
        >>> s = GlobalSurrogate(net, kind="linear").fit(torch.randn(80, 3))
        >>> round(s.fidelity_, 6)
        1.0
    """

    def __init__(
        self,
        model: Any,
        *,
        kind: str = "tree",
        layer: Any = None,
        task: str = "auto",
        max_depth: int | None = 3,
        min_samples_leaf: int = 5,
        alpha: float = 0.0,
        feature_names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        test_size: float = 0.25,
        random_state: int = 0,
        batch_size: int | None = None,
    ) -> None:
        self.model = model
        self.kind = kind
        self.layer = layer
        self.task = task
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.alpha = alpha
        self.feature_names = feature_names
        self.class_names = class_names
        self.test_size = test_size
        self.random_state = random_state
        self.batch_size = batch_size

    # ------------------------------------------------------------------ network side
    def _network(self, inputs: Any) -> tuple[np.ndarray, np.ndarray]:
        """The surrogate's features and the network's outputs for ``inputs``."""
        model, inputs, columns = adapt(self.model, inputs, method="GlobalSurrogate")
        if columns is not None:
            self._columns = columns
        if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2:
            raise TypeError(
                f"`X` must be a batch-first tensor (N, features...); got {describe_value(inputs)}."
            )
        if not inputs.is_floating_point():
            inputs = inputs.to(torch.get_default_dtype())
        module = None if self.layer is None else check_layer(model, self.layer)
        captured: list[torch.Tensor] = []
        handle = None
        if module is not None:
            handle = module.register_forward_hook(
                lambda _m, _i, out: captured.append(select_output(out).reshape(out.shape[0], -1))
            )
        size = resolve_batch_size(self.batch_size, inputs[0].numel(), total=inputs.shape[0])
        try:
            with model_guard(model, eval_mode=True, method="the surrogate"):
                outputs = map_chunks(
                    lambda a, b: select_output(model(inputs[a:b])).reshape(b - a, -1),
                    inputs.shape[0],
                    size,
                )
        finally:
            if handle is not None:
                handle.remove()
        feats = torch.cat(captured) if module is not None else inputs.reshape(inputs.shape[0], -1)
        return feats.detach().cpu().double().numpy(), outputs.detach().cpu().double().numpy()

    def _labels(self, outputs: np.ndarray) -> np.ndarray:
        if self.task_ == "regression":
            if outputs.shape[1] != 1:
                raise ValueError(
                    f"`task='regression'` needs a network with one output; it has "
                    f"{outputs.shape[1]}. Use `task='classification'`."
                )
            return outputs[:, 0]
        if outputs.shape[1] == 1:
            return (outputs[:, 0] > 0).astype(np.int64)
        return outputs.argmax(axis=1)

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None, *, validation: Any = None) -> GlobalSurrogate:
        """Fit the surrogate to the network's predictions on ``X``.

        Args:
            X: inputs, batch first (tensor or array).
            y: ignored: the surrogate imitates the network, not the labels.
            validation: held-out inputs for ``fidelity_`` (default: ``test_size`` of ``X``).

        Returns:
            self

        Raises:
            TypeError: `X` is not a batch-first tensor.
            ValueError: too few rows to fit and to estimate fidelity on, `task="regression"` on a
                network with several outputs, a network that predicts a single class (logistic
                surrogate), or `feature_names` of another length.
        """
        from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
        from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

        check_choice("kind", self.kind, ("tree", "linear"))
        check_choice("task", self.task, ("auto", "classification", "regression"))
        alpha = check_float("alpha", self.alpha, min_value=0.0)
        leaf = check_int("min_samples_leaf", self.min_samples_leaf, min_value=1)
        depth = (
            None if self.max_depth is None else check_int("max_depth", self.max_depth, min_value=1)
        )
        feats, outputs = self._network(X)
        if validation is None:
            test_size = check_float(
                "test_size",
                self.test_size,
                min_value=0.0,
                max_value=1.0,
                min_inclusive=False,
                max_inclusive=False,
            )
            order = np.random.default_rng(self.random_state).permutation(feats.shape[0])
            n_test = int(round(test_size * feats.shape[0]))
            test, train = order[:n_test], order[n_test:]
            test_feats, test_outputs = feats[test], outputs[test]
            feats, outputs = feats[train], outputs[train]
            where = f"`test_size={test_size}` of {len(order)} rows"
        else:
            test_feats, test_outputs = self._network(validation)
            where = "`validation`"
        if test_feats.shape[0] < MIN_HELD_OUT:
            raise ValueError(
                f"The fidelity estimate needs at least {MIN_HELD_OUT} held-out rows; "
                f"{where} gives {test_feats.shape[0]}. Pass more rows or `validation=`."
            )
        if feats.shape[0] < 2:
            raise ValueError(f"`X` must leave at least 2 rows to fit on; got {feats.shape[0]}.")
        self.task_ = (
            self.task
            if self.task != "auto"
            else ("classification" if outputs.shape[1] > 1 else "regression")
        )
        names = self._feature_names(feats.shape[1])
        y_train, y_test = self._labels(outputs), self._labels(test_outputs)
        classify = self.task_ == "classification"
        if self.kind == "tree":
            tree_cls = DecisionTreeClassifier if classify else DecisionTreeRegressor
            est = tree_cls(max_depth=depth, min_samples_leaf=leaf, random_state=self.random_state)
            est.fit(feats, y_train)
            self.mean_ = np.zeros(feats.shape[1])
            self.scale_ = np.ones(feats.shape[1])
            self.complexity_ = {"depth": int(est.get_depth()), "leaves": int(est.get_n_leaves())}
        else:
            self.mean_ = feats.mean(axis=0)
            std = feats.std(axis=0)
            self.scale_ = np.where(std > 0, std, 1.0)
            z = (feats - self.mean_) / self.scale_
            if classify:
                if len(np.unique(y_train)) < 2:
                    raise ValueError(
                        "The network predicts a single class on `X`; a logistic surrogate "
                        "needs at least two. Use more varied inputs or `kind='tree'`."
                    )
                est = LogisticRegression(C=1.0 / alpha if alpha > 0 else 1e6, max_iter=5000)
            else:
                est = Ridge(alpha=alpha) if alpha > 0 else LinearRegression()
            est.fit(z, y_train)
            self.complexity_ = {
                "nonzero": int((np.abs(np.atleast_2d(est.coef_)) > 1e-12).any(axis=0).sum())
            }
        self.surrogate_ = est
        self.feature_names_ = names
        self.n_features_in_ = feats.shape[1]
        if classify:
            self.classes_ = est.classes_
        self.train_fidelity_ = self._fidelity(feats, y_train)
        self.fidelity_ = self._fidelity(test_feats, y_test)
        self.n_held_out_ = int(test_feats.shape[0])
        return self

    def _feature_names(self, width: int) -> list[str]:
        if self.layer is not None:
            name = self.layer if isinstance(self.layer, str) else type(self.layer).__name__
            return [f"{name}[{j}]" for j in range(width)]
        if self.feature_names is None:
            columns = getattr(self, "_columns", None)
            if columns is not None and len(columns) == width:
                return list(columns)
            return [f"x[{j}]" for j in range(width)]
        names = [str(n) for n in self.feature_names]
        if len(names) != width:
            raise ValueError(
                f"`feature_names` must name every input feature ({width}); got {len(names)}."
            )
        return names

    def _predict_features(self, feats: np.ndarray) -> np.ndarray:
        return self.surrogate_.predict((feats - self.mean_) / self.scale_)

    def _fidelity(self, feats: np.ndarray, target: np.ndarray) -> float:
        pred = self._predict_features(feats)
        if self.task_ == "classification":
            return float(np.mean(pred == target))
        total = float(np.sum((target - target.mean()) ** 2))
        resid = float(np.sum((target - pred) ** 2))
        if total == 0:
            return 1.0 if resid == 0 else 0.0
        return 1.0 - resid / total

    # ------------------------------------------------------------------ use
    def _check_fitted(self) -> None:
        if not hasattr(self, "surrogate_"):
            raise AttributeError(
                "This GlobalSurrogate is not fitted yet; call `fit(X)` before using it."
            )

    def transform(self, X: Any) -> np.ndarray:
        """The surrogate's features for ``X``: flattened inputs or the layer's activations.

        Raises:
            AttributeError: the surrogate is not fitted yet.
        """
        self._check_fitted()
        return self._network(X)[0]

    def predict(self, X: Any) -> np.ndarray:
        """The surrogate's prediction (class index or score) for inputs ``X``.

        Raises:
            AttributeError: the surrogate is not fitted yet.
        """
        self._check_fitted()
        return self._predict_features(self.transform(X))

    def score(self, X: Any, y: Any = None) -> float:
        """Fidelity to the network on ``X`` (agreement for classes, R² for scores).

        Raises:
            AttributeError: the surrogate is not fitted yet.
        """
        self._check_fitted()
        feats, outputs = self._network(X)
        return self._fidelity(feats, self._labels(outputs))

    def decision_rules(self) -> list[Rule]:
        """The tree's leaves as :class:`Rule` objects (one per leaf, they partition the space).

        Raises:
            ValueError: the surrogate is linear (`kind="linear"`), not a tree.
        """
        self._check_fitted()
        if self.kind != "tree":
            raise ValueError("`decision_rules()` needs `kind='tree'`; this surrogate is linear.")
        tree = self.surrogate_.tree_
        rules: list[Rule] = []

        def walk(node: int, path: tuple[tuple[int, str, float], ...]) -> None:
            left, right = tree.children_left[node], tree.children_right[node]
            if left == right:  # a leaf
                value = tree.value[node]
                if self.task_ == "classification":
                    prediction: Any = self.classes_[int(np.argmax(value[0]))]
                else:
                    prediction = float(value[0][0])
                rules.append(Rule(path, prediction, int(tree.n_node_samples[node])))
                return
            feature, threshold = int(tree.feature[node]), float(tree.threshold[node])
            walk(left, (*path, (feature, "<=", threshold)))
            walk(right, (*path, (feature, ">", threshold)))

        walk(0, ())
        return rules

    def rule_predict(self, X: Any) -> np.ndarray:
        """Predict by applying :meth:`decision_rules` (equals ``predict`` for a tree)."""
        feats = self.transform(X)
        rules = self.decision_rules()
        out = np.empty(feats.shape[0], dtype=object)
        for rule in rules:
            out[rule.applies(feats)] = rule.prediction
        return out.astype(np.float64 if self.task_ == "regression" else np.int64)

    def _class_name(self, index: Any) -> str:
        if self.class_names is not None and 0 <= int(index) < len(self.class_names):
            return repr(str(self.class_names[int(index)]))
        return f"class {int(index)}"

    def rules(self) -> list[str]:
        """Readable if-then rules (tree) or equations (linear), with the feature names.

        Raises:
            AttributeError: the surrogate is not fitted yet.

        Example:
            >>> import torch
            >>> net = torch.nn.Linear(2, 1)
            >>> GlobalSurrogate(net, kind="linear", feature_names=["a", "b"]).fit(
            ...     torch.randn(50, 2)).rules()[0].startswith("score =")
            True
        """
        self._check_fitted()
        names = self.feature_names_
        if self.kind == "tree":
            lines = []
            for rule in self.decision_rules():
                cond = " and ".join(f"{names[f]} {op} {t:.4g}" for f, op, t in rule.conditions)
                what = (
                    self._class_name(rule.prediction)
                    if self.task_ == "classification"
                    else f"score {rule.prediction:.4g}"
                )
                lines.append(f"if {cond or 'always'} then {what} ({rule.samples} samples)")
            return lines
        coef = np.atleast_2d(self.surrogate_.coef_) / self.scale_
        intercept = np.atleast_1d(self.surrogate_.intercept_) - coef @ self.mean_
        lines = []
        for row, (weights, bias) in enumerate(zip(coef, intercept, strict=True)):
            if self.task_ == "regression":
                head = "score"
            elif coef.shape[0] == 1:
                head = f"logit({self._class_name(self.classes_[1])})"
            else:
                head = f"logit({self._class_name(self.classes_[row])})"
            order = np.argsort(-np.abs(weights))
            terms = " ".join(
                f"{'-' if weights[j] < 0 else '+'} {abs(weights[j]):.4g} * {names[j]}"
                for j in order
                if abs(weights[j]) > 1e-12
            )
            lines.append(f"{head} = {bias:.4g} {terms}".rstrip())
        return lines
