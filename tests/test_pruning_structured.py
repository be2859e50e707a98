"""Structured pruning: the physically pruned model equals the masked original; peers agree."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pellucid.models import MLP, SmallCNN, TinyResNet, TinyTransformer
from pellucid.pruning import make_permanent_, plan_channel_pruning, prune_magnitude_


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def _masked_reference(model: nn.Module, plan, x: torch.Tensor) -> torch.Tensor:
    """The original model with the removed units' outputs forced to zero."""
    modules = dict(model.named_modules())
    handles = []
    for name, removed in plan.removed_outputs().items():
        module = modules[name]
        last = isinstance(module, nn.Linear | nn.LayerNorm)

        def zero(mod, args, out, removed=removed, last=last):
            out = out.clone()
            if last:
                out[..., removed] = 0
            else:
                out[:, removed] = 0
            return out

        handles.append(module.register_forward_hook(zero))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()


def _check_equivalence(model: nn.Module, x: torch.Tensor, **kwargs) -> nn.Module:
    model = model.double().eval()
    x = x.double()
    original_out = model(x)
    plan = plan_channel_pruning(model, x[:1], **kwargs)
    expected = _masked_reference(model, plan, x)
    pruned = plan.apply_(copy.deepcopy(model))
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == original_out.shape
    # float64 end to end: only summation order differs, far below 1e-5
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) == plan.params_after
    assert plan.params_after < plan.params_before
    return pruned


def test_tiny_resnet_residual_adds_equal_masked_original():
    torch.manual_seed(0)
    model = _randomize_bn(TinyResNet(in_channels=3, width=8, n_blocks=3))
    pruned = _check_equivalence(model, torch.randn(4, 3, 8, 8), amount=0.5)
    # both sides of every residual addition shrank together
    assert pruned.stem[0].out_channels == 4 == pruned.layers[0].conv2.out_channels
    assert pruned.layers[1].shortcut[0].out_channels == pruned.layers[1].conv2.out_channels == 8
    assert pruned.fc.out_features == 10


class ConcatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 6, 3, padding=1)
        self.b = nn.Conv2d(2, 4, 1)
        self.bn = nn.BatchNorm2d(10)
        self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)
        self.c = nn.Conv2d(10, 8, 1)
        self.d = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Linear(8 * 16, 5)

    def forward(self, x):
        h = torch.cat([torch.relu(self.a(x)), self.b(x)], dim=1)
        h = self.dw(torch.relu(self.bn(h)))
        h = torch.relu(self.c(torch.relu(h) * 1.0))
        return self.head(torch.flatten(torch.relu(self.d(h)), 1))


def test_concat_depthwise_grouped_equal_masked_original():
    torch.manual_seed(1)
    model = _randomize_bn(ConcatNet())
    pruned = _check_equivalence(model, torch.randn(3, 2, 4, 4), amount=0.5)
    assert (pruned.a.out_channels, pruned.b.out_channels) == (3, 2)
    assert pruned.bn.num_features == 5 == pruned.dw.groups
    # the square grouped conv is pruned inputs and outputs alike, evenly per group (its
    # input channels are c's outputs)
    assert pruned.c.out_channels == 4 and pruned.c.in_channels == 5
    assert (pruned.d.groups, pruned.d.in_channels, pruned.d.out_channels) == (2, 4, 4)
    assert pruned.head.in_features == 4 * 16


class LayerNormMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 12)
        self.norm = nn.LayerNorm(12)
        self.fc2 = nn.Linear(12, 7)
        self.fc3 = nn.Linear(7, 3)

    def forward(self, x):
        h = self.norm(self.fc1(x))
        return self.fc3(torch.relu(self.fc2(torch.relu(h))) + torch.relu(self.fc2(h)) * 0)


def test_layernorm_linear_chain():
    torch.manual_seed(2)
    # a module called twice: both calls' inputs are pruned alike, its outputs once
    shared = LayerNormMLP()
    plan = plan_channel_pruning(shared, torch.randn(2, 5), amount=0.5)
    plan.apply_(shared)
    assert sum(p.numel() for p in shared.parameters()) == plan.params_after
    assert shared(torch.randn(4, 5)).shape == (4, 3)
    assert shared.fc1.out_features == 6 == shared.fc2.in_features == shared.norm.weight.numel()
    assert shared.fc2.out_features == 3 == shared.fc3.in_features  # floor(7 * 0.5)
    model = nn.Sequential(nn.Linear(5, 12), nn.LayerNorm(12), nn.GELU(), nn.Linear(12, 3))
    plan = plan_channel_pruning(model, torch.randn(2, 5), amount=0.25)
    plan.apply_(model)
    assert model[1].normalized_shape == (9,) and model[3].in_features == 9
    assert model(torch.randn(4, 5)).shape == (4, 3)


