"""One vocabulary: every public keyword of every registered method means one thing.

The registry's ``VOCABULARY`` lists each keyword with its meaning; a method cannot take a
synonym (``noise_scale`` for ``noise``) or shadow :func:`pellucid.attribute`'s ``method``.
Renamed keywords keep working for one release, with a ``PellucidDeprecationWarning``.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

import pellucid
from pellucid._registry import VOCABULARY
from pellucid._warnings import PellucidDeprecationWarning, PellucidWarning

METHODS = pellucid.list_methods()
#: The keywords every method takes, with the one default they have everywhere.
COMMON = {"target": None, "batch_size": None, "forward_args": None, "forward_kwargs": None}


@pytest.mark.parametrize("name", METHODS)
def test_every_keyword_is_in_the_vocabulary(name):
    params = inspect.signature(pellucid.get_method(name).fn).parameters
    positional = [p for p in params.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in positional] == ["model", "inputs"]
    keywords = [p for p in params.values() if p.kind is p.KEYWORD_ONLY]
    assert len(keywords) == len(params) - 2, "only model and inputs are positional"
    unknown = sorted(p.name for p in keywords if p.name not in VOCABULARY)
    assert not unknown, f"{name}: add {unknown} to VOCABULARY (or use an existing name)"
    assert "method" not in params  # reserved for attribute()'s dispatch
    for key, default in {**COMMON, "output": None, "eval_mode": None}.items():
        assert key in params, f"{name} lacks `{key}=`"
        assert params[key].default is default, f"{name}: `{key}` defaults to {default}"


def test_the_vocabulary_is_used():
    used = {
        p for name in METHODS for p in inspect.signature(pellucid.get_method(name).fn).parameters
    }
    assert set(VOCABULARY) - used == set()


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))


@pytest.mark.parametrize(
    ("call", "old", "new"),
    [
        (pellucid.integrated_gradients, {"method": "riemann_left"}, {"quadrature": "riemann_left"}),
        (pellucid.smoothgrad, {"method": "input_x_gradient"}, {"base": "input_x_gradient"}),
        (
            pellucid.smoothgrad,
            {"method_kwargs": {"absolute": False}},
            {"explain_kwargs": {"absolute": False}},
        ),
    ],
)
def test_old_keywords_warn_and_give_the_same_result(call, old, new):
    net, x = _net(), torch.randn(3, 4)
    extra = {"generator": torch.Generator().manual_seed(0), "n_samples": 3}
    if call is pellucid.integrated_gradients:
        extra = {"n_steps": 5}
    with pytest.warns(PellucidDeprecationWarning, match=f"`{next(iter(old))}=` is renamed"):
        before = call(net, x, target=1, **old, **extra)
    if "generator" in extra:
        extra["generator"] = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PellucidWarning)
        after = call(net, x, target=1, **new, **extra)
    torch.testing.assert_close(before.attributions, after.attributions, rtol=0, atol=0)
    with pytest.raises(TypeError, match="pass only"):
        call(net, x, target=1, **old, **new)


def test_other_renamed_keywords_warn():
    net, x = _net(), torch.randn(3, 4)
    with pytest.warns(PellucidDeprecationWarning, match="`noise_scale=` is renamed `noise=`"):
        pellucid.metrics.infidelity(net, x, torch.ones(3, 4), target=0, noise_scale=0.1)
    with pytest.warns(PellucidDeprecationWarning, match="`repeats=` is renamed `n_repeats=`"):
        pellucid.pruning.measure.latency(net, x, warmup=0, repeats=1)


def test_quadrature_is_reachable_through_attribute():
    net, x = _net(), torch.randn(2, 4)
    e = pellucid.attribute(
        net, x, method="integrated_gradients", target=0, quadrature="riemann_middle", n_steps=4
    )
    assert e.params["quadrature"] == "riemann_middle"
    s = pellucid.attribute(net, x, method="smoothgrad", target=0, base="input_x_gradient")
    assert s.params["base"] == "input_x_gradient"
