"""DeepLIFT's learned joint pass (``rules/_plan``) gives exactly what the engine gives.

After the engine's first joint pass on a model whose non-linearities all sit in leaf
modules, later calls run with those modules' ``forward`` swapped for the rules and no
function mode. Every test compares with the engine alone (plans switched off): the same
attributions bit for bit, the same records, the same errors, and the model as it was.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pellucid
from conftest import model_rows
from pellucid.attribution.rules import _plan
from pellucid.attribution.rules._engine import UnsupportedOperationError
from pellucid.models import MLP, SmallCNN, TinyResNet, TinyTransformer


@pytest.fixture
def engine_only():
    """A function that runs deeplift with the engine alone (no plan is learned or used)."""

    def run(model: nn.Module, x: torch.Tensor, **kwargs):
        with _plan.engine_only():
            return pellucid.deeplift(model, x, **kwargs)

    return run


def _same(a: pellucid.Explanation, b: pellucid.Explanation) -> None:
    assert torch.equal(a.attributions, b.attributions)
    assert torch.equal(a.extras["completeness_gap"], b.extras["completeness_gap"])
    assert a.extras["rules"] == b.extras["rules"]
    assert a.extras["rule_calls"] == b.extras["rule_calls"]


def _no_forward_left(model: nn.Module) -> None:
    assert not [n for n, m in model.named_modules() if "forward" in m.__dict__]


class _Reused(nn.Module):
    """One ReLU module called twice, an in-place ReLU and a max pool, in a residual block."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.relu, self.inplace = nn.ReLU(), nn.ReLU(inplace=True)
        self.pool, self.head = nn.MaxPool2d(2), nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv1(x))
        h = self.inplace(self.conv2(h) + h)
        return self.head(self.pool(self.relu(h)).flatten(1))


