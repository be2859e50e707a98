"""Path attributions: integrated gradients and expected gradients (GradientSHAP).

Both integrate gradients along straight paths from a baseline to the input. All path points
of all examples are virtual rows evaluated ``batch_size`` at a time (``path_gradients``), so
1000 steps cost time, not memory. The completeness gap, ``sum(attributions) - (f(x) -
f(baseline))`` per example, goes in ``extras``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pellucid._deprecation import renamed
from pellucid._evaluate import (
    Evaluates,
    map_chunks,
    resolve_batch_size,
)
from pellucid._random import example_generators, per_example
from pellucid._registry import register
from pellucid._shell import explaining
from pellucid._targets import ResolvedTarget, Target
from pellucid._validation import check_generator, check_int
from pellucid.attribution._baselines import resolve_baseline, to_explained_space
from pellucid.attribution._quadrature import quadrature_nodes
from pellucid.explanation import Explanation

__all__ = ["expected_gradients", "integrated_gradients"]


def _mean_reference_scores(
    forward: Evaluates, target: ResolvedTarget, refs: torch.Tensor, n: int, batch_size: int | None
) -> torch.Tensor:
    """Per example, the mean target score over the reference rows."""
    size = resolve_batch_size(batch_size, refs[0].numel(), total=refs.shape[0])
    index = torch.zeros(refs.shape[0], dtype=torch.long, device=refs.device)
    with torch.no_grad():
        out = map_chunks(
            lambda a, b: forward(refs[a:b], index[a:b]), refs.shape[0], size, grad=True
        )
    if target.kind == "index" and target.index is not None:
        return out.reshape(out.shape[0], -1)[:, target.index.to(out.device)].mean(dim=0)
    return target.scores(out, None).mean().expand(n)


def _per_example_sum(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)


@register(kind="gradient", contract_kwargs={"n_steps": 8})
@renamed(method="quadrature")
def integrated_gradients(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    baseline: Any = None,
    n_steps: int = 50,
    quadrature: str = "gausslegendre",
    background: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    layer: Any = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Integrated gradients (Sundararajan et al. 2017) along the straight path from a baseline.

    ``attributions = (x - b) * integral_0^1 grad f(b + a (x - b)) da``, the integral by
    quadrature. ``extras["completeness_gap"]`` is ``sum(attributions) - (f(x) - f(b))`` per
    example, which goes to zero as ``n_steps`` grows.

    Args:
        model: a callable ``Tensor -> Tensor``, usually an ``nn.Module``.
        inputs: a batch-first float tensor (token ids with ``layer``).
        target: which output to explain (int, per-example, ``"predicted"``, callable, None).
        baseline: None/``"zeros"``, a number, a tensor (one example or one per example),
            ``"mean"`` (of ``background``), ``"blur"`` or ``"uniform"`` (with ``generator``).
        n_steps: quadrature nodes per example (>= 1; >= 2 for ``riemann_trapezoid``).
        quadrature: the rule that places the nodes: ``"gausslegendre"`` or
            ``"riemann_left|right|middle|trapezoid"`` (formerly ``method=``).
        background: reference examples for ``baseline="mean"``.
        generator: random source for ``baseline="uniform"``.
        layer: explain this submodule's output (e.g. the embedding of a token model).
        batch_size: path points per forward/backward pass (memory bound).
        max_memory: a budget for the call's peak memory, in bytes or as a size such as
            ``"2GB"`` or ``"512MiB"``: picks ``batch_size`` from the method's per-row cost
            and the model's activations measured on one row (``params["batch_size"]``).
            Pass it or ``batch_size``, not both.
        forward_args: extra positional model arguments; forward_kwargs: keyword ones.
        output: which part of a tuple/dict return value to explain.
        eval_mode: True explains in eval mode for this call; None warns in training mode.

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            `baseline` does not broadcast to `inputs`, `n_steps` is below what `quadrature` needs,
            or `quadrature` is unknown;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1)
        >>> e = integrated_gradients(net, torch.ones(2, 3), n_steps=4)
        >>> torch.allclose(e.attributions, net.weight.detach().expand(2, 3))
        True
    """
    nodes = quadrature_nodes(quadrature, n_steps)
    check_generator("generator", generator)
    with explaining("integrated_gradients", locals(), work=nodes[0].numel()) as run:
        x = run.inputs
        base = resolve_baseline(baseline, run.prep, background=background, generator=generator)
        alphas, weights = (t.to(device=x.device, dtype=x.dtype) for t in nodes)
        delta = x - base
        view = (-1,) + (1,) * (x.ndim - 1)

        def make_rows(example: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
            return base[example] + alphas[step].view(view) * delta[example]

        def combine(grad: torch.Tensor, example: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
            return grad * weights[step].view(view)

        attributions = run.path_gradients(alphas.numel(), make_rows, combine) * delta
        f_x, f_base = run.scores(), run.scores(base)
        run.result(
            attributions,
            baseline=base,
            params={
                "n_steps": alphas.numel(),
                "quadrature": quadrature,
                "baseline": baseline if isinstance(baseline, str | int | float) else None,
            },
            extras={
                "completeness_gap": (_per_example_sum(attributions) - (f_x - f_base)).detach(),
                "output": f_x.detach(),
                "baseline_output": f_base.detach(),
            },
        )
    return run.explanation


@register(kind="gradient", stochastic=True, contract_kwargs={"n_samples": 6})
def expected_gradients(
    model: Any,
    inputs: torch.Tensor,
    *,
    background: torch.Tensor | None = None,
    target: Target = None,
    n_samples: int = 50,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    layer: Any = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """Expected gradients / GradientSHAP (Erion et al. 2021; Lundberg and Lee 2017).

    For each example, ``n_samples`` baselines ``b`` are drawn from ``background`` and points
    ``b + a (x - b)`` with ``a ~ U(0, 1)``; the attribution is the mean of
    ``grad * (x - b)``. In expectation, attributions sum to ``f(x) - E[f(b)]``;
    ``extras["completeness_gap"]`` measures the sampling error against the background mean.

    Args:
        background: reference examples (rows shaped like one input); zeros if None.
        n_samples: baseline/point samples per example (>= 1).
        noise: standard deviation of Gaussian noise added to each point, as a fraction of
            each example's value range (SmoothGrad-style; 0 disables it).
        generator: the random source (same state, same result).
        Other arguments as in :func:`integrated_gradients`.

    Raises:
        TypeError: `model` is not callable, `inputs` is not a floating-point tensor, or an option
            has the wrong type.
        ValueError: `inputs` is empty or holds NaN/inf, `target` does not fit the model's output, or
            the baselines do not match `inputs`, `n_samples` < 1, or `noise` is negative;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1)
        >>> g = torch.Generator().manual_seed(0)
        >>> e = expected_gradients(net, torch.ones(2, 3), background=torch.zeros(4, 3), generator=g)
        >>> e.attributions.shape
        torch.Size([2, 3])
    """
    n_samples = check_int("n_samples", n_samples, min_value=1)
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise >= 0:
        raise ValueError(f"`noise` must be a number >= 0; got {noise!r}.")
    check_generator("generator", generator)
    with explaining("expected_gradients", locals(), work=n_samples) as run:
        x, n = run.inputs, run.inputs.shape[0]
        refs = torch.zeros_like(x[:1])
        if background is not None:
            refs = to_explained_space(background, run.prep, name="background")
        choice, alpha, bump = _draws(x, refs.shape[0], n_samples, float(noise), generator)
        view = (-1,) + (1,) * (x.ndim - 1)

        def make_rows(example: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
            b = refs[choice[example, step]]
            rows = b + alpha[example, step].view(view) * (x[example] - b)
            return rows if bump is None else rows + bump[example, step]

        def combine(grad: torch.Tensor, example: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
            return grad * (x[example] - refs[choice[example, step]]) / n_samples

        attributions = run.path_gradients(n_samples, make_rows, combine)
        f_refs = _mean_reference_scores(run.prep.forward, run.prep.target, refs, n, run.batch_size)
        run.result(
            attributions,
            baseline=refs,
            params={"n_samples": n_samples, "noise": float(noise)},
            extras={
                "completeness_gap": (
                    _per_example_sum(attributions) - (run.scores() - f_refs)
                ).detach()
            },
        )
    return run.explanation


def _draws(
    x: torch.Tensor, n_refs: int, n_samples: int, noise: float, generator: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per example and sample: the reference drawn, the path position and the Gaussian
    noise (``noise`` times the example's value range; None when 0)."""
    n = x.shape[0]
    # one stream per example: a row's draws do not depend on its batch or rank
    streams = example_generators(generator, n, device=x.device)
    choice = per_example(
        streams,
        lambda g: torch.randint(n_refs, (n_samples,), generator=g, device=x.device),
        device=x.device,
    )
    alpha = per_example(
        streams,
        lambda g: torch.rand(n_samples, generator=g, dtype=x.dtype, device=x.device),
        device=x.device,
    )
    if noise <= 0:
        return choice, alpha, None
    flat = x.reshape(n, -1)
    scale = (flat.max(dim=1).values - flat.min(dim=1).values) * noise
    eps = per_example(
        streams,
        lambda g: torch.randn(
            (n_samples, *x.shape[1:]), generator=g, dtype=x.dtype, device=x.device
        ),
        device=x.device,
    )
    return choice, alpha, eps * scale.view(n, 1, *([1] * (x.ndim - 1)))