def test_transformer_prunes_mlp_hidden_and_residual_stream_with_its_position():
    model = TinyTransformer(5, 3).eval()
    x = torch.randn(2, 7, 5)
    plan = plan_channel_pruning(model, x, amount=0.5)
    text = str(plan)
    assert "position[param]" in text and "blocks.0.attn[elementwise]" in text
    plan.apply_(model)
    assert model.blocks[0].mlp[0].out_features == 32 and model.embedding.out_features == 16
    assert model.position.shape[-1] == 16 == model.blocks[1].attn.embed_dim
    assert sum(p.numel() for p in model.parameters()) == plan.params_after
    assert model(x).shape == (2, 3)


@pytest.mark.peer
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_kept_channels_equal_torch_pruning_magnitude(ratio):
    tp = pytest.importorskip("torch_pruning")
    torch.manual_seed(3)
    net = _randomize_bn(SmallCNN(channels=(12, 20))).eval()
    x = torch.randn(1, 1, 8, 8)
    ours, peer = copy.deepcopy(net), copy.deepcopy(net)
    plan_channel_pruning(ours, x, amount=ratio, importance="l2").apply_(ours)
    tp.pruner.MagnitudePruner(
        peer,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[peer.classifier[3]],
    ).step()
    ours_sd, peer_sd = ours.state_dict(), peer.state_dict()
    assert ours_sd.keys() == peer_sd.keys()
    for key in ours_sd:
        assert torch.equal(ours_sd[key], peer_sd[key]), key


