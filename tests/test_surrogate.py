"""GlobalSurrogate: fidelity, rules, layers, scikit-learn conventions, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pellucid.data import load_dataset
from pellucid.inspection import GlobalSurrogate, Rule

DT = torch.float64


def test_linear_network_has_fidelity_one():
    torch.manual_seed(0)
    net = nn.Linear(5, 1).to(DT)
    x = torch.randn(200, 5, dtype=DT)
    s = GlobalSurrogate(net, kind="linear").fit(x)
    assert s.task_ == "regression"
    assert s.fidelity_ == pytest.approx(1.0, abs=1e-10)
    assert s.train_fidelity_ == pytest.approx(1.0, abs=1e-10)
    assert s.complexity_ == {"nonzero": 5}
    # the equation recovers the network's weights in the original units
    line = s.rules()[0]
    assert line.startswith(f"score = {float(net.bias.detach()):.4g}")
    for w in net.weight.detach()[0].tolist():
        assert f"{abs(w):.4g}" in line


def test_linear_classifier_is_imitated():
    torch.manual_seed(1)
    net = nn.Linear(4, 3).to(DT)
    x = torch.randn(400, 4, dtype=DT)
    s = GlobalSurrogate(net, kind="linear", class_names=["a", "b", "c"]).fit(x)
    assert s.task_ == "classification" and list(s.classes_) == [0, 1, 2]
    assert s.fidelity_ >= 0.97  # the network's decision regions are linear
    assert len(s.rules()) == 3 and s.rules()[0].startswith("logit('a') =")


def test_tree_rules_reproduce_the_tree_exactly():
    data = load_dataset("breast_cancer", seed=0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 2))
    s = GlobalSurrogate(
        net,
        kind="tree",
        max_depth=3,
        feature_names=data.feature_names,
        class_names=data.class_names,
    )
    assert s.fit(data.X_train, validation=data.X_test) is s
    rules = s.decision_rules()
    feats = s.transform(data.X_test)
    cover = np.stack([r.applies(feats) for r in rules])
    assert (cover.sum(axis=0) == 1).all()  # leaves partition the space
    np.testing.assert_array_equal(s.rule_predict(data.X_test), s.predict(data.X_test))
    text = s.rules()
    assert len(text) == len(rules) == s.complexity_["leaves"]
    assert all(line.startswith("if ") and " then " in line for line in text)
    named = [n for n in data.feature_names if any(n in line for line in text)]
    assert named  # rules use the feature names
    assert 0.0 <= s.fidelity_ <= 1.0 and s.n_held_out_ == data.X_test.shape[0]
    assert s.score(data.X_test) == pytest.approx(s.fidelity_)
    assert s.complexity_["depth"] <= 3


def test_surrogate_on_a_hidden_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 1)).to(DT)
    x = torch.randn(120, 6, dtype=DT)
    # The output is linear in the ReLU layer's activations: fidelity 1 there.
    s = GlobalSurrogate(net, kind="linear", layer="1").fit(x)
    assert s.fidelity_ == pytest.approx(1.0, abs=1e-9)
    assert s.feature_names_ == ["1[0]", "1[1]", "1[2]", "1[3]"]
    assert s.transform(x[:3]).shape == (3, 4)


def test_regression_tree_rules_and_determinism():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(150, 3)
    a = GlobalSurrogate(net, max_depth=2, random_state=3).fit(x)
    b = GlobalSurrogate(net, max_depth=2, random_state=3).fit(x)
    assert a.rules() == b.rules() and a.fidelity_ == b.fidelity_
    assert all("score" in line for line in a.rules())
    np.testing.assert_allclose(a.rule_predict(x), a.predict(x))
    assert isinstance(a.decision_rules()[0], Rule)


def test_model_is_untouched_and_constructor_only_stores():
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.3), nn.Linear(4, 2)).train()
    s = GlobalSurrogate(net, kind="tree", max_depth=-1)  # validated at fit, not here
    assert s.max_depth == -1 and not hasattr(s, "fidelity_")
    s.max_depth = 2
    s.fit(torch.randn(60, 3))
    assert net.training and all(p.grad is None for p in net.parameters())
    assert not any(m._forward_hooks for m in net.modules())


def test_bad_input():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(40, 3)
    with pytest.raises(ValueError, match=r"`layer` must name a submodule.*Did you mean '1'"):
        GlobalSurrogate(net, layer="11").fit(x)
    with pytest.raises(ValueError, match=r"needs at least 10 held-out rows; `validation` gives 4"):
        GlobalSurrogate(net).fit(x, validation=x[:4])
    with pytest.raises(ValueError, match=r"at least 10 held-out rows; `test_size=0.1` of 40"):
        GlobalSurrogate(net, test_size=0.1).fit(x)
    with pytest.raises(ValueError, match="`kind` must be one of 'tree', 'linear'"):
        GlobalSurrogate(net, kind="forest").fit(x)
    with pytest.raises(ValueError, match=r"`feature_names` must name every input feature \(3\)"):
        GlobalSurrogate(net, feature_names=["a"]).fit(x)
    with pytest.raises(ValueError, match="`max_depth` must be an integer >= 1"):
        GlobalSurrogate(net, max_depth=0).fit(x)
    with pytest.raises(AttributeError, match="not fitted yet"):
        GlobalSurrogate(net).predict(x)
    with pytest.raises(TypeError, match="`X` must be a batch-first tensor"):
        GlobalSurrogate(net).fit([1, 2, 3])
    with pytest.raises(ValueError, match="`task='regression'` needs a network with one output"):
        GlobalSurrogate(net, task="regression").fit(x)
