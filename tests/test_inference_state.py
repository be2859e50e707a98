"""Entry points that run the user's model under ``torch.inference_mode`` hand it back usable.

A masked-pruned layer's ``weight`` is a plain attribute that torch's pruning pre-hook
recomputes (``weight_orig * weight_mask``) at every forward, and a forward may register a
cache buffer. Run under inference mode, both would come back as inference tensors, and the
user's next training step that reads them fails ("Inference tensors cannot be saved for
backward"). Each entry point must leave the very same objects in place.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pellucid
from pellucid import metrics
from pellucid.inspection import permutation_importance, record_activations
from pellucid.pruning import prune_magnitude_
from pellucid.pruning.measure import latency, macs

N_CLASSES = 3


def _pruned() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, N_CLASSES)).double().eval()
    prune_magnitude_(net, amount=0.5)
    return net


def _state(model: nn.Module) -> list[tuple[str, str, torch.Tensor]]:
    """Every tensor the model holds: parameters, buffers and plain tensor attributes."""
    found = []
    for name, module in model.named_modules():
        for key, value in (*module._parameters.items(), *module._buffers.items()):
            found.append((name, key, value))
        found += [(name, k, v) for k, v in vars(module).items() if isinstance(v, torch.Tensor)]
    return found


def _train_step(model: nn.Module, x: torch.Tensor) -> None:
    """One SGD step whose loss also reads each pruned weight before the forward (an L2
    penalty on the kept weights)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    penalty = sum((m.weight_orig * m.weight).sum() for m in model if hasattr(m, "weight_orig"))
    loss = F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long)) + 1e-3 * penalty
    loss.backward()
    opt.step()


def _explain(name: str):
    info = pellucid.get_method(name)
    kwargs = {"target": 1, **info.contract_kwargs}
    if info.stochastic:
        kwargs["generator"] = torch.Generator().manual_seed(0)
    return lambda m, x: info.fn(m, x, **kwargs)


def _attr(x: torch.Tensor) -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, x[0].numel(), dtype=x.dtype).expand_as(x)


_gen = torch.Generator
ENTRY_POINTS = {
    **{
        f"method:{n}": _explain(n)
        for n in pellucid.list_methods()
        if "tabular" in pellucid.get_method(n).input_kinds
    },
    "kernel_shap(max_memory)": lambda m, x: pellucid.kernel_shap(
        m, x, target=1, n_samples=64, max_memory="64MB", generator=_gen().manual_seed(0)
    ),
    "record_activations": lambda m, x: record_activations(m, x),
    "permutation_importance": lambda m, x: permutation_importance(
        m, x, torch.tensor([0, 1, 2, 0]), n_repeats=2, generator=_gen().manual_seed(0)
    ),
    "latency": lambda m, x: latency(m, x, batch_size=2, warmup=1, n_repeats=2),
    "macs": lambda m, x: macs(m, x),
    "deletion_curve": lambda m, x: metrics.deletion_curve(m, x, _attr(x), target=1),
    "faithfulness_correlation": lambda m, x: metrics.faithfulness_correlation(
        m, x, _attr(x), target=1, n_samples=8, generator=_gen().manual_seed(0)
    ),
    "infidelity": lambda m, x: metrics.infidelity(
        m, x, _attr(x), target=1, n_samples=4, generator=_gen().manual_seed(0)
    ),
    "max_sensitivity": lambda m, x: metrics.max_sensitivity(
        m, x, "saliency", target=1, n_samples=2, generator=_gen().manual_seed(0)
    ),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_pruned_model_comes_back_trainable(entry):
    model = _pruned()
    x = torch.randn(4, 5, dtype=torch.float64, generator=_gen().manual_seed(1))
    before = _state(model)
    ENTRY_POINTS[entry](model, x)
    after = _state(model)
    assert [(n, k) for n, k, _ in after] == [(n, k) for n, k, _ in before]
    assert all(a is b for (_, _, a), (_, _, b) in zip(after, before, strict=True))
    assert not any(t.is_inference() for _, _, t in after)
    _train_step(model, x)  # raised "Inference tensors cannot be saved for backward"


class _Cached(nn.Module):
    """A layer that builds a lookup table on first use and keeps it as a buffer (as rotary
    position embeddings do)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "table" not in self._buffers:
            self.register_buffer("table", torch.linspace(0.5, 1.5, x.shape[1]), persistent=False)
        return self.linear(x * self.table)


@pytest.mark.parametrize("entry", ["record_activations", "method:occlusion"])
def test_a_cache_built_inside_is_not_left_behind(entry):
    torch.manual_seed(0)
    model = _Cached().eval()
    x = torch.randn(4, 5).requires_grad_(True)
    ENTRY_POINTS[entry](model, x.detach())
    assert "table" not in model._buffers and model.state_dict().keys() == {
        "linear.weight",
        "linear.bias",
    }
    model(x).sum().backward()  # the table built here is an ordinary tensor
    assert x.grad is not None
