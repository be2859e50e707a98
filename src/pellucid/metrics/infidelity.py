"""Infidelity (Yeh et al. 2019): do the attributions predict the effect of perturbations?

``mean_I (attributions . I - (f(x) - f(x - I)))^2`` over random perturbations ``I``, all
examples x perturbations evaluated as batched forwards; one value per example.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from pellucid._deprecation import renamed
from pellucid._evaluate import check_memory_options
from pellucid._random import current_offset, keyed_generator, stream_key
from pellucid._state import model_guard
from pellucid._validation import check_float, check_int
from pellucid.metrics._common import flat_features, score_rows, setup_metric
from pellucid.metrics._perturb import per_example

__all__ = ["infidelity"]


@renamed(noise_scale="noise")
def infidelity(
    model: Any,
    inputs: torch.Tensor,
    attributions: Any,
    *,
    target: Any = None,
    n_samples: int = 10,
    noise: float = 0.1,
    normalize: bool = False,
    perturbations: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> torch.Tensor:
    """Infidelity (Yeh et al. 2019), one value >= 0 per example; lower is more faithful.

    ``mean_I (attributions . I - (f(x) - f(x - I)))^2`` over ``n_samples`` perturbations
    ``I ~ N(0, noise^2)`` (or the given ``perturbations``). With ``normalize=True`` the
    attributions are first scaled by the best factor ``beta = E[a b] / E[a^2]`` (as in
    captum), so only their direction is judged.

    Args:
        n_samples: perturbations per example.
        noise: standard deviation of the Gaussian perturbations (formerly ``noise_scale``).
        normalize: scale the attributions optimally before scoring.
        perturbations: optional perturbations ``I`` to use, shape ``(n_samples, *features)``
            (shared) or ``(N, n_samples, *features)``.
        generator: random source of the perturbations.
        batch_size: rows per forward pass.
        max_memory: a budget for the call's peak memory, in bytes or as a size such as
            ``"2GB"`` or ``"512MiB"``: picks ``batch_size`` from the perturbed rows' cost and
            the model's activations measured on one row. Pass it or ``batch_size``, not both.

    Raises:
        TypeError: `model` is not callable, `inputs` or `attributions` is not a tensor, or an option
            has the wrong type.
        ValueError: `attributions` does not match the shape of `inputs`, `target` does not fit the
            model's output, or `n_samples` < 1 or `noise` <= 0;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(5, 1)
        >>> x = torch.randn(4, 5)
        >>> infidelity(net, x, net.weight.detach().expand(4, 5)).abs().max() < 1e-8
        tensor(True)
    """
    if not isinstance(normalize, bool):
        raise TypeError(f"`normalize` must be True or False; got {normalize!r}.")
    check_memory_options(batch_size, max_memory)
    with model_guard(model, eval_mode=eval_mode, method="infidelity"):
        setup = setup_metric(
            model,
            inputs,
            attributions,
            target=target,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
            output=output,
        )
        x = flat_features(setup.inputs)
        n, d = x.shape
        attr = flat_features(setup.attributions)
        if perturbations is not None:
            given = per_example(perturbations, setup.inputs, name="perturbations", dtype=x.dtype)
            n_samples = given.shape[1]
            given = given.reshape(n, n_samples, d)
            # row r is example r // S, sample r % S: contiguous slices of a per-example tensor
            flat = given.reshape(n * n_samples, d) if given.stride(0) != 0 else None
        else:
            n_samples = check_int("n_samples", n_samples, min_value=1)
            scale = check_float("noise", noise, min_value=0.0, min_inclusive=False)
        dots: list[torch.Tensor] = []
        shape = setup.inputs.shape[1:]

        noise_rows = _noise_source(generator, d, x, n_samples) if perturbations is None else None

        def make_rows(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            r = torch.arange(start, stop, device=x.device)
            example = r.div(n_samples, rounding_mode="floor")
            if noise_rows is not None:
                bump = noise_rows(start, stop).mul_(scale)
            elif flat is not None:
                bump = flat[start:stop]
            else:  # shared by all examples: an expanded view, never copied whole
                bump = given[0].index_select(0, r.remainder_(n_samples))
            dots.append((attr.index_select(0, example) * bump).sum(dim=1))
            return (x.index_select(0, example) - bump).reshape(-1, *shape), example

        perturbed = score_rows(
            setup,
            make_rows,
            n * n_samples,
            batch_size=batch_size,
            max_memory=max_memory,
            method="infidelity",
        )
    a = torch.cat(dots).reshape(n, n_samples)
    b = setup.scores.unsqueeze(1) - perturbed.reshape(n, n_samples)
    if normalize:
        aa, ab = (a * a).mean(dim=1), (a * b).mean(dim=1)
        beta = torch.where(
            aa > 0, ab / aa.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(aa)
        )
        a = a * beta.unsqueeze(1)
    return ((a - b) ** 2).mean(dim=1)


def _noise_source(
    generator: torch.Generator | None, d: int, x: torch.Tensor, n_samples: int
) -> Callable[[int, int], torch.Tensor]:
    """``rows(start, stop)``: standard normal perturbations of rows ``start:stop``, the same
    whatever the chunks.

    On the CPU the user's generator draws them in order (:func:`_gaussian_rows`). On a GPU
    each example draws its samples' uniforms on the device from its own stream, keyed by
    one draw of the generator and the example's index in the whole dataset (ranks agree):
    drawing on the CPU and copying would cost more than the model's forward passes.
    """
    if x.device.type == "cpu":
        return lambda start, stop: _gaussian_rows(stop - start, d, generator, x.dtype)
    return _KeyedNoise(stream_key(generator), current_offset(), n_samples, d, x)


class _KeyedNoise:
    """Rows of per-example keyed streams (see :func:`_noise_source`): a chunk takes its rows
    from the draws of the examples it covers, one draw per example (the last example's kept
    for a chunk that ends inside it)."""

    def __init__(self, key: int, first: int, n_samples: int, d: int, like: torch.Tensor) -> None:
        self.key, self.first, self.n_samples, self.d = key, first, n_samples, d
        self.dtype, self.device = like.dtype, like.device
        self._last: tuple[int, torch.Tensor] | None = None

    def _example(self, e: int) -> torch.Tensor:
        if self._last is not None and self._last[0] == e:
            return self._last[1]
        stream = keyed_generator(self.key, self.first + e, self.device)
        u = torch.rand(
            self.n_samples, 2, self.d, generator=stream, dtype=self.dtype, device=self.device
        )
        self._last = (e, u)
        return u

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        s = self.n_samples
        parts = []
        for e in range(start // s, (stop - 1) // s + 1):
            lo, hi = max(start, e * s) - e * s, min(stop, (e + 1) * s) - e * s
            parts.append(self._example(e)[lo:hi])
        return _box_muller(parts[0] if len(parts) == 1 else torch.cat(parts))


def _box_muller(u: torch.Tensor) -> torch.Tensor:
    """(rows, d) standard normals from (rows, 2, d) uniforms in [0, 1)."""
    radius = torch.log1p(-u[:, 0]).mul_(-2).sqrt_()
    return radius.mul_(torch.cos(u[:, 1] * (2 * math.pi)))


def _gaussian_rows(
    rows: int, d: int, generator: torch.Generator | None, dtype: torch.dtype
) -> torch.Tensor:
    """(rows, d) standard normal draws made from uniform ones (Box-Muller).

    A CPU generator draws uniforms one after the other, so rows drawn in chunks of any size
    are the same draws (``torch.randn`` pairs values within one call: its draws would
    depend on ``batch_size``).

    Example:
        >>> g = lambda: torch.Generator().manual_seed(0)
        >>> whole = _gaussian_rows(5, 3, g(), torch.float64)
        >>> gen = g()
        >>> parts = [_gaussian_rows(k, 3, gen, torch.float64) for k in (2, 3)]
        >>> torch.equal(whole, torch.cat(parts))
        True
    """
    return _box_muller(torch.rand(rows, 2, d, generator=generator, dtype=dtype))
