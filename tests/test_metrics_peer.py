"""Cross-checks of the metrics against captum and quantus where the definitions coincide.

The peers draw their perturbations from numpy's or torch's global RNG; the same perturbations
are handed to pellucid explicitly, so the values must agree to floating-point precision.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pellucid import metrics

pytestmark = [pytest.mark.peer, pytest.mark.filterwarnings("ignore::UserWarning")]


def image_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 5)
    ).eval()


def data(n: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=gen)
    attr = torch.randn(n, 1, 8, 8, generator=gen)
    y = image_model()(x).argmax(1).detach()
    return x, attr, y


def test_infidelity_matches_captum():
    captum_metrics = pytest.importorskip("captum.metrics")
    model = image_model()
    x, attr, y = data()
    n_samples = 7
    pert = torch.randn(x.shape[0], n_samples, 1, 8, 8, generator=torch.Generator().manual_seed(2))

    def perturb(inputs):  # captum repeats every example n_samples times (example-major)
        flat = pert.reshape(-1, 1, 8, 8)
        return flat, inputs - flat

    for normalize in (False, True):
        expected = captum_metrics.infidelity(
            model, perturb, x, attr, target=y, n_perturb_samples=n_samples, normalize=normalize
        )
        got = metrics.infidelity(model, x, attr, target=y, perturbations=pert, normalize=normalize)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_sensitivity_max_matches_captum():
    captum_attr = pytest.importorskip("captum.attr")
    captum_metrics = pytest.importorskip("captum.metrics")
    model = image_model()
    x, _, y = data()
    n_samples = 5
    delta = (
        torch.rand(x.shape[0], n_samples, 1, 8, 8, generator=torch.Generator().manual_seed(3)) - 0.5
    ) * 0.04

    def perturb(inputs, radius):
        return inputs + delta.reshape(-1, 1, 8, 8)

    saliency = captum_attr.Saliency(model)
    expected = captum_metrics.sensitivity_max(
        saliency.attribute, x, perturb_func=perturb, n_perturb_samples=n_samples, target=y
    )
    got = metrics.max_sensitivity(model, x, "saliency", target=y, perturbations=delta)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def _quantus():
    quantus = pytest.importorskip("quantus")
    warnings.filterwarnings("ignore")
    return quantus


def test_sparseness_and_complexity_match_quantus():
    quantus = _quantus()
    x, attr, y = data()
    a = attr.numpy().copy()
    spars = quantus.Sparseness(normalise=False, abs=True, disable_warnings=True)(
        model=image_model(), x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.copy()
    )
    comp = quantus.Complexity(normalise=False, abs=True, disable_warnings=True)(
        model=image_model(), x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.copy()
    )
    # quantus adds 1e-7 to every |a| (Gini) and 1e-12 inside the log: relative error ~1e-6
    torch.testing.assert_close(
        metrics.sparseness(attr), torch.tensor(spars, dtype=torch.float32), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        metrics.complexity(attr), torch.tensor(comp, dtype=torch.float32), rtol=1e-5, atol=1e-5
    )


def test_pixel_flipping_matches_quantus_deletion_curve():
    quantus = _quantus()
    model = image_model()
    x, attr, y = data()
    curves = quantus.PixelFlipping(
        features_in_step=1,
        perturb_baseline=0.0,
        normalise=False,
        abs=False,
        disable_warnings=True,
    )(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=attr.numpy(), softmax=False)
    got = metrics.deletion_curve(model, x, attr, target=y, step=1, baseline=0.0)
    # quantus reports the curve after each step, without the unperturbed point
    torch.testing.assert_close(
        got.scores[:, 1:], torch.tensor(np.array(curves), dtype=torch.float32), rtol=1e-4, atol=1e-5
    )


def test_faithfulness_correlation_matches_quantus():
    quantus = _quantus()
    model = image_model()
    x, attr, y = data()
    n, runs, size = x.shape[0], 20, 16
    np.random.seed(7)
    expected = quantus.FaithfulnessCorrelation(
        nr_runs=runs,
        subset_size=size,
        perturb_baseline=0.0,
        normalise=False,
        abs=False,
        return_aggregate=False,
        disable_warnings=True,
    )(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=attr.numpy(), softmax=False)
    # Replay quantus's draws: for each run, one subset per example.
    np.random.seed(7)
    masks = torch.zeros(n, runs, 64, dtype=torch.bool)
    for run in range(runs):
        for i in range(n):
            masks[i, run, np.random.choice(64, size, replace=False)] = True
    got = metrics.faithfulness_correlation(
        model, x, attr, target=y, masks=masks.reshape(n, runs, 1, 8, 8), baseline=0.0
    )
    torch.testing.assert_close(
        got, torch.tensor(expected, dtype=torch.float32), rtol=1e-4, atol=1e-4
    )
