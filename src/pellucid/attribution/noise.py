"""SmoothGrad and its variants, wrapping any gradient method.

Each example is copied ``n_samples`` times with Gaussian noise whose standard deviation is
``noise`` times the example's value range (Smilkov et al. 2017); the wrapped method explains
all noisy copies in one batched call and the copies are aggregated: the mean (``smoothgrad``),
the mean of squares (``smoothgrad_sq``) or the variance (``vargrad``, Adebayo et al. 2018).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from pellucid._deprecation import renamed
from pellucid._evaluate import grad_batch_size, input_gradients
from pellucid._random import example_generators, per_example
from pellucid._registry import get_method, register
from pellucid._shell import Run, explaining
from pellucid._targets import Target
from pellucid._validation import check_choice, check_float, check_generator, check_int
from pellucid.explanation import Explanation

__all__ = ["VARIANTS", "smoothgrad"]

VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")
_FAST = ("saliency", "input_x_gradient")


def _aggregate(samples: torch.Tensor, variant: str) -> torch.Tensor:
    if variant == "smoothgrad":
        return samples.mean(dim=1)
    if variant == "smoothgrad_sq":
        return (samples * samples).mean(dim=1)
    return samples.var(dim=1, unbiased=False)


@register(kind="gradient", stochastic=True, contract_kwargs={"n_samples": 4})
@renamed(method="base", method_kwargs="explain_kwargs")
def smoothgrad(
    model: Any,
    inputs: torch.Tensor,
    *,
    target: Target = None,
    base: str | Callable[..., Explanation] = "saliency",
    variant: str = "smoothgrad",
    n_samples: int = 20,
    noise: float = 0.15,
    generator: torch.Generator | None = None,
    explain_kwargs: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    max_memory: int | str | None = None,
    forward_args: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: Any = None,
    eval_mode: bool | None = None,
) -> Explanation:
    """SmoothGrad (Smilkov et al. 2017), SmoothGrad-squared or VarGrad over any gradient method.

    Args:
        model: a callable ``Tensor -> Tensor``, usually an ``nn.Module``.
        inputs: a batch-first float tensor.
        target: which output to explain; resolved on the clean inputs, so ``"predicted"``
            is the clean prediction in every noisy copy.
        base: the wrapped method: a registered name (``"saliency"``,
            ``"integrated_gradients"``, ...) or a function with the attribution signature
            (formerly ``method=``).
        variant: ``"smoothgrad"`` (mean), ``"smoothgrad_sq"`` (mean of squares) or
            ``"vargrad"`` (variance) over the noisy copies.
        n_samples: noisy copies per example (>= 1).
        noise: noise standard deviation as a fraction of each example's ``max - min``.
        generator: the random source (same state, same result).
        explain_kwargs: extra arguments for ``base`` (e.g. ``{"absolute": False}``; formerly
            ``method_kwargs=``).
        batch_size: rows per backward pass, passed to the wrapped method.
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
            `base` is not a gradient method (smoothgrad excluded), `variant` is unknown, `n_samples`
            < 1, or `noise` is negative;
            `max_memory` is not a size, is given with `batch_size` or cannot hold one row.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1)
        >>> g = torch.Generator().manual_seed(0)
        >>> smoothgrad(net, torch.ones(2, 3), n_samples=5, generator=g).attributions.shape
        torch.Size([2, 3])
    """
    variant = check_choice("variant", variant, VARIANTS)
    n_samples = check_int("n_samples", n_samples, min_value=1)
    noise = check_float("noise", noise, min_value=0.0)
    kwargs = dict(explain_kwargs or {})
    name, fn = _wrapped(base)
    fast = name in _FAST and fn is get_method(name).fn and set(kwargs) <= {"absolute"}
    check_generator("generator", generator)
    with explaining("smoothgrad", locals(), work=n_samples) as run:
        x, n = run.inputs, run.inputs.shape[0]
        flat = x.reshape(n, -1)
        sigma = (flat.max(dim=1).values - flat.min(dim=1).values) * noise
        # one stream per example: the noise of a row does not depend on its batch or rank
        streams = example_generators(generator, n, device=x.device)
        per = _examples_per_block(run, n, n_samples)
        parts, errors, inner = [], [], dict(kwargs)
        for lo in range(0, n, per):  # whole examples at a time: memory follows batch_size
            hi = min(n, lo + per)
            eps = per_example(
                streams[lo:hi],
                lambda g: torch.randn(
                    (n_samples, *x.shape[1:]), generator=g, dtype=x.dtype, device=x.device
                ),
                device=x.device,
            )
            view = (hi - lo, 1) + (1,) * (x.ndim - 1)
            noisy = (x[lo:hi].unsqueeze(1) + sigma[lo:hi].view(view) * eps).flatten(0, 1)
            del eps
            example = torch.arange(lo, hi, device=x.device).repeat_interleave(n_samples)
            if fast:  # the wrapped method's core on the block's noisy rows
                samples, inner = _fast_samples(run, name, noisy, example, kwargs)
            else:
                samples, inner = _explain_noisy(run, fn, model, noisy, example, target, kwargs)
            samples = samples.reshape(hi - lo, n_samples, *samples.shape[1:])
            parts.append(_aggregate(samples, variant))
            errors.append(samples.std(dim=1) / n_samples**0.5 if n_samples > 1 else None)
        attributions = parts[0] if len(parts) == 1 else torch.cat(parts)
        run.result(
            attributions,
            params={
                "base": name,
                "variant": variant,
                "n_samples": n_samples,
                "noise": noise,
                "explain_kwargs": inner,
            },
            extras={
                "standard_error": torch.cat(errors)  # type: ignore[arg-type]
                if n_samples > 1
                else torch.zeros_like(attributions)
            },
        )
    return run.explanation


def _examples_per_block(run: Run, n: int, n_samples: int) -> int:
    """Examples whose noisy copies exist at once: as many as ``batch_size`` rows hold (at
    least one example: its copies are drawn together)."""
    x = run.inputs
    rows = run.batch_size
    if rows is None:
        rows = grad_batch_size(None, x[0].numel(), total=n * n_samples, like=x)
    return max(1, min(n, rows // n_samples))


def _fast_samples(
    run: Run, name: str, noisy: torch.Tensor, example: torch.Tensor, kwargs: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Saliency or input x gradient of the noisy rows, with the gradient engine directly."""
    prep = run.prep
    grad = input_gradients(
        prep.forward, prep.target, noisy, example_index=example, batch_size=run.batch_size
    )
    if name == "input_x_gradient":
        return noisy * grad, dict(kwargs)
    return (grad.abs() if kwargs.get("absolute", True) else grad), dict(kwargs)


