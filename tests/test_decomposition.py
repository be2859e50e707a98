"""DeepLIFT, LRP, guided backprop, deconvolution: closed forms, conservation, rules on the
executed operations (reused ReLU, F.relu, in-place adds), refusals, captum cross-checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pellucid import (
    UnsupportedOperationError,
    deconvolution,
    deeplift,
    guided_backprop,
    lrp,
)
from pellucid.models import TinyResNet

D = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")


def _sum(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


class _Cnn(nn.Module):
    """Conv-BN-ReLU-pool-conv-ReLU-avgpool-linear, flattening functionally (captum's LRP
    refuses an ``nn.Flatten`` module)."""

    def __init__(self, pool: nn.Module, bias: bool = True) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=bias),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            pool,
            nn.Conv2d(4, 6, 3, bias=bias),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.h = nn.Sequential(nn.Linear(6, 8, bias=bias), nn.ReLU(), nn.Linear(8, 3, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(self.f(x).flatten(1))


def _cnn(pool: nn.Module | None = None, bias: bool = True, seed: int = 0) -> _Cnn:
    torch.manual_seed(seed)
    net = _Cnn(pool or nn.MaxPool2d(2), bias=bias).to(D).eval()
    with torch.no_grad():
        net.f[1].running_mean.normal_()
        net.f[1].running_var.uniform_(0.5, 2.0)
    return net


def _images(n: int = 4, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(n, 1, 8, 8, dtype=D)


# ---------------------------------------------------------------- closed forms
def test_linear_closed_forms():
    torch.manual_seed(0)
    net = nn.Linear(5, 1).to(D)
    x, b = torch.randn(3, 5, dtype=D), torch.randn(3, 5, dtype=D)
    w = net.weight.detach()
    torch.testing.assert_close(deeplift(net, x, baseline=b).attributions, w * (x - b))
    torch.testing.assert_close(lrp(net, x, rule="zero").attributions, w * x)
    torch.testing.assert_close(guided_backprop(net, x).attributions, w.expand_as(x))


# ---------------------------------------------------------------- conservation
def test_deeplift_completeness_with_max_pool_and_batch_norm():
    net, x = _cnn(), _images()
    b = 0.1 * _images(seed=2)
    e = deeplift(net, x, target=2, baseline=b)
    diff = net(x)[:, 2] - net(b)[:, 2]
    torch.testing.assert_close(_sum(e.attributions), diff.detach(), rtol=0, atol=1e-10)
    assert e.extras["completeness_gap"].abs().max() < 1e-10
    assert e.extras["rules"]["f.2: relu"] == "rescale"
    assert e.extras["rules"]["f.3: max_pool2d"] == "rescale (max pool)"


def test_deeplift_completeness_on_a_residual_network():
    torch.manual_seed(0)
    net = TinyResNet(n_classes=3, width=4).to(D).eval()
    x = torch.randn(2, 1, 8, 8, dtype=D)
    e = deeplift(net, x, target=1)
    assert e.extras["completeness_gap"].abs().max() < 1e-10


@pytest.mark.parametrize("rule", ["epsilon", "zero", "gamma", "zplus"])
def test_lrp_conserves_relevance_without_biases(rule):
    net = _cnn(nn.AvgPool2d(2), bias=False)
    net.f[1] = nn.Identity()  # batch norm has a shift, which absorbs relevance
    with torch.no_grad():  # z-plus loses the relevance of an output with no positive input
        net.h[2].weight.abs_()
    x = _images().abs()
    e = lrp(net, x, target=0, rule=rule, epsilon=1e-12)
    out = net(x)[:, 0].detach()
    torch.testing.assert_close(_sum(e.attributions), out, rtol=1e-8, atol=1e-10)
    assert e.extras["conservation_error"].abs().max() < 1e-8


def test_lrp_alpha_beta_closed_form_on_one_layer():
    torch.manual_seed(0)
    net = nn.Linear(6, 1, bias=False).to(D)
    x = torch.randn(3, 6, dtype=D)
    w = net.weight.detach()
    z = net(x).detach()
    contrib = x * w
    pos, neg = contrib.clamp(min=0), contrib.clamp(max=0)
    expected = 2.0 * pos * z / pos.sum(1, keepdim=True) - 1.0 * neg * z / neg.sum(1, keepdim=True)
    e = lrp(net, x, rule="alpha_beta", alpha=2.0, beta=1.0, epsilon=1e-12)
    torch.testing.assert_close(e.attributions, expected)
    torch.testing.assert_close(_sum(e.attributions), z[:, 0])  # alpha - beta = 1 conserves


def test_lrp_composite_by_layer_type_and_batch_norm():
    net, x = _cnn(), _images()
    e = lrp(
        net, x, target=1, composite={"conv": "gamma", nn.Linear: "epsilon", "batch_norm": "zero"}
    )
    rules = e.extras["rules"]
    assert rules["f.0: conv2d"] == "gamma(0.25)"
    assert rules["h.0: linear"] == "epsilon(1e-06)"
    assert rules["f.1: batch_norm"] == "zero"
    assert rules["f.2: relu"] == "gradient"
    assert e.params["composite"] == {"conv": "gamma", "Linear": "epsilon", "batch_norm": "zero"}
    assert torch.isfinite(e.attributions).all()
    with pytest.raises(ValueError, match="'gamma' needs a weighted layer"):
        lrp(net, x, target=1, composite={"batch_norm": "gamma"})
    with pytest.raises(ValueError, match="composite"):
        lrp(net, x, target=1, composite={"convolution": "gamma"})


# ---------------------------------------------------------------- rules on executed ops
class _Reused(nn.Module):
    """One ReLU module used twice, a functional F.relu, torch.relu_ and an in-place add."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(5, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.a(x))
        out = self.b(h)
        out += h  # in-place residual add
        out = F.relu(out)
        out = self.relu(self.b(out) - 0.1)
        return self.c(torch.relu_(out + h))


