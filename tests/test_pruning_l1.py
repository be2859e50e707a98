"""L1Penalty: the seed flow "L1 drives weights to zero, then prune"."""

from __future__ import annotations

import pytest
import torch

from pellucid.models import MLP
from pellucid.pruning import L1Penalty, prune_magnitude_
from pellucid.training import TrainState, evaluate, fit


def _train(penalty):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()  # only two of the ten inputs matter
    torch.manual_seed(0)
    net = MLP(10, 2, hidden=(16,))
    callbacks = [] if penalty is None else [penalty]
    fit(net, (x, y), epochs=30, batch_size=64, lr=1e-2, seed=0, callbacks=callbacks,
        progress=False)  # fmt: skip
    return net, (x, y)


def test_l1_penalty_value_and_gradient_are_the_l1_norm():
    net = torch.nn.Linear(3, 2)
    loss = L1Penalty(0.25).extra_loss(TrainState(net, None))
    torch.testing.assert_close(loss, 0.25 * net.weight.abs().sum())
    loss.backward()
    torch.testing.assert_close(net.weight.grad, 0.25 * net.weight.detach().sign())
    assert L1Penalty(0.0).extra_loss(TrainState(net, None)) is None
    with pytest.raises(ValueError, match="`strength`"):
        L1Penalty(-1.0)


def test_l1_drives_weights_to_zero_so_pruning_costs_nothing():
    plain, data = _train(None)
    sparse, _ = _train(L1Penalty(3e-3))
    first = lambda net: net.net[0].weight.detach().abs()  # noqa: E731
    # the eight useless inputs' weights collapse under L1 and stay sizeable without it
    assert first(sparse)[:, 2:].mean() < 0.25 * first(plain)[:, 2:].mean()
    prune_magnitude_(sparse, amount=0.7)
    assert evaluate(sparse, data)["accuracy"] > 0.9
