from __future__ import annotations

import pytest
import torch

from pellucid.data import load_dataset
from pellucid.models import build_model
from pellucid.training import Callback, evaluate, fit


@pytest.fixture(scope="module")
def cancer():
    return load_dataset("breast_cancer")


def test_deterministic_under_seed(cancer):
    runs = []
    for _ in range(2):
        model = build_model("MLP", in_features=30, n_classes=2, seed=0, dropout=0.1)
        history = fit(model, cancer.train, epochs=3, seed=5, progress=False)
        runs.append((history.step_losses, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert torch.equal(a, b)


def test_learns_breast_cancer(cancer):
    model = build_model("MLP", in_features=30, n_classes=2, seed=0)
    history = fit(model, cancer.train, epochs=30, seed=0, validation=cancer.test, progress=False)
    assert history.epochs[-1]["val_accuracy"] >= 0.93
    assert not model.training
    assert evaluate(model, cancer.test)["accuracy"] == pytest.approx(
        history.epochs[-1]["val_accuracy"]
    )


def test_hooks_order_skip_and_extra_loss():
    calls = []

    class Spy(Callback):
        def on_train_begin(self, state):
            calls.append("train_begin")

        def extra_loss(self, state):
            calls.append("extra")
            return 0.0 * state.outputs.sum()

        def on_before_step(self, state):
            calls.append("before")
            return state.step % 2 == 0 or False  # skip every odd step

        def on_after_step(self, state):
            calls.append("after")

        def on_train_end(self, state):
            calls.append("train_end")

    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    history = fit(
        build_model("MLP", in_features=3, n_classes=2),
        (x, y),
        epochs=1,
        batch_size=10,
        callbacks=[Spy()],
        progress=False,
    )
    assert calls[0] == "train_begin" and calls[-1] == "train_end"
    assert calls[1:4] == ["extra", "before", "after"]
    assert history.skipped_steps == 2 and len(history.step_losses) == 4


def test_skipped_step_leaves_weights():
    class SkipAll(Callback):
        def on_before_step(self, state):
            return False

    model = build_model("MLP", in_features=3, n_classes=2)
    before = [p.detach().clone() for p in model.parameters()]
    fit(
        model,
        (torch.randn(8, 3), torch.randint(0, 2, (8,))),
        epochs=2,
        callbacks=[SkipAll()],
        progress=False,
    )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_regression_and_dataloader():
    ds = load_dataset("diabetes")
    model = build_model("MLP", in_features=10, n_classes=1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*ds.train), batch_size=32)
    fit(model, loader, epochs=20, loss="mse", progress=False)
    assert evaluate(model, ds.test)["r2"] > 0.3


def test_bad_input():
    model = build_model("MLP", in_features=3, n_classes=2)
    data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
    with pytest.raises(ValueError, match="`epochs` must be an integer >= 1; got 0"):
        fit(model, data, epochs=0)
    with pytest.raises(TypeError, match="`epochs` must be an integer"):
        fit(model, data, epochs=True)
    with pytest.raises(ValueError, match="same number of rows"):
        fit(model, (torch.randn(8, 3), torch.zeros(7, dtype=torch.long)))
    with pytest.raises(ValueError, match="Did you mean .*'adam'"):
        fit(model, data, optimizer="adm")
    with pytest.raises(TypeError, match="Callback"):
        fit(model, data, callbacks=[object()])


def test_on_setup_runs_before_the_optimizer_is_built():
    # a hook that swaps a layer in on_setup: the optimizer must train the new parameters
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    calls = []

    class Swap(Callback):
        def on_setup(self, model):
            calls.append("setup")
            model[2] = torch.nn.Linear(4, 2)
            self.fresh = model[2].weight.detach().clone()

        def on_train_begin(self, state):
            calls.append("begin")
            state.info["params"] = {
                id(p) for g in state.optimizer.param_groups for p in g["params"]
            }
            assert id(state.model[2].weight) in state.info["params"]

    swap = Swap()
    data = (torch.randn(16, 3), torch.randint(0, 2, (16,)))
    fit(model, data, epochs=1, batch_size=8, callbacks=[swap], progress=False)
    assert calls == ["setup", "begin"]
    assert not torch.equal(model[2].weight, swap.fresh)  # trained after the swap