class _Unrolled(nn.Module):
    """The same function with one ReLU module per call and out-of-place adds."""

    def __init__(self, src: _Reused) -> None:
        super().__init__()
        self.a, self.b, self.c = src.a, src.b, src.c
        self.r1, self.r2, self.r3, self.r4 = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.r1(self.a(x))
        out = self.r2(self.b(h) + h)
        out = self.r3(self.b(out) - 0.1)
        return self.c(self.r4(out + h))


@pytest.mark.parametrize("method", [deeplift, lrp, guided_backprop, deconvolution])
def test_reused_relu_functional_relu_and_inplace_add_equal_the_unrolled_model(method):
    torch.manual_seed(0)
    reused = _Reused().to(D)
    unrolled = _Unrolled(reused)
    x = torch.randn(6, 5, dtype=D)
    ours = method(reused, x, target=2)
    reference = method(unrolled, x, target=2)
    torch.testing.assert_close(ours.attributions, reference.attributions, rtol=0, atol=1e-12)
    assert ours.extras["rule_calls"]["relu: relu"] == 2


@pytest.mark.peer
def test_captum_deeplift_fails_on_the_reused_model_where_pellucid_is_exact():
    from captum.attr import DeepLift

    torch.manual_seed(0)
    reused = _Reused().to(D)
    x = torch.randn(6, 5, dtype=D)
    reference = DeepLift(_Unrolled(reused)).attribute(x, target=2)
    torch.testing.assert_close(deeplift(reused, x, target=2).attributions, reference)
    try:
        theirs = DeepLift(reused).attribute(x, target=2)
    except RuntimeError:
        return  # captum refuses a reused ReLU module
    assert not torch.allclose(theirs, reference)


# ---------------------------------------------------------------- refusals
class _Product(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.lin(x)


class _Norm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.lin(x))


def test_unsupported_operations_are_refused_by_name_and_leave_the_model_untouched():
    x = torch.randn(2, 4, dtype=D)
    prod = _Product().to(D)
    flags = [p.requires_grad for p in prod.parameters()]
    # (DeepLIFT and LRP have rules for products and layer norm: see test_rules_transformer.py)
    with pytest.raises(UnsupportedOperationError, match="`mul`.*product of two"):
        guided_backprop(prod, x, target=0)
    assert [p.requires_grad for p in prod.parameters()] == flags
    with pytest.raises(UnsupportedOperationError, match="`layer_norm` \\(in norm\\)"):
        guided_backprop(_Norm().to(D), x, target=0)
    sig = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2)).to(D)
    with pytest.raises(UnsupportedOperationError, match="lrp has no rule for .*`sigmoid`"):
        lrp(sig, x, target=0)
    with pytest.raises(UnsupportedOperationError, match="guided_backprop.*`sigmoid`"):
        guided_backprop(sig, x, target=0)
    assert deeplift(sig, x, target=0).extras["rules"]["1: sigmoid"] == "rescale"


def test_batch_norm_in_training_mode_is_refused():
    net, x = _cnn(), _images()
    net.train()
    with (
        pytest.warns(UserWarning, match="training mode"),
        pytest.raises(UnsupportedOperationError, match="batch_norm.*training mode"),
    ):
        deeplift(net, x, target=0)
    assert net.training
    e = deeplift(net, x, target=0, eval_mode=True)
    assert e.extras["completeness_gap"].abs().max() < 1e-10