@pytest.mark.peer
def test_tiny_resnet_matches_torch_pruning():
    tp = pytest.importorskip("torch_pruning")
    torch.manual_seed(4)
    net = _randomize_bn(TinyResNet(width=8)).eval()
    x = torch.randn(1, 1, 8, 8)
    ours, peer = copy.deepcopy(net), copy.deepcopy(net)
    plan_channel_pruning(ours, x, amount=0.5).apply_(ours)
    tp.pruner.MagnitudePruner(
        peer,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[peer.fc],
    ).step()
    for (k, a), b in zip(ours.state_dict().items(), peer.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_ignore_round_to_per_layer_amount_and_printing():
    model = MLP(6, 2, hidden=(16, 16, 10))
    x = torch.randn(1, 6)
    plan = plan_channel_pruning(model, x, amount=0.5, ignore=["net.2"], round_to=3)
    widths = {
        name: int(keep.numel())
        for name, (keep, _) in ((n, plan.kept(n)) for n in ("net.0", "net.4"))
        if keep is not None
    }
    assert widths == {"net.0": 6, "net.4": 3}
    assert plan.kept("net.2")[0] is None and plan.kept("net.2")[1].numel() == 6
    assert "ignored" in str(plan)
    plan = plan_channel_pruning(model, x, amount={"net.4": 4})
    assert plan.kept("net.4")[0].numel() == 6 and plan.kept("net.0") == (None, None)


def test_importance_criteria_run():
    model = _randomize_bn(SmallCNN()).eval()
    x = torch.randn(16, 1, 8, 8)
    data = (x, torch.randint(0, 10, (16,)))
    keeps = {}
    for crit in ("l1", "l2", "bn_scale", "random", "taylor", "activation"):
        plan = plan_channel_pruning(
            model,
            x[:1],
            amount=0.5,
            importance=crit,
            data=data,
            generator=torch.Generator().manual_seed(0),
        )
        keeps[crit] = plan.kept("features.0")[0]
        assert keeps[crit].numel() == 8
    bn = model.features[1].weight.detach()
    assert torch.equal(keeps["bn_scale"], torch.sort(torch.topk(bn, 8).indices).values)
    custom = {"features.0": torch.arange(16.0)}
    plan = plan_channel_pruning(model, x[:1], amount=0.5, importance=custom)
    assert plan.kept("features.0")[0].tolist() == list(range(8, 16))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return x


class Unsupported(nn.Module):
    """Two operations whose channel dependence pellucid cannot follow."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.fc2 = nn.Linear(4, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(torch.cumsum(self.fc(x), 1) + torch.roll(self.fc2(x), 1, 1))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("model", "kwargs", "error", "match"),
    [
        (SmallCNN(), {"amount": 1.0}, ValueError, r"`amount` must be < 1.0"),
        (SmallCNN(), {"amount": 16}, ValueError, r"remove every unit of layer 'features.0'"),
        (SmallCNN(), {"amount": 0.5, "ignore": ["features.9"]}, ValueError, r"Did you mean"),
        (SmallCNN(), {"amount": 0.5, "importance": "taylor"}, ValueError, r"needs `data="),
        (SmallCNN(), {"amount": {"nope": 0.5}}, ValueError, r"`amount` keys must name"),
        (Untraceable(), {"amount": 0.5}, ValueError, r"cannot be traced by torch.fx at .*py:\d+"),
        (
            Unsupported(),
            {"amount": 0.5},
            ValueError,
            r"(?s)2 operation.*node 'cumsum' \(cumsum\).*node 'roll'.*ignore=.*\['fc', 'fc2'\]",
        ),
    ],
)
def test_bad_input_leaves_model_untouched(model, kwargs, error, match):
    x = torch.randn(1, 1, 8, 8) if isinstance(model, SmallCNN) else torch.randn(1, 4)
    before = _state(model)
    with pytest.raises(error, match=match):
        plan_channel_pruning(model, x, **kwargs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unsupported_node_can_be_ignored():
    model = Unsupported()
    plan = plan_channel_pruning(model, torch.randn(1, 4), amount=0.5, ignore=["fc", "fc2"])
    plan.apply_(model)
    assert model.fc.out_features == 6 == model.fc2.out_features


def test_plan_on_another_model_or_masked_model_is_refused_untouched():
    model = SmallCNN()
    plan = plan_channel_pruning(model, torch.randn(1, 1, 8, 8), amount=0.5)
    other = SmallCNN(channels=(16, 24))
    before = _state(other)
    with pytest.raises(ValueError, match="does not fit `model`.*features.3"):
        plan.apply_(other)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    assert other.features[0].out_channels == 16
    masked = prune_magnitude_(SmallCNN(), amount=0.5)
    with pytest.raises(ValueError, match="make_permanent_"):
        plan.apply_(masked)
    with pytest.raises(ValueError, match="make_permanent_"):
        plan_channel_pruning(masked, torch.randn(1, 1, 8, 8), amount=0.5)
    plan_channel_pruning(make_permanent_(masked), torch.randn(1, 1, 8, 8), amount=0.5)


def test_planning_does_not_change_model_state():
    model = SmallCNN().train()
    before = _state(model)
    plan_channel_pruning(model, torch.randn(2, 1, 8, 8), amount=0.5)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@settings(max_examples=12, deadline=None)
@given(
    widths=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    amount=st.floats(0.0, 0.95),
    seed=st.integers(0, 5),
)
def test_kept_counts_and_equivalence_property(widths, amount, seed):
    torch.manual_seed(seed)
    model = MLP(5, 3, hidden=tuple(widths)).double().eval()
    x = torch.randn(6, 5, dtype=torch.float64)
    plan = plan_channel_pruning(model, x[:1], amount=amount)
    for i, width in enumerate(widths):
        keep, _ = plan.kept(f"net.{2 * i}")
        kept = width if keep is None else keep.numel()
        assert kept == max(1, math.floor(width * (1 - amount) + 1e-9))
    expected = _masked_reference(model, plan, x)
    plan.apply_(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-10)


class PositionalStream(nn.Module):
    """A learned positional parameter added to the token stream, then a residual MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 5, 8))
        self.fc1, self.fc2, self.head = nn.Linear(8, 16), nn.Linear(16, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = x + self.pos
        return self.head((h + self.fc2(torch.relu(self.fc1(h)))).mean(1))


def test_positional_stream_is_never_pruned_on_one_side_only():
    # regression: the residual add once froze only one side and the pruned model crashed
    torch.manual_seed(5)
    model = PositionalStream().double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    plan = plan_channel_pruning(model, x, amount=0.5)
    expected = _masked_reference(model, plan, x)
    pruned = plan.apply_(copy.deepcopy(model))
    assert pruned.fc2.out_features == 8 == pruned.head.in_features
    assert pruned.fc1.out_features == 8
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), expected, rtol=0, atol=1e-10)


