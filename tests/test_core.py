"""Core plumbing: Explanation files, targets, the state guard, validation, the public API."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pellucid
from pellucid._evaluate import select_output
from pellucid._state import model_guard
from pellucid._targets import resolve_target
from pellucid._validation import check_float, check_int
from pellucid.explanation import Explanation


def test_public_names_resolve():
    for name in pellucid.__all__:
        assert hasattr(pellucid, name), name
    assert pellucid.__version__.count(".") == 2


def test_explanation_roundtrip(tmp_path):
    e = Explanation(
        attributions=torch.randn(3, 4, dtype=torch.float64),
        inputs=torch.randn(3, 4, dtype=torch.float64),
        method="integrated_gradients",
        target=torch.tensor([0, 2, 1]),
        baseline=torch.zeros(3, 4, dtype=torch.float64),
        params={"n_steps": 50, "method": "gausslegendre", "eps": 1e-3, "nested": {"a": (1, 2)}},
        extras={
            "completeness_gap": torch.tensor([1e-4, 2e-4, 0.0]),
            "note": None,
            "nan": float("nan"),
        },
    )
    path = e.save(tmp_path / "e.safetensors")
    back = Explanation.load(path)
    assert (
        torch.equal(back.attributions, e.attributions) and back.attributions.dtype == torch.float64
    )
    assert torch.equal(back.target, e.target) and torch.equal(back.baseline, e.baseline)
    assert back.params == e.params
    assert torch.equal(back.extras["completeness_gap"], e.extras["completeness_gap"])
    assert back.extras["note"] is None and math.isnan(back.extras["nan"])


def test_explanation_load_refuses_other_files(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a pellucid explanation"):
        Explanation.load(tmp_path / "x.bin")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a pellucid explanation"):
        Explanation.load(tmp_path / "other.safetensors")


def test_targets():
    out = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert resolve_target("predicted", out).index.tolist() == [1, 0]
    assert resolve_target(1, out).scores(out).tolist() == pytest.approx([0.9, 0.2])
    assert resolve_target([0, 1], out).scores(out).tolist() == pytest.approx([0.1, 0.2])
    assert resolve_target(-1, out).index.tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"class index in \[0, 1\]; got 2"):
        resolve_target(2, out)
    with pytest.raises(ValueError, match="2 outputs per example; `target` must say"):
        resolve_target(None, out)
    with pytest.raises(ValueError, match="one entry per example"):
        resolve_target([0, 1, 1], out)
    with pytest.raises(TypeError, match="integer class indices"):
        resolve_target(torch.tensor([0.5, 1.0]), out)
    rows = torch.cat([out, out])
    index = torch.tensor([0, 1, 0, 1])
    assert resolve_target([1, 0], out).scores(rows, index).tolist() == pytest.approx(
        [0.9, 0.8, 0.9, 0.8]
    )


def test_an_int_target_scores_one_column_without_row_indices():
    out = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    one, same = resolve_target(-1, out), resolve_target([1, 1], out)
    assert one.column == 1 and not one.per_example
    assert same.column is None and same.per_example
    rows = torch.cat([out, out, out])
    index = torch.tensor([0, 1, 0, 1, 0, 1])
    torch.testing.assert_close(one.scores(rows), same.scores(rows, index), rtol=0, atol=0)
    torch.testing.assert_close(one.scores(rows, index), rows[:, 1], rtol=0, atol=0)
    assert torch.equal(one.describe(), torch.tensor([1, 1]))


def test_forward_knows_when_rows_need_their_example_index():
    from pellucid._evaluate import Forward

    model = torch.nn.Linear(2, 1)
    assert not Forward(model, n_examples=3).aligned
    assert not Forward(model, n_examples=3, forward_args=(torch.ones(1),)).aligned
    assert Forward(model, n_examples=3, forward_kwargs={"mask": torch.ones(3, 2)}).aligned


@pytest.mark.parametrize("method", ["kernel_shap", "occlusion", "lime", "sampling_shapley"])
def test_an_int_target_equals_the_same_index_per_example(method):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x = torch.randn(4, 5, dtype=torch.float64)
    net = net.to(torch.float64)
    kw = {"generator": torch.Generator().manual_seed(1)} if method != "occlusion" else {}
    a = pellucid.attribute(net, x, method=method, target=2, **kw)
    kw = {"generator": torch.Generator().manual_seed(1)} if method != "occlusion" else {}
    b = pellucid.attribute(net, x, method=method, target=[2, 2, 2, 2], **kw)
    torch.testing.assert_close(a.attributions, b.attributions, rtol=0, atol=1e-12)


def test_select_output():
    t = torch.ones(2, 3)
    assert select_output((t, "x")) is t
    assert select_output({"logits": t, "aux": 1}, "logits") is t
    assert select_output([1, t]) is t
    with pytest.raises(ValueError, match="keys are"):
        select_output({"logits": t}, "logit")


def test_model_guard_restores_everything_on_error():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()).train()
    net[0].weight.grad = g = torch.ones(2, 2)
    with pytest.raises(RuntimeError), model_guard(net, eval_mode=True):
        assert not net.training
        net[0].register_forward_hook(lambda *a: None)
        net[0].weight.requires_grad_(False)
        net[0].weight.grad = None
        raise RuntimeError("boom")
    assert net.training and net[1].training
    assert net[0].weight.requires_grad and net[0].weight.grad is g
    assert len(net[0]._forward_hooks) == 0


def test_training_mode_warning():
    net = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Dropout()).train()
    with pytest.warns(pellucid.PellucidWarning, match="training mode"):
        pellucid.saliency(net, torch.ones(2, 3))


@given(st.one_of(st.booleans(), st.floats(allow_nan=True), st.integers(-5, 5)))
def test_check_int_edges(value):
    if isinstance(value, bool) or isinstance(value, float):
        with pytest.raises(TypeError, match="`n` must be an integer"):
            check_int("n", value, min_value=1)
    elif value < 1:
        with pytest.raises(ValueError, match=f"`n` must be an integer >= 1; got {value}"):
            check_int("n", value, min_value=1)
    else:
        assert check_int("n", value, min_value=1) == value


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_check_float_edges(value):
    if math.isnan(value):
        with pytest.raises(ValueError, match="not NaN"):
            check_float("x", value, min_value=0.0, min_inclusive=False)
    elif math.isinf(value) or value <= 0:
        with pytest.raises(ValueError, match="`x` must be"):
            check_float("x", value, min_value=0.0, min_inclusive=False)
    else:
        assert check_float("x", value, min_value=0.0, min_inclusive=False) == value


def test_attribute_dispatch_and_suggestion():
    net = torch.nn.Linear(3, 1)
    e = pellucid.attribute(net, torch.ones(2, 3), method="input_x_gradient")
    assert e.method == "input_x_gradient"
    with pytest.raises(ValueError, match="Did you mean 'saliency'"):
        pellucid.attribute(net, torch.ones(2, 3), method="salency")


def test_top_level_reexports_every_attribution_name():
    from pellucid import attribution

    assert set(attribution.__all__) <= set(pellucid.__all__)
    for name in pellucid.list_methods():
        assert getattr(pellucid, name) is pellucid.get_method(name).fn


def test_guard_restores_batchnorm_running_stats_in_training_mode():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    net.train()
    before = [b.clone() for b in net.buffers()]
    with pytest.warns(pellucid.PellucidWarning):
        pellucid.saliency(net, torch.randn(8, 3), target=0)
    for a, b in zip(before, net.buffers(), strict=True):
        assert torch.equal(a, b)
    assert net.training
