"""``score_gradient``: the autograd engine's entry without ``torch.autograd.grad``'s Python
layer gives what ``torch.autograd.grad`` gives, and falls back to it where that layer does
work (tensor subclasses, functorch transforms)."""

from __future__ import annotations

import pytest
import torch

from pellucid._evaluate import _gradients
from pellucid._evaluate._gradients import score_gradient


def _graph() -> tuple[torch.Tensor, torch.Tensor]:
    leaf = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    return (leaf.tanh() * leaf).sum(), leaf


def test_equals_torch_autograd_grad_and_frees_the_graph() -> None:
    score, leaf = _graph()
    (expected,) = torch.autograd.grad(score, leaf, retain_graph=True)
    got = score_gradient(score, leaf)
    assert torch.equal(got, expected) and leaf.grad is None
    with pytest.raises(RuntimeError, match="second time"):
        score_gradient(score, leaf)  # freed, as torch.autograd.grad frees it


def test_an_unreached_leaf_is_an_error() -> None:
    score, _ = _graph()
    other = torch.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        score_gradient(score, other)


def test_takes_torch_autograd_grad_where_its_python_layer_works(monkeypatch) -> None:
    calls = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or real(*a, **k))

    class Sub(torch.Tensor):
        pass

    score, leaf = _graph()
    score_gradient(score, leaf)
    assert calls == []  # the plain tensors take the engine's entry
    leaf2 = torch.randn(3).as_subclass(Sub).requires_grad_(True)
    got = score_gradient((leaf2 * 2).sum(), leaf2)
    assert calls and torch.allclose(got, torch.full((3,), 2.0))  # (dispatch may re-enter)
    calls.clear()
    monkeypatch.setattr(_gradients, "_RUN_BACKWARD", None)  # a torch without that entry
    score, leaf = _graph()
    score_gradient(score, leaf)
    assert calls == [1]


def test_under_functorch_transforms_the_usual_entry_runs(monkeypatch) -> None:
    calls = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(_gradients, "_TRANSFORMS_ACTIVE", lambda: True)
    score, leaf = _graph()
    (expected,) = real(score, leaf, retain_graph=True)
    assert torch.equal(score_gradient(score, leaf), expected) and calls == [1]