class BreaksWhenPruned(nn.Sequential):
    """Same modules as ``Sequential(Linear(4, 6), Linear(6, 4))``, a forward that needs 6."""

    def forward(self, x):
        return self[1](self[0](x)) + self[0](x)[..., :4] * self[0](x)[..., 5:6]


def test_plan_that_breaks_the_forward_is_never_applied():
    dense = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 4))
    plan = plan_channel_pruning(dense, torch.randn(1, 4), amount=0.5)
    breaks = BreaksWhenPruned(nn.Linear(4, 6), nn.Linear(6, 4))
    before, children = _state(breaks), list(breaks.children())
    with pytest.raises(ValueError, match="does not run.*unchanged"):
        plan.apply_(breaks)
    assert list(breaks.children()) == children
    assert all(torch.equal(v, before[k]) for k, v in breaks.state_dict().items())
    assert breaks(torch.randn(2, 4)).shape == (2, 4)


OPS = (
    "conv",
    "residual",
    "depthwise",
    "grouped",
    "se",
    "groupnorm",
    "channels_last",
    "cat",
    "shuffle",
    "unsupported",
)


class Composed(nn.Module):
    """A random stack of operations on an (N, C, H, W) stream (``unsupported``, a cumulative
    sum along the channels, cannot be followed: plans through it must be refused cleanly)."""

    def __init__(self, ops: list[str], width: int = 8) -> None:
        super().__init__()
        self.ops = list(ops)
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList()
        for op in self.ops:
            if op == "conv":
                block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
            elif op == "residual":
                block = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU())
            elif op == "depthwise":
                block = nn.Conv2d(width, width, 3, padding=1, groups=width)
            elif op == "grouped":  # in != out: 2 groups of 4 inputs -> 2 groups of 2 outputs
                block = nn.Sequential(
                    nn.Conv2d(width, width // 2, 3, padding=1, groups=2),
                    nn.Conv2d(width // 2, width, 1),
                )
            elif op == "se":
                block = nn.Sequential(nn.Conv2d(width, 4, 1), nn.ReLU(), nn.Conv2d(4, width, 1))
            elif op == "groupnorm":
                block = nn.GroupNorm(2, width)
            elif op == "channels_last":
                block = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width))
            elif op == "cat":
                block = nn.ModuleList([nn.Conv2d(width, 4, 1), nn.Conv2d(width, width - 4, 1)])
            else:
                block = nn.Identity()
            self.blocks.append(block)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        h = self.stem(x)
        for op, block in zip(self.ops, self.blocks, strict=True):
            if op == "residual":
                h = h + block(h)
            elif op == "se":
                h = h * torch.sigmoid(block(h.mean((2, 3), keepdim=True)))
            elif op == "channels_last":
                h = torch.permute(block(h.permute(0, 2, 3, 1)), (0, 3, 1, 2))
            elif op == "cat":
                h = torch.cat([block[0](h), block[1](h)], dim=1)
            elif op == "shuffle":
                n, c, hh, ww = h.shape
                h = h.view(n, 2, c // 2, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)
            elif op == "unsupported":
                h = torch.cumsum(h, 1)
            else:
                h = torch.relu(block(h))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


@settings(max_examples=15, deadline=None)
@given(
    ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=5),
    amount=st.floats(0.0, 0.9),
    seed=st.integers(0, 3),
)
def test_random_compositions_apply_to_a_running_model_or_change_nothing(ops, amount, seed):
    torch.manual_seed(seed)
    model = _randomize_bn(Composed(ops)).eval()
    x = torch.randn(2, 3, 6, 6)
    before, structure = _state(model), repr(model)
    try:
        plan = plan_channel_pruning(model, x[:1], amount=amount)
    except ValueError as err:
        # only the unsupported operation is refused, and the model is as it was
        assert "unsupported" in ops, err
        assert repr(model) == structure
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        return
    plan.apply_(model)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert sum(p.numel() for p in model.parameters()) == plan.params_after