MODELS = {
    "smallcnn": lambda: (SmallCNN().eval(), torch.randn(6, 1, 8, 8)),
    "tinyresnet": lambda: (TinyResNet(in_channels=3).eval(), torch.randn(4, 3, 32, 32)),
    "mlp": lambda: (MLP(7, 3).eval(), torch.randn(5, 7)),
    "reused": lambda: (_Reused().eval(), torch.randn(3, 3, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_plan_is_learned_and_matches_the_engine(name: str, engine_only) -> None:
    torch.manual_seed(0)
    model, x = MODELS[name]()
    expected = engine_only(model, x, target=1)
    first = pellucid.deeplift(model, x, target=1)  # the engine, which learns the plan
    assert isinstance(_plan.plan_for(model), _plan.JointPlan)
    second = pellucid.deeplift(model, x, target=1)  # the plan
    third = pellucid.deeplift(model, x * 0.5, target=2)
    _same(first, expected)
    _same(second, expected)
    _same(third, engine_only(model, x * 0.5, target=2))
    assert isinstance(_plan.plan_for(model), _plan.JointPlan)
    _no_forward_left(model)


def test_the_plan_path_runs_no_function_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model, x = SmallCNN().eval(), torch.randn(4, 1, 8, 8)
    pellucid.deeplift(model, x, target=0)
    from pellucid.attribution.rules import _paired

    def refuse(*args, **kwargs):
        raise AssertionError("the engine ran")

    monkeypatch.setattr(_paired.PairedEngine, "joint_pass", refuse)
    pellucid.deeplift(model, x, target=0)  # the plan only
    monkeypatch.setattr(_paired.PairedEngine, "paired_pass", refuse)
    pellucid.deeplift(model, x, target=0, batch_size=3)  # later chunks: the plan's bound pass


class _Switch(nn.Module):
    """Linear -> ReLU module -> Linear; with ``extra`` set, a functional non-linearity on
    a path the plan never saw."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.relu, self.b = nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)
        self.extra: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.extra == "tanh":
            h = h + torch.tanh(h)
        elif self.extra == "relu":
            h = F.relu(h) - h
        elif self.extra == "erf":  # no rule: refused
            h = torch.special.erf(h)
        return self.b(self.relu(h))


@pytest.mark.parametrize("extra", ["tanh", "relu"])
def test_a_new_functional_nonlinearity_falls_back_to_the_engine(extra: str, engine_only) -> None:
    torch.manual_seed(0)
    model, x = _Switch().eval(), torch.randn(5, 4)
    pellucid.deeplift(model, x, target=0)
    assert isinstance(_plan.plan_for(model), _plan.JointPlan)
    model.extra = extra
    got = pellucid.deeplift(model, x, target=0)
    _same(got, engine_only(model, x, target=0))
    assert got.extras["completeness_gap"].abs().max() < 1e-5
    assert _plan.plan_for(model) is False  # the engine from now on
    _no_forward_left(model)


def test_an_unsupported_operation_is_still_refused() -> None:
    torch.manual_seed(0)
    model, x = _Switch().eval(), torch.randn(5, 4)
    pellucid.deeplift(model, x, target=0)
    model.extra = "erf"
    with pytest.raises(UnsupportedOperationError, match="erf"):
        pellucid.deeplift(model, x, target=0)
    _no_forward_left(model)


def test_batch_norm_switched_to_training_is_still_refused() -> None:
    torch.manual_seed(0)
    model, x = SmallCNN().eval(), torch.randn(4, 1, 8, 8)
    pellucid.deeplift(model, x, target=0)
    pellucid.deeplift(model, x, target=0)
    model.train()
    with pytest.raises(UnsupportedOperationError, match="training mode"):
        pellucid.deeplift(model, x, target=0, eval_mode=False)
    assert model.training
    _no_forward_left(model)


def test_dropout_switched_to_training_is_still_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2)).eval()
    x = torch.randn(3, 4)
    pellucid.deeplift(model, x, target=0)
    model[2].train()
    with pytest.raises(UnsupportedOperationError, match="dropout"):
        pellucid.deeplift(model, x, target=0, eval_mode=False)
    _no_forward_left(model)


def test_changed_module_attributes_are_followed(engine_only) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(3)
    )
    x = torch.randn(3, 2, 8, 8)
    model(x)  # materialize the lazy layer
    model.eval()
    pellucid.deeplift(model, x, target=0)
    model[2].kernel_size, model[2].stride = 4, 4
    model[4] = nn.Linear(4 * 2 * 2, 3)
    _same(pellucid.deeplift(model, x, target=0), engine_only(model, x, target=0))


def test_a_replaced_module_is_not_skipped(engine_only) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    x = torch.randn(5, 4)
    pellucid.deeplift(model, x, target=0)
    model[1] = nn.Tanh()
    _same(pellucid.deeplift(model, x, target=0), engine_only(model, x, target=0))


class _Raises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.relu, self.b = nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.a(x))
        if self.fail:
            raise RuntimeError("the model failed")
        return self.b(h)


def test_a_model_raising_in_the_planned_pass_is_restored() -> None:
    torch.manual_seed(0)
    model, x = _Raises().eval(), torch.randn(3, 4)
    pellucid.deeplift(model, x, target=0)
    model.fail = True
    with pytest.raises(ValueError, match="the model failed"):
        pellucid.deeplift(model, x, target=0)
    _no_forward_left(model)
    model.fail = False
    assert torch.equal(model.relu(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))


class _Threaded(nn.Module):
    """Calls its ReLU module from another thread, on other rows, during its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.relu, self.b = nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        other = torch.randn(2, 6, requires_grad=True)
        worker = threading.Thread(target=lambda: self.seen.append(self.relu(other)))
        worker.start()
        worker.join()
        return self.b(self.relu(self.a(x)))


def test_other_threads_see_the_plain_module(engine_only) -> None:
    torch.manual_seed(0)
    model, x = _Threaded().eval(), torch.randn(3, 4)
    pellucid.deeplift(model, x, target=0)
    model.seen.clear()
    got = pellucid.deeplift(model, x, target=0)  # the plan: a rule on this thread only
    assert [type(y.grad_fn).__name__ for y in model.seen] == ["ReluBackward0"]
    _same(got, engine_only(model, x, target=0))


def test_plan_needs_leaf_modules() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.relu(self.a(x)))

    model = Functional().eval()
    pellucid.deeplift(model, torch.randn(3, 4), target=0)
    assert _plan.plan_for(model) is False


@pytest.mark.parametrize(
    ("x", "x0", "multipliers"),
    [
        ([3.0, 1.0], [0.0, 2.0], [1 / 3, 0.0]),  # (y - y0) = 1 routed to x's argmax, over dx = 3
        ([2.0, 1.0], [2.0, 0.0], [1.0, 0.0]),  # x == x0 at the argmax: the gradient there
        ([1.0, 4.0], [5.0, 0.0], [0.25, 0.0]),  # y < y0: (y - y0) over dx at the reference's argmax
    ],
)
def test_max_pool_multipliers_by_hand(x, x0, multipliers) -> None:
    from pellucid.attribution.rules._deeplift import DeepLiftMaxPool

    rule = DeepLiftMaxPool(F.max_pool1d, (2,), {})
    xs, refs = torch.tensor([[x]]), torch.tensor([[x0]])
    (y, i), (y0, i0) = rule.evaluate(None, xs), rule.evaluate(None, refs)
    state = rule.pair(None, (xs,), y, i, (refs,), y0, i0)
    m = rule.backward(None, state, torch.ones_like(y))
    assert torch.allclose(m, torch.tensor([[multipliers]]))
    assert torch.allclose(((xs - refs) * m).sum(), (y - y0).sum())  # completeness


@pytest.mark.parametrize("name", ["smallcnn", "reused"])
def test_chunked_calls_learn_and_use_the_plan(name: str, engine_only) -> None:
    """With ``batch_size`` below the batch, the first forward keeps no graph (the engine runs
    it) and every chunk is a joint pass: the first chunk's teaches the plan, the others use
    it, and the rule counts add up over the chunks as the engine's do."""
    torch.manual_seed(0)
    model, x = MODELS[name]()
    expected = engine_only(model, x, target=1, batch_size=2)
    first = pellucid.deeplift(model, x, target=1, batch_size=2)
    assert isinstance(_plan.plan_for(model), _plan.JointPlan)
    second = pellucid.deeplift(model, x, target=1, batch_size=2)
    whole = pellucid.deeplift(model, x, target=1)
    _same(first, expected)
    _same(second, expected)
    assert set(whole.extras["rule_calls"]) == set(expected.extras["rule_calls"])
    assert torch.allclose(whole.attributions, expected.attributions, rtol=1e-5, atol=1e-6)
    assert isinstance(_plan.plan_for(model), _plan.JointPlan)


@pytest.mark.parametrize("hook", [torch.tanh, F.relu, lambda y: y * 2])
def test_hooks_on_a_site_keep_the_engines_result(hook, engine_only) -> None:
    """A forward hook's operation on a ReLU module's output: another non-linearity makes the
    module no site (tanh) or the planned pass differ from the plan (a second ReLU), and the
    engine runs; a linear hook keeps the plan. The results are the engine's either way."""
    torch.manual_seed(0)
    model, x = SmallCNN().eval(), torch.randn(4, 1, 8, 8)
    model.features[2].register_forward_hook(lambda module, args, out: hook(out))
    pellucid.deeplift(model, x, target=1)
    if hook is torch.tanh:
        assert _plan.plan_for(model) is False
    got = pellucid.deeplift(model, x, target=1)
    _same(got, engine_only(model, x, target=1))
    assert isinstance(_plan.plan_for(model), _plan.JointPlan) is (hook not in (torch.tanh, F.relu))
    _no_forward_left(model)


class _Functional(nn.Module):
    """ReLUs called as ``F.relu`` in the model's own forward: no plan, the engine runs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(5, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(self.a(x)))


@pytest.mark.parametrize("name", [*sorted(MODELS), "functional", "transformer"])
@pytest.mark.parametrize("planned", [True, False])
def test_chunks_run_the_reference_row_once_and_give_the_whole_result(
    name: str, planned: bool, engine_only
) -> None:
    """In a call whose rows come in chunks the shared reference row runs with the first
    chunk only: later chunks pair with the reference runs that chunk kept (by the plan, or
    by the engine's paired pass), and the result is the one pass's, in float64."""
    torch.manual_seed(0)
    if name == "functional":
        model, x = _Functional().eval(), torch.randn(7, 5)
    elif name == "transformer":  # products, softmax and layer norm: paired by the engine
        model, x = TinyTransformer(6, 3).eval(), torch.randn(7, 5, 6)
    else:
        model, x = MODELS[name]()
        x = torch.cat([x, x.flip(0) * 0.5])  # more rows than one chunk holds
    model, x = model.double(), x.double()
    run = pellucid.deeplift if planned else engine_only
    whole = run(model, x, target=1)
    has_plan = planned and name not in ("functional", "transformer")
    assert isinstance(_plan.plan_for(model), _plan.JointPlan) == has_plan
    with model_rows(model) as rows:
        chunked = run(model, x, target=1, batch_size=3)
    n = x.shape[0]
    assert rows[0] == 4 and sum(rows) == n + 1  # the reference row once, in the first chunk
    torch.testing.assert_close(chunked.attributions, whole.attributions, rtol=1e-10, atol=1e-12)
    gap = chunked.extras["completeness_gap"]
    assert float(gap.abs().max()) < 1e-9
    assert set(chunked.extras["rule_calls"]) == set(whole.extras["rule_calls"])
    _no_forward_left(model)


def test_chunks_that_run_other_operations_than_the_first_are_refused() -> None:
    """A model whose path depends on the batch (data-dependent control flow) cannot pair a
    later chunk with the first chunk's reference runs: refused with the engine's message,
    the model untouched."""

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)
            self.relu, self.tanh = nn.ReLU(), nn.Tanh()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.b(self.relu(h) if x[0, 0] >= 0 else self.tanh(self.relu(h)))

    torch.manual_seed(0)
    model = Branchy().eval()
    x = torch.randn(6, 4)
    x[:, 0] = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    pellucid.deeplift(model, x[:3], target=1)  # first sight, and the plan
    with pytest.raises(UnsupportedOperationError, match="same operations on the baseline"):
        pellucid.deeplift(model, x, target=1, batch_size=3)
    _no_forward_left(model)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
