"""Gradient methods whose rows do not fit one backward run the model once, chunk by chunk.

The first forward (which resolves the target) keeps each chunk's graph and the method's
gradient is taken from it right away, so no second pass over the examples runs; results
equal one pass over every row for every kind of target.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pellucid
from conftest import model_rows

D = torch.float64
METHODS = ("saliency", "input_x_gradient", "deeplift", "lrp", "guided_backprop", "deconvolution")
TARGETS = {
    "int": 1,
    "per_example": [0, 1, 2, 1, 0],
    "predicted": "predicted",
    "callable": lambda out: out[:, 0] - out[:, 2],
}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).to(D).eval()


def _x() -> torch.Tensor:
    return torch.randn(5, 4, dtype=D, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("method", METHODS)
def test_chunks_give_one_pass_result(method, target):
    fn, t = getattr(pellucid, method), TARGETS[target]
    whole = fn(_net(), _x(), target=t)
    chunked = fn(_net(), _x(), target=t, batch_size=2)
    torch.testing.assert_close(chunked.attributions, whole.attributions, rtol=1e-12, atol=1e-12)
    if target != "callable":
        assert torch.equal(torch.as_tensor(chunked.target), torch.as_tensor(whole.target))
    if "completeness_gap" in whole.extras:
        torch.testing.assert_close(
            chunked.extras["completeness_gap"], whole.extras["completeness_gap"], atol=1e-12, rtol=0
        )
    assert chunked.params["batch_size"] == 2


@pytest.mark.parametrize("method", METHODS)
def test_the_model_runs_once_per_chunk_and_no_more(method):
    net = _net()
    getattr(pellucid, method)(net, _x(), target=1)  # DeepLIFT's first sight of a model checks
    with model_rows(net) as rows:
        getattr(pellucid, method)(net, _x(), target=1, batch_size=2)
    # DeepLIFT runs its shared reference row once, appended to the first chunk
    assert rows == ([3, 2, 1] if method == "deeplift" else [2, 2, 1])


def test_a_bad_target_is_refused_on_the_first_chunk_and_the_model_is_untouched():
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError, match=r"`target` must have one entry per example \(5\)"):
        pellucid.saliency(net, _x(), target=[0, 1], batch_size=2)
    with pytest.raises(ValueError, match=r"class index in \[0, 2\]; got 7"):
        pellucid.deeplift(net, _x(), target=[0, 1, 7, 0, 0], batch_size=2)
    for p, q in zip(net.parameters(), before, strict=True):
        assert torch.equal(p, q) and p.grad is None and p.requires_grad


def test_a_model_that_fails_on_a_later_chunk_is_worded_for_the_user():
    class FailsLate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.calls = _net(), 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("boom in the second chunk")
            return self.net(x)

    model = FailsLate()
    with pytest.raises(ValueError, match="could not run.*boom in the second chunk"):
        pellucid.saliency(model, _x(), target=1, batch_size=2)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_a_chunk_with_the_wrong_number_of_output_rows_names_both_counts():
    class Pooled(nn.Module):
        def forward(self, x):
            return x.sum(0, keepdim=True)  # one row for the whole batch

    with pytest.raises(ValueError, match=r"`inputs` has 5 rows .*\(1, 4\) for 2 of them"):
        pellucid.saliency(Pooled(), _x(), target=0, batch_size=2)


def _cnn() -> nn.Module:
    from pellucid.models import SmallCNN

    torch.manual_seed(0)
    return SmallCNN().to(D).eval()


def _images() -> torch.Tensor:
    return torch.randn(5, 1, 8, 8, dtype=D, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("target", list(TARGETS))
def test_grad_cam_at_a_layer_in_chunks_gives_the_one_pass_map(target):
    t = TARGETS[target]
    whole = pellucid.grad_cam(_cnn(), _images(), target=t, layer="features.3")
    chunked = pellucid.grad_cam(_cnn(), _images(), target=t, layer="features.3", batch_size=2)
    torch.testing.assert_close(chunked.attributions, whole.attributions, rtol=1e-12, atol=1e-12)
    assert chunked.params["layer"] == "features.3"


def test_grad_cam_runs_the_model_once_per_chunk():
    net = _cnn()
    with model_rows(net) as rows:
        pellucid.grad_cam(net, _images(), target=1, layer="features.3", batch_size=2)
    assert rows == [2, 2, 1]


def test_guided_grad_cam_runs_each_half_once_per_chunk():
    net = _cnn()
    whole = pellucid.guided_grad_cam(net, _images(), target="predicted", layer="features.3")
    with model_rows(net) as rows:
        chunked = pellucid.guided_grad_cam(
            net, _images(), target="predicted", layer="features.3", batch_size=2
        )
    assert rows == [2, 2, 1, 2, 2, 1]  # Grad-CAM's pass, then guided backprop's
    torch.testing.assert_close(chunked.attributions, whole.attributions, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "deeplift"])
def test_under_max_memory_the_model_runs_once_per_chunk_after_one_probe_row(method):
    net = _cnn()
    x = torch.randn(40, 1, 8, 8, dtype=D, generator=torch.Generator().manual_seed(3))
    fn = getattr(pellucid, method)
    fn(net, x, target=1)  # DeepLIFT's first sight of the model checks its two passes
    whole = fn(net, x, target=1)
    with model_rows(net) as rows:
        limited = fn(net, x, target=1, max_memory="1MB")
    size = limited.params["batch_size"]
    assert 1 <= size < x.shape[0] and limited.params["max_memory"] == "1MB"
    extra = 1 if method == "deeplift" else 0  # its shared reference row
    probe, chunks = rows[0], rows[1:]
    assert probe == 1 + extra  # the budget's one-row probe, before the first forward
    # DeepLIFT's reference row rides with the first chunk only
    assert sum(chunks) == x.shape[0] + extra and chunks[0] == size + extra
    assert max(chunks[1:]) == size
    torch.testing.assert_close(limited.attributions, whole.attributions, rtol=1e-12, atol=1e-12)