class UntraceableInside(nn.Module):
    """A prunable MLP around a submodule whose forward branches on tensor values."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.inner, self.fc2 = nn.Linear(4, 8), Untraceable(), nn.Linear(4, 2)
        self.inner.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(self.inner(torch.relu(self.fc1(x))))


def test_untraceable_submodule_is_kept_whole_and_named():
    model = UntraceableInside()
    plan = plan_channel_pruning(model, torch.ones(1, 4), amount=0.5)
    text = str(plan)
    # the failing line is named relative to the file, whatever folder the user works in
    assert "module 'inner' cannot be traced by torch.fx at test_pruning_structured.py:" in text
    assert plan.kept("fc1") == (None, None) and plan.kept("inner.fc") == (None, None)
    plan.apply_(model)
    assert model(torch.ones(3, 4)).shape == (3, 2)


class SquareGrouped(nn.Module):
    """RegNet-style: 1x1 conv -> BN -> grouped 3x3 conv (in == out) -> 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, 12, 1), nn.BatchNorm2d(12)
        self.b, self.c = nn.Conv2d(12, 12, 3, padding=1, groups=3), nn.Conv2d(12, 5, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.bn(self.a(x))))))


def test_square_grouped_conv_prunes_inputs_and_outputs_evenly_per_group():
    torch.manual_seed(6)
    pruned = _check_equivalence(_randomize_bn(SquareGrouped()), torch.randn(3, 3, 5, 5), amount=0.5)
    # the groups stay (3), each keeps 2 of its 4 channels, inputs and outputs alike
    assert (pruned.b.groups, pruned.b.in_channels, pruned.b.out_channels) == (3, 6, 6)
    assert pruned.a.out_channels == 6 == pruned.c.in_channels


def test_channel_plan_names_the_recurrent_layers_it_keeps():
    # issue 17 item 11: a plan on an LSTM model used to prune nothing without a word
    from pellucid.pruning.structured import RecurrentLayerWarning

    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(8, 16, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.lstm(x)[0][:, -1])

    with pytest.warns(RecurrentLayerWarning, match=r"lstm \(LSTM\)"):
        plan_channel_pruning(Seq().eval(), torch.randn(2, 5, 8), amount=0.5)


