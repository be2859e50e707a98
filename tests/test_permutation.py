"""Permutation importance: closed forms, groups, determinism, scikit-learn, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pellucid.inspection import PermutationImportance, permutation_importance

D = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _Ignores(nn.Module):
    """Classifier on features 0 and 1 only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0] - 2 * x[:, 1]
        return torch.stack([-s, s], dim=1)


def test_unused_feature_gets_exactly_zero_and_ranking():
    torch.manual_seed(0)
    x = torch.randn(300, 4, dtype=D)
    y = (x[:, 0] - 2 * x[:, 1] > 0).long()
    r = permutation_importance(
        _Ignores(), x, y, n_repeats=4, generator=_gen(), feature_names=list("abcd")
    )
    assert isinstance(r, PermutationImportance)
    assert r.baseline_score == 1.0
    assert torch.equal(r.importances[2:], torch.zeros(2, 4, dtype=D))
    assert r.ranking()[:2] == ["b", "a"]
    assert r.importances.shape == (4, 4)
    torch.testing.assert_close(r.importances_std, r.importances.std(1, unbiased=False))


def test_linear_regression_closed_form_neg_mse():
    torch.manual_seed(1)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    net = nn.Linear(3, 1, bias=False).to(D)
    with torch.no_grad():
        net.weight.copy_(w.unsqueeze(0))
    x = torch.randn(20000, 3, dtype=D)
    y = net(x).detach().squeeze(1)
    r = permutation_importance(net, x, y, scoring="neg_mse", n_repeats=3, generator=_gen(1))
    # shuffling x_j adds w_j (x_j' - x_j): expected squared error 2 w_j^2 var(x_j)
    expected = 2 * w**2 * x.var(0)
    torch.testing.assert_close(r.importances_mean, expected, rtol=0.05, atol=0)
    r2 = permutation_importance(net, x, y, scoring="r2", n_repeats=1, generator=_gen(1))
    assert r2.baseline_score == pytest.approx(1.0)


def test_groups_callable_scoring_determinism_and_batching():
    torch.manual_seed(2)
    x = torch.randn(64, 4, dtype=D)
    y = (x[:, 0] - 2 * x[:, 1] > 0).long()
    groups = torch.tensor([0, 0, 1, 1])
    a = permutation_importance(
        _Ignores(), x, y, feature_mask=groups, scoring="loss", generator=_gen(3)
    )
    b = permutation_importance(
        _Ignores(), x, y, feature_mask=groups, scoring="loss", generator=_gen(3), batch_size=7
    )
    assert a.feature_names == ["feature_0", "feature_1"]
    torch.testing.assert_close(a.importances, b.importances)
    assert a.importances_mean[0] > 0 and a.importances_mean[1] == 0

    def margin(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return out.gather(1, labels.view(-1, 1)).squeeze(1)

    c = permutation_importance(_Ignores(), x, y, scoring=margin, generator=_gen(3))
    assert c.scoring == "margin" and c.importances_mean[0] > 0


@pytest.mark.peer
@pytest.mark.slow
def test_agrees_with_scikit_learn():
    import numpy as np
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.inspection import permutation_importance as sk_permutation_importance

    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1)).to(D)
    with torch.no_grad():
        net[0].weight.mul_(torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1], dtype=D))
    x = torch.randn(400, 5, dtype=D)
    y = net(x).detach().squeeze(1) + 0.05 * torch.randn(400, dtype=D)

    class Wrapped(RegressorMixin, BaseEstimator):
        def fit(self, a, b):
            return self

        def predict(self, a):
            with torch.no_grad():
                return net(torch.as_tensor(a, dtype=D)).squeeze(1).numpy()

    theirs = sk_permutation_importance(
        Wrapped(), x.numpy(), y.numpy(), scoring="r2", n_repeats=20, random_state=0
    )
    ours = permutation_importance(net, x, y, scoring="r2", n_repeats=20, generator=_gen(4))
    assert (
        np.argsort(theirs.importances_mean).tolist()
        == torch.argsort(ours.importances_mean).tolist()
    )
    np.testing.assert_allclose(
        ours.importances_mean.numpy(), theirs.importances_mean, rtol=0.15, atol=0.01
    )


def test_bad_input_messages():
    x, y = torch.randn(10, 4, dtype=D), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match=r"one entry per row of `inputs` \(10\); got 9"):
        permutation_importance(_Ignores(), x, y[:9])
    with pytest.raises(ValueError, match="needs integer class labels"):
        permutation_importance(_Ignores(), x, y.double())
    with pytest.raises(ValueError, match="Did you mean 'accuracy'"):
        permutation_importance(_Ignores(), x, y, scoring="acuracy")
    with pytest.raises(ValueError, match=r"one name per feature or group \(4\); got 2"):
        permutation_importance(_Ignores(), x, y, feature_names=["a", "b"])
    with pytest.raises(ValueError, match="`n_repeats` must be an integer >= 1"):
        permutation_importance(_Ignores(), x, y, n_repeats=0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        permutation_importance(_Ignores(), x[:1], y[:1])
    with pytest.raises(ValueError, match="shape of one example"):
        permutation_importance(_Ignores(), x, y, feature_mask=torch.zeros(3, dtype=torch.long))


def test_importance_bars_plot():
    from pellucid.plot.importance import importance_bars

    x = torch.randn(50, 4, dtype=D)
    y = (x[:, 0] > 0).long()
    r = permutation_importance(_Ignores(), x, y, generator=_gen(5), feature_names=list("abcd"))
    ax = importance_bars(r, top_k=3)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 3 and labels[-1] == r.ranking()[0]
    assert "accuracy" in ax.get_xlabel()
    with pytest.raises(ValueError, match="one entry per feature"):
        importance_bars([1.0, 2.0], names=["a"])


def test_batch_aligned_forward_args_follow_their_row():
    class Scaled(nn.Module):
        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return (scale * x[:, 0]).unsqueeze(1)

    torch.manual_seed(6)
    x, scale = torch.randn(40, 3, dtype=D), torch.rand(40, dtype=D) + 0.5
    y = scale * x[:, 0]
    r = permutation_importance(
        Scaled(), x, y, scoring="neg_mse", forward_args=(scale,), batch_size=9, generator=_gen(6)
    )
    assert r.baseline_score == 0.0
    assert r.importances_mean[0] > 0 and torch.equal(r.importances[1:], torch.zeros(2, 5, dtype=D))
