"""freeze_parameters inside the model guard uses the guard's parameter list; flags come back."""

from __future__ import annotations

import threading

import torch
from torch import nn

from pellucid._state import _guarded, freeze_parameters, model_guard


def _net() -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    net[2].bias.requires_grad_(False)  # a flag the user set: kept as it was
    return net


def _flags(net: nn.Module) -> list[bool]:
    return [p.requires_grad for p in net.parameters()]


def test_inside_the_guard_every_parameter_is_frozen_and_restored_on_exit():
    net = _net()
    before = _flags(net)
    with model_guard(net):
        freeze_parameters(net)
        assert _flags(net) == [False] * 4
    assert _flags(net) == before
    assert _guarded() == {}  # the guard leaves no entry behind


def test_nested_guards_on_one_model_and_a_raising_body():
    net = _net()
    before = _flags(net)
    try:
        with model_guard(net):
            outer = _guarded()[id(net)]
            with model_guard(net):
                assert _guarded()[id(net)] is not outer
                freeze_parameters(net)
            assert _guarded()[id(net)] is outer  # the outer snapshot is current again
            raise KeyError("the body fails")
    except KeyError:
        pass
    assert _flags(net) == before and _guarded() == {}


def test_outside_a_guard_and_on_another_thread_it_walks_the_modules():
    net, other = _net(), _net()
    seen: list[bool] = []
    with model_guard(net):

        def work() -> None:
            seen.append(id(net) in _guarded())  # another thread's guards are its own
            freeze_parameters(other)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    assert seen == [False]
    assert _flags(other) == [False] * 4  # no guard: frozen, not restored
    freeze_parameters(lambda x: x)  # not a module: nothing to do
    assert torch.is_grad_enabled()