class ReducingGrouped(nn.Module):
    """A grouped convolution with fewer outputs than inputs (3 groups: 4 inputs -> 2 outputs
    each), fed by one layer and feeding a BatchNorm and a 1x1 convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 12, 1), nn.BatchNorm2d(12)
        self.b, self.bn_b = nn.Conv2d(12, 6, 3, padding=1, groups=3), nn.BatchNorm2d(6)
        self.c = nn.Conv2d(6, 5, 1)

    def forward(self, x):
        h = torch.relu(self.bn_a(self.a(x)))
        return self.c(torch.relu(self.bn_b(self.b(h))))


@pytest.mark.parametrize("importance", ["l2", "taylor"])
def test_grouped_conv_with_fewer_outputs_prunes_its_inputs_per_group(importance):
    torch.manual_seed(7)
    model = _randomize_bn(ReducingGrouped())
    data = (torch.randn(8, 3, 5, 5), torch.randint(0, 5, (8,)))
    kwargs = {"data": (data[0].double(), data[1])} if importance == "taylor" else {}

    class Pooled(nn.Module):  # a (N, classes) output for the taylor loss
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x).mean((2, 3))

    pruned = _check_equivalence(
        Pooled(model), torch.randn(3, 3, 5, 5), amount=0.5, importance=importance, **kwargs
    ).inner
    # the groups stay (3); each keeps 2 of its 4 inputs and 1 of its 2 outputs
    assert (pruned.b.groups, pruned.b.in_channels, pruned.b.out_channels) == (3, 6, 3)
    assert pruned.a.out_channels == 6 == pruned.bn_a.num_features
    assert pruned.c.in_channels == 3


class SplitAttention(nn.Module):
    """MobileViT-v2-style linear attention: one projection split into a 1-channel query and
    ``dim``-channel keys and values (the sizes spelled with the attribute ``dim``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.qkv, self.out = nn.Conv2d(dim, 1 + 2 * dim, 1), nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        q, k, v = self.qkv(x).split([1, self.dim, self.dim], dim=1)
        context = (k * torch.softmax(q, dim=-1)).sum(-1, keepdim=True)
        return self.out(torch.relu(v) * context.expand_as(v))


class PatchBlock(nn.Module):
    """A block torch.fx cannot trace (an ``if`` on the input's shape, as in timm's MobileViT):
    unfold into 2x2 patches by reshape/permute, attention and an MLP on them, fold back."""

    def __init__(self, width: int = 8, dim: int = 6, hidden: int = 12) -> None:
        super().__init__()
        self.local, self.attn = nn.Conv2d(width, dim, 1), SplitAttention(dim)
        self.fc1, self.fc2 = nn.Conv2d(dim, hidden, 1), nn.Conv2d(hidden, dim, 1)
        self.proj = nn.Conv2d(dim, width, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        nh, nw = math.ceil(h / 2), math.ceil(w / 2)
        if (nh * 2, nw * 2) != (h, w):
            x = nn.functional.interpolate(x, size=(nh * 2, nw * 2))
        y = self.local(x)
        n = y.shape[1]
        y = y.reshape(b, n, nh, 2, nw, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, n, 4, -1)
        y = y + self.attn(y)
        y = y + self.fc2(torch.relu(self.fc1(y)))
        y = y.reshape(b, n, 2, 2, nh, nw).permute(0, 1, 4, 2, 5, 3).reshape(b, n, h, w)
        return self.proj(y)


class WithPatchBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.block, self.head = PatchBlock(), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        return self.head((h + self.block(h)).mean((2, 3)))


def test_untraceable_block_is_pruned_through_a_recorded_run():
    from pellucid.pruning._graph import RecordedTraceWarning

    torch.manual_seed(8)
    model = _randomize_bn(WithPatchBlock())
    with pytest.raises(Exception, match="(?i)proxy|trac"):  # really beyond torch.fx
        torch.fx.symbolic_trace(model)
    with pytest.warns(RecordedTraceWarning, match=r"module 'block'.*recorded"):
        pruned = _check_equivalence(model, torch.randn(2, 3, 4, 4), amount=0.5)
    block = pruned.block
    # inside the block: the MLP's hidden width, the attention's keys/values (and the `dim`
    # attribute its split reads), the block's inner stream; the residual stream outside
    assert block.fc1.out_channels == 6 and block.attn.qkv.out_channels == 1 + 2 * 3
    assert block.attn.dim == 3 == block.attn.out.in_channels
    assert block.local.out_channels == 3 == block.proj.in_channels
    assert pruned.stem.out_channels == 4 == pruned.head.in_features


class Chunked(nn.Module):
    """ShuffleNet-v2-style halves: one half passes, the other goes through a layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 1), nn.Linear(8, 2)

    def forward(self, x):
        left, right = self.a(x).chunk(2, dim=1)
        return self.head(torch.cat([left, torch.relu(self.b(right))], 1).mean((2, 3)))


def test_chunk_and_split_cut_a_layer_output_into_parts():
    torch.manual_seed(9)
    pruned = _check_equivalence(Chunked(), torch.randn(2, 3, 4, 4), amount=0.5)
    # both halves keep the same number (the pruned tensor is chunked in two again)
    assert pruned.a.out_channels == 4 and pruned.b.in_channels == 2
    assert pruned.head.in_features == 4


class ShuffleUnits(nn.Module):
    """Two ShuffleNet-v2 units: the first concatenates two branches, the second passes one
    half of its input and transforms the other; both end in a channel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.left, self.right = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.head = nn.Linear(16, 3)

    @staticmethod
    def shuffle(x):
        n, c, h, w = x.size()
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = self.shuffle(torch.cat([self.left(h), self.bn(self.right(h))], 1))
        a, b = h.chunk(2, dim=1)
        h = self.shuffle(torch.cat([a, self.branch(b)], 1))
        return self.head(h.mean((2, 3)))


def test_channel_shuffle_is_pruned_through_its_permutation():
    torch.manual_seed(10)
    model = _randomize_bn(ShuffleUnits())
    pruned = _check_equivalence(model, torch.randn(3, 3, 4, 4), amount=0.5)
    # the branches are pruned alike (every shuffle piece keeps the same channels); the
    # shuffled stream reaches the head interleaved, each kept channel twice over
    assert pruned.left.out_channels == pruned.right.out_channels == pruned.bn.num_features
    assert pruned.left.out_channels < 8 and pruned.branch[0].out_channels == 4
    assert pruned.head.in_features == 2 * pruned.left.out_channels
