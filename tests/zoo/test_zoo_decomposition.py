"""DeepLIFT, LRP and guided backprop on random-weight torchvision models (no downloads):
completeness and conservation in float64 on mobilenet_v2, convnext_tiny and vit_b_16, with
their own initialization (biases, batch-norm shifts, positional embedding: LRP's ledger
names the relevance each absorbs) and without additive parameters."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from conftest import model_rows
from pellucid import deeplift, guided_backprop, lrp

torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.slow
D = torch.float64
SIZE = 32
# Both decompositions are exact in exact arithmetic; float64 rounding over the ~200-400
# operations of these models stays many orders below this (measured: 1e-12 or less).
REL = 1e-8


def _calibrate(model: nn.Module, x: torch.Tensor) -> None:
    """Batch-norm statistics of ``x`` (random-init statistics shrink mobilenet_v2's output
    to ~1e-10, which would make relative gaps meaningless)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        return
    for m in norms:
        m.momentum = None  # the cumulative average: after one batch, that batch's statistics
        m.reset_running_stats()
    with torch.no_grad():
        model.train()(x)
    model.eval()


@functools.cache
def _built(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    kw = {"image_size": SIZE} if name == "vit_b_16" else {}
    model = getattr(torchvision.models, name)(weights=None, **kw).to(D).eval()
    x = torch.randn(2, 3, SIZE, SIZE, dtype=D)
    if name == "vit_b_16":  # its head starts at zero: random, so the output is not constant
        nn.init.normal_(model.heads.head.weight, std=0.05)
    _calibrate(model, torch.randn(4, 3, SIZE, SIZE, dtype=D))
    return model, x


def _calibrated(name: str, n: int) -> tuple[nn.Module, torch.Tensor]:
    """A fresh torchvision model in float64 with its own initialization, batch-norm
    statistics calibrated (see ``_calibrate``), and ``n`` examples at 32 px (seeded)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).to(D)
    _calibrate(model, torch.randn(4, 3, SIZE, SIZE, dtype=D))
    return model, torch.randn(n, 3, SIZE, SIZE, dtype=D)


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The torchvision architecture with its own random initialization, in float64, at
    32 px: every layer of the 224 px model runs (vit_b_16 on 4 patches and its class token,
    the CNNs down to 1x1 maps) at a fraction of the cost; ``benchmarks/bench_decomposition.py
    --zoo`` runs them at 224 px. A copy per test (one build per model)."""
    model, x = _built(name)
    return copy.deepcopy(model), x


MODELS = ["mobilenet_v2", "convnext_tiny", "vit_b_16"]


def _relative(gap: torch.Tensor, scale: torch.Tensor) -> float:
    return float(gap.abs().max() / scale.abs().max())


@pytest.mark.parametrize("name", MODELS)
def test_deeplift_is_complete_on_the_zoo(name):
    model, x = _model(name)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    e = deeplift(model, x, target=1)
    with torch.no_grad():
        diff = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    assert diff.abs().max() > 1e-3  # a model whose output moves
    assert _relative(e.extras["completeness_gap"], diff) < REL
    summed = e.attributions.flatten(1).sum(1)
    assert _relative(summed - diff, diff) < REL  # against the model's own forward
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def _without_additive_parameters(model: nn.Module) -> nn.Module:
    """Biases, batch-norm shifts and positional embeddings set to zero: LRP conserves
    relevance exactly only where no constant adds to a layer's output (a constant takes
    its share, as a bias does)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "pos_embedding" in name:
                p.zero_()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
    return model


@pytest.mark.parametrize("name", MODELS)
def test_lrp_conserves_relevance_on_the_zoo(name):
    model, x = _model(name)
    model = _without_additive_parameters(model)
    e = lrp(model, x, target=1, rule="zero", epsilon=0.0)
    with torch.no_grad():
        f_x = model(x)[:, 1]
    assert f_x.abs().max() > 1e-3
    assert _relative(e.extras["conservation_error"], f_x) < REL
    labels = set(e.extras["rules"].values())
    expected = {"mobilenet_v2": "identity", "convnext_tiny": "identity"}.get(
        name, "constant (attention weights)"
    )
    assert expected in labels


def test_guided_backprop_runs_on_mobilenet_v2_relu6():
    model, x = _model("mobilenet_v2")
    e = guided_backprop(model, x, target=1)
    assert e.attributions.shape == x.shape and torch.isfinite(e.attributions).all()
    assert e.extras["rules"]["features.0.2: hardtanh"] == "guided"


@pytest.mark.parametrize("name", MODELS)
def test_lrp_names_the_relevance_constants_absorb_on_the_zoo(name):
    """Own initialization: biases, batch-norm shifts, vit_b_16's positional embedding take
    their share; attributions + absorbed relevance = f(x). ``ignore_bias=True`` (zennit's
    ``zero_params="bias"``) hands the layers' biases' share to the inputs: on convnext_tiny
    the attributions alone sum to f(x), on vit_b_16 only the positional embedding keeps a
    share (mobilenet_v2's batch-norm shifts are ~100x f(x) here: without them LRP-0's ratios
    explode, as any bias-free rule does at such shifts)."""
    model, x = _model(name)
    e = lrp(model, x, target=1)
    with torch.no_grad():
        f_x = model(x)[:, 1]
    absorbed = sum(e.extras["absorbed"].values())
    assert _relative(absorbed, f_x) > 1e-6  # the constants do take relevance
    assert _relative(e.extras["conservation_gap"], f_x) < REL
    summed = e.attributions.flatten(1).sum(1)
    assert _relative(summed + absorbed - f_x, f_x) < REL  # against the model's own forward
    if name == "mobilenet_v2":
        return
    ib = lrp(model, x, target=1, rule="zero", epsilon=0.0, ignore_bias=True)
    takers = {k for k, v in ib.extras["absorbed"].items() if _relative(v, f_x) > REL}
    summed = ib.attributions.flatten(1).sum(1)
    if name == "convnext_tiny":
        assert takers == set()
        assert _relative(summed - f_x, f_x) < REL
    else:
        assert takers == {"encoder.pos_embedding: add"}
        assert (
            _relative(summed + ib.extras["absorbed"]["encoder.pos_embedding: add"] - f_x, f_x) < REL
        )


@pytest.mark.parametrize(
    ("name", "planned"),
    [("resnet18", True), ("mobilenet_v2", True), ("mobilenet_v3_small", False)],
)
def test_deeplift_plan_matches_the_engine_on_the_zoo(name, planned):
    """Reused in-place ReLUs (resnet18), ReLU6 (mobilenet_v2): later calls run the learned
    plan and give the engine's result bit for bit; mobilenet_v3's squeeze-excitation gates
    (a product in the block's own forward) keep the engine."""
    from pellucid.attribution.rules import _plan

    model, x = _calibrated(name, 2)
    first = deeplift(model, x, target=1)
    assert isinstance(_plan.plan_for(model), _plan.JointPlan) is planned
    second = deeplift(model, x * 0.5, target=1)

    with _plan.engine_only():
        engine = deeplift(model, x * 0.5, target=1)
    assert torch.equal(second.attributions, engine.attributions)
    assert second.extras["rules"] == engine.extras["rules"] == first.extras["rules"]
    assert second.extras["rule_calls"] == engine.extras["rule_calls"]
    assert not [n for n, m in model.named_modules() if "forward" in m.__dict__]


@pytest.mark.parametrize(
    ("name", "planned"),
    [("resnet18", True), ("mobilenet_v3_small", False), ("densenet121", False)],
)
def test_chunked_deeplift_runs_the_reference_once_on_the_zoo(name, planned):
    """Chunks of 2 over 5 examples: the shared reference row runs with the first chunk only
    (the model sees 3, 2, 1 rows), later chunks pair with its runs (by resnet18's plan, by
    the engine on mobilenet_v3's gates and densenet's concatenations), and the result is
    the one pass's, bit for bit against the engine's chunks."""
    from pellucid.attribution.rules import _plan

    model, x = _calibrated(name, 5)
    whole = deeplift(model, x, target=1)
    assert isinstance(_plan.plan_for(model), _plan.JointPlan) is planned
    with model_rows(model) as rows:
        chunked = deeplift(model, x, target=1, batch_size=2)
    assert rows == [3, 2, 1]
    scale = whole.attributions.abs().max()
    assert _relative(chunked.attributions - whole.attributions, scale) < REL
    with torch.no_grad():
        diff = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    assert _relative(chunked.extras["completeness_gap"], diff) < REL
    with _plan.engine_only():
        engine = deeplift(model, x, target=1, batch_size=2)
    assert torch.equal(chunked.attributions, engine.attributions)
    assert chunked.extras["rule_calls"] == engine.extras["rule_calls"]
