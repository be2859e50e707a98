"""Models a user brings: factories + weights, exported and scripted files, scikit-learn."""

from __future__ import annotations

import pickle
import textwrap
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import pellucid
from pellucid.inspection import GlobalSurrogate, permutation_importance
from pellucid.sources import SourceError, estimator_model, from_sklearn, load_model

FACTORY = """
import torch

def make_net(width=4, n_classes=3):
    return torch.nn.Sequential(
        torch.nn.Linear(5, width), torch.nn.ReLU(), torch.nn.Linear(width, n_classes)
    )

def not_a_module():
    return 42
"""


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """A user package ``usernets`` on sys.path, and a trained-looking net's weights."""
    (tmp_path / "usernets.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    return tmp_path, net


def test_factory_with_safetensors_and_checkpoint_weights(factory):
    tmp, net = factory
    save_file(net.state_dict(), str(tmp / "w.safetensors"))
    torch.save({"epoch": 3, "model": net.state_dict()}, tmp / "ckpt.pt")
    x = torch.randn(7, 5)
    for weights, key in ((tmp / "w.safetensors", None), (tmp / "ckpt.pt", "model")):
        loaded = load_model(
            "usernets:make_net", kwargs={"width": 6}, weights=weights, weights_key=key
        )
        assert not loaded.training
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    with pytest.raises(SourceError, match="`weights_key`.*candidates: 'model'"):
        load_model("usernets:make_net", kwargs={"width": 6}, weights=tmp / "ckpt.pt")
    with pytest.raises(SourceError, match="does not fit the model.*size mismatch"):
        load_model("usernets:make_net", weights=tmp / "w.safetensors")  # width 4 != 6
    with pytest.raises(SourceError, match="has no attribute 'nope'"):
        load_model("usernets:nope")
    with pytest.raises(SourceError, match="must return a torch.nn.Module; it returned int"):
        load_model("usernets:not_a_module")
    with pytest.raises(SourceError, match="module 'no_such_pkg.nets' could not be imported"):
        load_model("no_such_pkg.nets:make")


def test_pickle_where_weights_were_expected_is_refused_unread(factory, monkeypatch):
    tmp, _ = factory
    path = tmp / "evil.pt"
    path.write_bytes(pickle.dumps({"weight": [1.0]}))
    before = path.read_bytes()

    def forbidden(*args, **kwargs):
        raise AssertionError("the file must not be unpickled")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    with pytest.raises(SourceError, match=r"evil.pt.*expected weights.*plain Python pickle"):
        load_model("usernets:make_net", weights=path)
    assert path.read_bytes() == before
    with pytest.raises(SourceError, match="does not exist"):
        load_model("usernets:make_net", weights=tmp / "missing.safetensors")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_export_and_torchscript_files(tmp_path):
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x = torch.randn(9, 4)
    torch.jit.save(torch.jit.script(net), str(tmp_path / "net.ts"))
    static = torch.export.export(net, (torch.randn(4, 4),))  # batch fixed at 4
    torch.export.save(static, str(tmp_path / "static.pt2"))
    dynamic = torch.export.export(
        net, (torch.randn(4, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(dynamic, str(tmp_path / "dynamic.pt2"))
    for name in ("net.ts", "static.pt2", "dynamic.pt2"):
        loaded = load_model(tmp_path / name)
        torch.testing.assert_close(loaded(x), net(x))  # 9 rows: static runs 4 + 4 + 1 (padded)
        e = pellucid.integrated_gradients(loaded, x, target=1, n_steps=64)
        gap = e.attributions.sum(1) - (net(x)[:, 1] - net(torch.zeros(1, 4))[0, 1])
        assert gap.abs().max() < 1e-3  # float32 model, 64 Gauss-Legendre steps on a tanh net
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(SourceError, match="found a torch.save checkpoint.*pass a factory"):
        load_model(tmp_path / "weights.pt")


def _iris_mlp(**kwargs):
    from sklearn.datasets import load_iris
    from sklearn.neural_network import MLPClassifier

    x, y = load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a short fit is enough here
        return x, y, MLPClassifier(max_iter=80, random_state=0, **kwargs).fit(x, y)


@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
def test_from_sklearn_equals_the_estimator(activation):
    from sklearn.neural_network import MLPRegressor

    x, y, mlp = _iris_mlp(hidden_layer_sizes=(7, 5), activation=activation)
    _, _, binary = _iris_mlp(hidden_layer_sizes=(4,), activation=activation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short fits
        binary.fit(x, (y == 1).astype(int))  # refit as a binary classifier: logistic output
        reg = MLPRegressor(hidden_layer_sizes=(6,), activation=activation, max_iter=60)
        reg.fit(x, y)
    xt = torch.as_tensor(x)
    for est, ref in ((mlp, mlp.predict_proba), (binary, binary.predict_proba)):
        out = from_sklearn(est)(xt).detach().numpy()
        np.testing.assert_allclose(out, ref(x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        from_sklearn(reg)(xt).detach().numpy()[:, 0], reg.predict(x), atol=1e-6
    )
    with pytest.raises(TypeError, match="MLPClassifier or MLPRegressor; got LogisticRegression"):
        from sklearn.linear_model import LogisticRegression

        from_sklearn(LogisticRegression())


def test_estimator_explained_directly_and_through_from_sklearn():
    import pandas as pd

    x, y, mlp = _iris_mlp(hidden_layer_sizes=(8,))
    rows = x[:6]
    direct = pellucid.kernel_shap(mlp, rows, target=2)
    converted = pellucid.kernel_shap(from_sklearn(mlp), torch.as_tensor(rows), target=2)
    # 4 features: every coalition is enumerated (exact Shapley), same float64 scores.
    torch.testing.assert_close(direct.attributions, converted.attributions, rtol=0, atol=1e-9)
    frame = pd.DataFrame(x, columns=["sl", "sw", "pl", "pw"])
    lime = pellucid.lime(mlp, frame.iloc[:6], target=2, n_samples=300)
    assert lime.extras["feature_names"] == ["sl", "sw", "pl", "pw"]
    assert lime.attributions.shape == (6, 4)
    perm = permutation_importance(mlp, frame, y, n_repeats=3)
    assert perm.feature_names == ["sl", "sw", "pl", "pw"]
    assert perm.baseline_score == pytest.approx(mlp.score(x, y))  # accuracy, unpermuted
    surrogate = GlobalSurrogate(mlp, max_depth=3).fit(frame)
    assert surrogate.feature_names_ == ["sl", "sw", "pl", "pw"]
    assert surrogate.fidelity_ > 0.8  # a depth-3 tree imitates a small MLP on iris well
    score = pellucid.metrics.deletion_auc(mlp, torch.as_tensor(rows), direct, target=2)
    assert score.shape == (6,)
    net = from_sklearn(mlp)
    xt = torch.as_tensor(rows)
    ig = pellucid.integrated_gradients(net, xt, target=2, n_steps=200)
    gap = ig.attributions.sum(1) - (
        net(xt)[:, 2] - net(torch.zeros(1, 4, dtype=torch.float64))[0, 2]
    )
    # ReLU kinks on the path make the quadrature error first order in 1 / n_steps
    assert gap.abs().max() < 5e-3
    logits = from_sklearn(mlp, output="logits")  # DeepLIFT has no softmax rule
    dl = pellucid.deeplift(logits, xt, target=2)
    torch.testing.assert_close(
        dl.attributions.sum(1),
        logits(xt)[:, 2] - logits(torch.zeros(1, 4, dtype=torch.float64))[0, 2],
    )


def test_estimator_errors():
    from sklearn.svm import SVC

    x, y, mlp = _iris_mlp(hidden_layer_sizes=(4,))
    with pytest.raises(TypeError, match="`saliency` needs gradients.*from_sklearn"):
        pellucid.saliency(mlp, x[:2], target=0)
    with pytest.raises(ValueError, match=r"\(MLPClassifier\) is not fitted"):
        pellucid.kernel_shap(type(mlp)(), x[:2], target=0)
    svc = SVC().fit(x, y)  # no predict_proba: decision_function is explained
    assert estimator_model(svc).response == "decision_function"
    with pytest.raises(TypeError, match=r"\(SVC\) has no predict_proba"):
        estimator_model(svc, response="predict_proba")
    with pytest.raises(TypeError, match="must be a numeric array"):
        pellucid.kernel_shap(mlp, np.array([["a", "b", "c", "d"]]), target=0)