def _wrapped(base: Any) -> tuple[str, Callable[..., Explanation]]:
    """The name and function of the method ``base`` names (or is)."""
    if isinstance(base, str):
        info = get_method(base, argument="base")
        if info.kind != "gradient" or info.name == "smoothgrad":
            raise ValueError(
                f"`base` must be a gradient method other than smoothgrad; got {base!r} "
                f"(kind {info.kind!r})."
            )
        return info.name, info.fn
    if callable(base):
        return getattr(base, "__name__", "callable"), base
    raise TypeError(f"`base` must be a method name or a function; got {base!r}.")


def _explain_noisy(
    run: Run,
    fn: Callable[..., Explanation],
    model: Any,
    noisy: torch.Tensor,
    example: torch.Tensor,
    target: Any,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Explain the noisy copies with the wrapped method ``fn``; per-example arguments (the
    target, batch-aligned model arguments) follow the copies."""
    prep = run.prep
    repeated_target: Any = target
    index = prep.target.index
    if prep.target.kind == "index" and index is not None:
        repeated_target = index.index_select(0, example.to(index.device))
    forward = prep.model_forward
    inner = fn(
        model,
        noisy,
        target=repeated_target,
        batch_size=run.batch_size,
        forward_args=[forward.align(a, example) for a in forward.args] or None,
        forward_kwargs={k: forward.align(v, example) for k, v in forward.kwargs.items()},
        output=forward.output,
        eval_mode=False,
        **kwargs,
    )
    return inner.attributions, dict(inner.params)
