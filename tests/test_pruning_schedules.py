"""Schedules, regularizers, distillation and the prune-and-fine-tune helper."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pellucid.models import MLP, SmallCNN
from pellucid.pruning import (
    BNScaleL1,
    ChannelPruning,
    Distillation,
    GroupLasso,
    MagnitudePruning,
    PolynomialPruning,
    distillation_loss,
    polynomial_sparsity,
    prune_and_finetune,
    sparsity,
)
from pellucid.training import Callback, TrainState, fit


def _data(n: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def test_polynomial_sparsity_closed_form():
    # s_t = s_f + (s_i - s_f) (1 - t / n)^3
    for t in (0, 10, 37, 100, 150):
        expected = 0.9 + (0.1 - 0.9) * (1 - min(t, 100) / 100) ** 3
        assert polynomial_sparsity(t, final=0.9, initial=0.1, end_step=100) == pytest.approx(
            expected
        )
    assert polynomial_sparsity(5, final=0.5, begin_step=10, end_step=20) == 0.0


class _Watch(Callback):
    def __init__(self) -> None:
        self.sparsity: list[float] = []
        self.masks: list[torch.Tensor] = []

    def on_after_step(self, state: TrainState) -> None:
        self.sparsity.append(sparsity(state.model).overall)
        mask = getattr(state.model.net[0], "weight_mask", None)
        if mask is not None:
            self.masks.append(mask.clone())


def test_gradual_pruning_ramps_monotonically_and_masks_only_grow():
    net = MLP(6, 2, hidden=(32,))
    watch = _Watch()
    cb = PolynomialPruning(0.8, frequency=2, end_step=20)
    fit(net, _data(), epochs=8, batch_size=16, callbacks=[cb, watch], progress=False)
    assert sparsity(net).overall == pytest.approx(0.8, abs=2e-3)
    assert all(b >= a - 1e-9 for a, b in zip(watch.sparsity, watch.sparsity[1:], strict=False))
    for old, new in zip(watch.masks, watch.masks[1:], strict=False):
        assert torch.all(new <= old)
    assert torch.all(net.net[0].weight_orig[net.net[0].weight_mask == 0] == 0)


def test_regularizers_values_and_gradients():
    model = SmallCNN()
    state = TrainState(model=model, optimizer=None)
    with torch.no_grad():
        model.features[1].weight.fill_(-2.0)
    bn = BNScaleL1(0.5).extra_loss(state)
    assert bn.item() == pytest.approx(0.5 * (2.0 * 16 + 32))
    bn.backward()
    assert torch.all(model.features[1].weight.grad == -0.5)
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]]))
    lasso = GroupLasso(2.0, layers=[""], step="subgradient").extra_loss(
        TrainState(model=lin, optimizer=None)
    )
    assert lasso.item() == pytest.approx(2.0 * (5.0 + 1.0))
    assert BNScaleL1(0.0).extra_loss(state) is None


def test_bn_regularizer_shrinks_scales_in_training():
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    plain, slim = SmallCNN(), SmallCNN()
    fit(plain, (x, y), epochs=3, seed=0, progress=False)
    fit(slim, (x, y), epochs=3, seed=0, callbacks=[BNScaleL1(0.05)], progress=False)
    assert slim.features[1].weight.abs().sum() < plain.features[1].weight.abs().sum()


def test_distillation_loss_and_callback():
    z = torch.randn(4, 3, dtype=torch.float64)
    assert distillation_loss(z, z).item() == pytest.approx(0.0, abs=1e-12)
    other = torch.randn(4, 3, dtype=torch.float64)
    t = 2.0
    p = torch.softmax(other / t, -1)
    manual = (p * (p.log() - torch.log_softmax(z / t, -1))).sum(-1).mean() * t * t
    torch.testing.assert_close(distillation_loss(z, other, temperature=t), manual)
    teacher = MLP(6, 2).train()
    student = MLP(6, 2, hidden=(8,))
    fit(student, _data(), epochs=1, callbacks=[Distillation(teacher, weight=0.5)], progress=False)
    assert teacher.training
    with pytest.raises(ValueError, match="`temperature` must be > 0.0"):
        Distillation(teacher, temperature=0)


@pytest.mark.parametrize(
    ("kind", "schedule"),
    [
        ("unstructured", "one_shot"),
        ("unstructured", "iterative"),
        ("unstructured", "gradual"),
        ("structured", "one_shot"),
        ("structured", "iterative"),
    ],
)
def test_prune_and_finetune_leaves_input_model_alone(kind, schedule):
    model = MLP(6, 2, hidden=(16, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = prune_and_finetune(
        model,
        _data(),
        kind=kind,
        amount=0.5,
        epochs=1,
        schedule=schedule,
        rounds=2,
        distill=schedule == "iterative",
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    if kind == "unstructured":
        assert result.sparsity.overall == pytest.approx(0.5, abs=0.01)
    else:
        widths = (result.model.net[0].out_features, result.model.net[2].out_features)
        assert widths == (8, 4)
    assert result.model(torch.randn(3, 6)).shape == (3, 2)


def test_prune_and_finetune_bad_input():
    with pytest.raises(ValueError, match="`kind` must be one of"):
        prune_and_finetune(MLP(6, 2), _data(), kind="channels", amount=0.5)
    with pytest.raises(ValueError, match="needs kind='unstructured'"):
        prune_and_finetune(MLP(6, 2), _data(), kind="structured", amount=0.5, schedule="gradual")
    with pytest.raises(TypeError, match="`data` must be a pair"):
        prune_and_finetune(MLP(6, 2), [1, 2, 3], kind="structured", amount=0.5)


def test_pruning_rounds_as_fit_hooks():
    # unstructured: exactly `amount` of the weights masked, and still zero after training
    x, y = _data()
    net = MLP(6, 2)
    fit(net, (x, y), epochs=2, batch_size=32, callbacks=[MagnitudePruning(0.5)], progress=False)
    assert sparsity(net).overall == pytest.approx(0.5, abs=0.01)
    for module in net.modules():
        if hasattr(module, "weight_mask"):
            assert torch.all(module.weight_orig[module.weight_mask == 0] == 0)

    # structured: the plan is applied before the optimizer exists, so the shrunk layer trains
    class Start(Callback):
        def on_train_begin(self, state):
            self.weight = state.model.net[0].weight.detach().clone()

    net, hook, start = MLP(6, 2), ChannelPruning(0.5, x[:2]), Start()
    fit(net, (x, y), epochs=1, batch_size=32, callbacks=[hook, start], progress=False)
    assert hook.plan is not None and net.net[0].out_features == 32
    assert start.weight.shape == net.net[0].weight.shape
    assert not torch.equal(start.weight, net.net[0].weight)
    with pytest.raises(ValueError, match="`amount` must be"):
        MagnitudePruning(1.0)
