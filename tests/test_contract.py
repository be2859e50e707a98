"""ONE contract over every registered attribution method (scikit-learn's check_estimator idea).

A method becomes public by registering; then it must: return attributions of the inputs'
shape and dtype (float32 and float64), be batch invariant (a batch equals its rows
explained one by one), be deterministic given a seeded generator, leave the model exactly
as it was (parameters bit-identical, .grad objects, requires_grad, train/eval flags, hooks),
also when the call raises, and round-trip through save/load. The registry's ``MethodInfo``
says how to call each method: ``contract_kwargs`` (small budgets), ``needs_layer``,
``stochastic`` and ``input_kinds``.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn

import pellucid
from pellucid._state import has_mode_dependent_layers
from pellucid.explanation import Explanation

METHODS = pellucid.list_methods()
N_CLASSES = 3


class _Cnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(self.relu1(self.bn(self.conv1(x)))))
        return self.fc(self.pool(h).flatten(1))


def _setup(info: pellucid.MethodInfo, dtype: torch.dtype = torch.float64, n: int = 3):
    """(model, inputs, layer name) for the first input kind the method supports."""
    torch.manual_seed(0)
    kind = info.input_kinds[0] if info.input_kinds else "tabular"
    if "image" in info.input_kinds and info.needs_layer:
        kind = "image"
    if kind == "image":
        model, x, layer = _Cnn(), torch.randn(n, 2, 6, 6), "conv2"
        with torch.no_grad():
            model.bn.running_mean.normal_()
            model.bn.running_var.uniform_(0.5, 2.0)
    elif kind == "sequence":
        from pellucid.models import TinyTransformer

        model = TinyTransformer(4, N_CLASSES, d_model=8, n_heads=2, n_layers=1)
        x, layer = torch.randn(n, 5, 4), "embedding"
    else:
        model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, N_CLASSES))
        x, layer = torch.randn(n, 5), "0"
    return model.to(dtype).eval(), x.to(dtype), layer


def _kwargs(info: pellucid.MethodInfo, layer: str, seed: int = 0) -> dict:
    kwargs = dict(info.contract_kwargs)
    kwargs.setdefault("target", 1)
    if info.needs_layer:
        kwargs.setdefault("layer", layer)
    if info.stochastic:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return kwargs


def _explain(info, model, x, layer, **extra) -> Explanation:
    kwargs = _kwargs(info, layer)
    kwargs.update(extra)
    return info.fn(model, x, **kwargs)


def _hook_counts(model: nn.Module) -> list[int]:
    return [
        len(getattr(m, attr))
        for m in model.modules()
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        )
    ]


@pytest.fixture(params=METHODS)
def info(request) -> pellucid.MethodInfo:
    return pellucid.get_method(request.param)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype(info, dtype):
    model, x, layer = _setup(info, dtype)
    e = _explain(info, model, x, layer)
    assert isinstance(e, Explanation)
    assert e.method == info.name
    assert e.attributions.shape == x.shape
    assert e.attributions.dtype == dtype
    assert torch.isfinite(e.attributions).all()
    assert e.inputs.shape == x.shape


def test_batch_invariance(info):
    # Stochastic methods too: each example draws from its own stream, keyed by its row in the
    # whole input (pellucid._random), so row i explained alone at offset i sees the same draws.
    from pellucid._random import example_offset

    model, x, layer = _setup(info)
    whole = _explain(info, model, x, layer).attributions
    rows = []
    for i in range(x.shape[0]):
        with example_offset(i):
            rows.append(_explain(info, model, x[i : i + 1], layer).attributions)
    rows = torch.cat(rows)
    # float64 throughout: only summation order differs between a batch and single rows.
    torch.testing.assert_close(whole, rows, rtol=1e-7, atol=1e-9)


def test_determinism_with_generator(info):
    model, x, layer = _setup(info)
    first = _explain(info, model, x, layer).attributions
    second = _explain(info, model, x, layer).attributions
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def _column_major(x: torch.Tensor) -> torch.Tensor:
    """The same values with reversed strides (``torch.tensor(df.values)`` is (1, N) in 2-D)."""
    dims = tuple(reversed(range(x.dim())))
    return x.permute(dims).contiguous().permute(dims)


def _strided(x: torch.Tensor) -> torch.Tensor:
    """The same values every other element of a larger buffer (a sliced view)."""
    return torch.stack([x, torch.full_like(x, float("nan"))], dim=-1)[..., 0]


@pytest.mark.parametrize("layout", [_column_major, _strided], ids=["transposed", "strided"])
def test_non_contiguous_inputs(info, layout):
    model, x, layer = _setup(info)
    odd = layout(x)
    assert not odd.is_contiguous() and torch.equal(odd, x)
    got = _explain(info, model, odd, layer)
    want = _explain(info, model, x, layer)
    # float64: only the kernels' summation order may depend on the memory layout
    torch.testing.assert_close(got.attributions, want.attributions, rtol=1e-7, atol=1e-9)


def _snapshot(model: nn.Module):
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers": [b.detach().clone() for b in model.buffers()],
        "grads": [p.grad for p in model.parameters()],
        "grad_values": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": _hook_counts(model),
        "global_hooks": [
            len(nn.modules.module._global_forward_hooks),
            len(nn.modules.module._global_forward_pre_hooks),
            len(nn.modules.module._global_backward_hooks),
            torch._C._len_torch_function_stack(),  # no TorchFunctionMode left active
        ],
    }


def _assert_untouched(model: nn.Module, before) -> None:
    after = _snapshot(model)
    for a, b in zip(before["params"], after["params"], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(before["buffers"], after["buffers"], strict=True):
        assert torch.equal(a, b)
    assert all(a is b for a, b in zip(before["grads"], after["grads"], strict=True))
    for a, b in zip(before["grad_values"], after["grad_values"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)  # values, not only identity
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"]
    assert before["global_hooks"] == after["global_hooks"]


def _dirty(model: nn.Module) -> None:
    """Give the model state a method could disturb: a .grad, a frozen parameter, a hook."""
    params = list(model.parameters())
    params[0].grad = torch.ones_like(params[0])
    params[-1].requires_grad_(False)
    model.register_forward_hook(lambda m, i, o: None)


def test_no_side_effects(info):
    model, x, layer = _setup(info)
    _dirty(model)
    before = _snapshot(model)
    _explain(info, model, x, layer)
    _assert_untouched(model, before)


def test_no_side_effects_when_the_call_raises(info):
    model, x, layer = _setup(info)
    _dirty(model)
    before = _snapshot(model)
    with pytest.raises((ValueError, TypeError), match="target"):
        _explain(info, model, x, layer, target=N_CLASSES + 5)
    _assert_untouched(model, before)


class _BoomOnBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("boom in backward")


class _FailsLater(nn.Module):
    """Runs normally once (target resolution), then raises on the next forward or on the
    first backward: a failure in the middle of a method."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("boom")
        out = self.inner(x)
        return _BoomOnBackward.apply(out) if torch.is_grad_enabled() else out