# ---------------------------------------------------------------- captum (float64)
@pytest.mark.peer
def test_deeplift_matches_captum():
    from captum.attr import DeepLift

    net, x = _cnn(nn.AvgPool2d(2)), _images()
    b = 0.1 * _images(seed=3)
    ours = deeplift(net, x, target=1, baseline=b).attributions
    theirs = DeepLift(net).attribute(x, b, target=1)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.peer
def test_deeplift_max_pool_is_complete_where_captum_is_not():
    from captum.attr import DeepLift

    net, x = _cnn(nn.MaxPool2d(2)), _images()
    b = 0.1 * _images(seed=3)
    diff = (net(x) - net(b))[:, 1].detach()
    theirs = DeepLift(net).attribute(x, b, target=1)
    ours = deeplift(net, x, target=1, baseline=b).attributions
    assert (_sum(ours) - diff).abs().max() < 1e-10
    assert (_sum(theirs) - diff).abs().max() > 1e-4  # captum's max-pool rule loses mass


@pytest.mark.peer
def test_lrp_epsilon_matches_captum():
    from captum.attr import LRP

    for pool in (nn.MaxPool2d(2), nn.AvgPool2d(2)):
        net, x = _cnn(pool), _images()
        ours = lrp(net, x, target=2, epsilon=1e-9).attributions
        theirs = LRP(net).attribute(x, target=2)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.peer
def test_guided_backprop_and_deconvolution_match_captum():
    from captum.attr import Deconvolution, GuidedBackprop

    net, x = _cnn(), _images()
    torch.testing.assert_close(
        guided_backprop(net, x, target=0).attributions,
        GuidedBackprop(net).attribute(x, target=0),
        rtol=1e-6,
        atol=1e-6,
    )
    torch.testing.assert_close(
        deconvolution(net, x, target=0).attributions,
        Deconvolution(net).attribute(x, target=0),
        rtol=1e-6,
        atol=1e-6,
    )