def test_no_side_effects_when_the_model_fails_midway(info):
    model, x, layer = _setup(info)
    wrapped = _FailsLater(model).eval()
    _dirty(wrapped)
    before = _snapshot(wrapped)
    try:
        _explain(info, wrapped, x, "inner." + layer)
    except Exception:
        pass
    else:  # only a method that needs one forward and no backward has no "midway" to fail in
        assert wrapped.calls == 1 and info.kind == "attention", (info.name, wrapped.calls)
    _assert_untouched(wrapped, before)


def test_training_mode_warns(info):
    model, x, layer = _setup(info)
    if not has_mode_dependent_layers(model):
        pytest.skip("this input kind's reference model has no dropout or batch norm")
    model.train()
    with pytest.warns(pellucid.PellucidWarning, match="training mode"), warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            _explain(info, model, x, layer)
        except (ValueError, TypeError):
            pass  # a rule-based method may then refuse train-mode batch norm; it still warned
    assert model.training


def test_save_load_round_trip(info, tmp_path):
    model, x, layer = _setup(info)
    e = _explain(info, model, x, layer)
    loaded = Explanation.load(e.save(tmp_path / "e.safetensors"))
    assert loaded.method == e.method
    torch.testing.assert_close(loaded.attributions, e.attributions, rtol=0, atol=0)
    torch.testing.assert_close(loaded.inputs, e.inputs, rtol=0, atol=0)
    assert set(loaded.params) == set(e.params)
    assert set(loaded.extras) == set(e.extras)


def test_registered_methods_are_exported(info):
    assert getattr(pellucid, info.name) is info.fn
    assert info.fn.__doc__ and "Example:" in info.fn.__doc__


class _Trace(nn.Module):
    """A conv net on 3x16x16 images whose user hook records the layout of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 8 * 8, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        return self.fc(h.flatten(1))


def _traced_calls(model: nn.Module, fn) -> tuple[list[int], object]:
    seen: list[int] = []
    handle = model.conv1.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[0]))
    try:
        return seen, fn()
    finally:
        handle.remove()


@pytest.mark.slow
def test_fast_layout_path_is_invisible(info, monkeypatch):
    """On a model and workload large enough for the channels-last path (forced to be taken
    wherever pellucid may take it), every method gives what it gives in the given layout, the
    user's hook sees the same calls, and nothing of the model changes."""
    import pellucid._kernels as kernels

    if "image" not in info.input_kinds:
        pytest.skip("the layout policy concerns images")
    torch.manual_seed(0)
    model, x = _Trace().eval(), torch.randn(3, 3, 16, 16)
    kwargs = _kwargs(info, "conv2")
    kwargs.pop("generator", None)
    if "feature_mask" in inspect.signature(info.fn).parameters:  # 16 blocks of 4x4 pixels
        blocks = torch.arange(16).view(4, 4).repeat_interleave(4, 0).repeat_interleave(4, 1)
        kwargs["feature_mask"] = blocks.expand(3, 16, 16)

    def run() -> Explanation:
        extra = {"generator": torch.Generator().manual_seed(0)} if info.stochastic else {}
        return info.fn(model, x, **kwargs, **extra)

    monkeypatch.setattr(kernels, "MIN_EXPECTED_ROWS", 1 << 40)  # never measured: as given
    run()  # a first sight some methods learn from (DeepLIFT's joint reference pass)
    plain_calls, plain = _traced_calls(model, run)
    monkeypatch.setattr(kernels, "MIN_EXPECTED_ROWS", 0)  # always measured...
    monkeypatch.setattr(kernels, "MIN_GAIN", 0.0)  # ...and channels-last always chosen
    _dirty(model)
    before = _snapshot(model)
    fast_calls, fast = _traced_calls(model, run)
    _assert_untouched(model, before)
    assert fast_calls == plain_calls  # the trial runs are not seen by the user's hooks
    # other convolution kernels: equal to float32 rounding
    torch.testing.assert_close(fast.attributions, plain.attributions, rtol=1e-4, atol=1e-5)