# ---------------------------------------------------------------- properties
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.integers(1, 12), n=st.integers(1, 5))
def test_deeplift_completeness_property(seed, width, n):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(4, width), nn.ReLU(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 2)
    ).to(D)
    x, b = torch.randn(n, 4, dtype=D), torch.randn(n, 4, dtype=D)
    e = deeplift(net, x, target=1, baseline=b)
    diff = (net(x) - net(b))[:, 1].detach()
    # Rescale multipliers make the decomposition exact up to float64 rounding.
    torch.testing.assert_close(_sum(e.attributions), diff, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- the reference pass
def _rows_seen(net: nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    seen: list[int] = []
    first = next(m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d))
    handle = first.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    return seen, handle


def test_deeplift_shared_baseline_rides_with_the_batch_and_equals_the_full_reference(
    monkeypatch,
):
    import pellucid.attribution.rules._paired as paired

    net, x = _cnn(), _images(5)
    seen, handle = _rows_seen(net)
    shared = deeplift(net, x, target=1, baseline=0.3)
    assert seen == [1, 5, 6]  # first sight: the checked one-row reference, then the joint
    seen.clear()  # pass of the 5 rows and the reference row; then the joint pass only
    again = deeplift(net, x, target=1, baseline=0.3)
    handle.remove()
    assert seen == [6]
    assert torch.equal(again.attributions, shared.attributions)  # the same every call
    monkeypatch.setattr(paired, "_is_shared", lambda *a: False)
    seen, handle = _rows_seen(net)
    full = deeplift(net, x, target=1, baseline=torch.full_like(x, 0.3))  # checked: one per row
    handle.remove()
    assert seen == [5, 5]
    torch.testing.assert_close(shared.attributions, full.attributions, rtol=0, atol=1e-12)
    assert shared.extras["completeness_gap"].abs().max() < 1e-10


def test_deeplift_chunks_equal_one_batch():
    net, x = _cnn(), _images(5)
    b = 0.1 * _images(5, seed=2)
    one = deeplift(net, x, target=0, baseline=b)
    chunked = deeplift(net, x, target=0, baseline=b, batch_size=2)
    torch.testing.assert_close(chunked.attributions, one.attributions, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        chunked.extras["completeness_gap"], one.extras["completeness_gap"], rtol=0, atol=1e-12
    )


class _Pairs(nn.Module):
    """Folds the batch into the rows of a matrix: a one-row reference cannot broadcast."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 2), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x.reshape(-1, 2)))
        return self.b(h.reshape(x.shape[0], 4))


def test_deeplift_falls_back_to_one_reference_row_per_example():
    torch.manual_seed(0)
    net, x = _Pairs().to(D), torch.randn(3, 4, dtype=D)
    e = deeplift(net, x)
    diff = (net(x) - net(torch.zeros_like(x)))[:, 0].detach()
    torch.testing.assert_close(_sum(e.attributions), diff, rtol=0, atol=1e-12)


class _InPlaceAfterRelu(nn.Module):
    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(x), inplace=self.inplace)
        if self.inplace:
            h += 1.0  # changes the ReLU's output after the rule has seen it
        else:
            h = h + 1.0
        return self.b(torch.tanh(h))


def test_deeplift_reference_survives_later_inplace_changes():
    torch.manual_seed(0)
    inplace = _InPlaceAfterRelu(True).to(D)
    plain = _InPlaceAfterRelu(False).to(D)
    plain.load_state_dict(inplace.state_dict())
    x, b = torch.randn(4, 4, dtype=D), torch.randn(4, 4, dtype=D)
    for baseline in (None, b):
        ours = deeplift(inplace, x, target=1, baseline=baseline)
        reference = deeplift(plain, x, target=1, baseline=baseline)
        torch.testing.assert_close(ours.attributions, reference.attributions, rtol=0, atol=1e-12)
        assert ours.extras["completeness_gap"].abs().max() < 1e-10


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return torch.sigmoid(h) if bool(x.sum() > 0) else torch.tanh(h)


def test_deeplift_refuses_control_flow_that_differs_for_the_baseline():
    net, x = _Branchy().to(D), torch.ones(2, 3, dtype=D)
    flags = [p.requires_grad for p in net.parameters()]
    with pytest.raises(
        UnsupportedOperationError, match="same operations on the baseline.*`tanh`.*`sigmoid`"
    ):
        deeplift(net, x)
    assert [p.requires_grad for p in net.parameters()] == flags


class _PoolWithIndices(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.pool = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.pool(self.conv(x))
        return out.flatten(1)


def test_deeplift_refusal_in_the_reference_pass_names_the_layer():
    with pytest.raises(UnsupportedOperationError, match=r"`max_pool2d_with_indices` \(in pool\)"):
        deeplift(_PoolWithIndices().to(D), _images(2), target=0)


def test_rules_name_the_module_whose_code_runs_each_operation():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def helper(self, h: torch.Tensor) -> torch.Tensor:
            return torch.relu(h)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.helper(self.fc(x)) + x

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block, self.head = Block(), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(nn.functional.relu(self.block(x)))

    torch.manual_seed(0)
    net, x = Net().to(D), torch.randn(3, 4, dtype=D)
    rules = deeplift(net, x, target=0).extras["rules"]
    assert rules == {
        "block.fc: linear": "gradient",
        "block: relu": "rescale",  # a helper method of the block: the block
        "Net: relu": "rescale",  # the root model's own forward: its class name
        "head: linear": "gradient",
    }
    plain = deeplift(lambda rows: net(rows), x, target=0).extras["rules"]
    assert set(plain) == {"the model's forward: linear", "the model's forward: relu"}


class _MixesRows(nn.Module):
    """Centres a hidden layer on the batch mean in eval mode: each row's output depends on
    the other rows of the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.b(h - h.mean(0, keepdim=True))


def test_deeplift_keeps_separate_passes_for_a_model_that_mixes_rows(monkeypatch):
    """The joint pass appends the reference row to the batch; a model that mixes rows would
    then explain other outputs than ``model(x)``. First sight compares the two and keeps
    the separate passes for such a model; a row-wise model keeps the joint pass."""
    from pellucid.attribution.rules import _paired

    torch.manual_seed(0)
    x = torch.randn(5, 4, dtype=torch.float64)
    mixing = _MixesRows().double().eval()
    got = deeplift(mixing, x, target=1).attributions
    assert _paired._batch_first(mixing) is False
    twin = _MixesRows().double().eval()
    twin.load_state_dict(mixing.state_dict())
    monkeypatch.setattr(_paired, "REFERENCE_PASS", _paired.TwoPasses())
    _paired._remember(twin, False)  # what the first sight decided for the mixing model
    torch.testing.assert_close(got, deeplift(twin, x, target=1).attributions, rtol=0, atol=0)
    monkeypatch.undo()
    rowwise = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).double().eval()
    deeplift(rowwise, x, target=1)
    assert _paired._batch_first(rowwise) is True
