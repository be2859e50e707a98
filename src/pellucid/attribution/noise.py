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
from pellucid._random import example_generators, per_example
from pellucid._registry import get_method, register
from pellucid._state import model_guard
from pellucid._targets import Target
from pellucid._validation import check_choice, check_float, check_generator, check_int
from pellucid.attribution._common import prepare
from pellucid.attribution.gradients import input_gradients
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
        forward_args: extra positional model arguments; forward_kwargs: keyword ones.
        output: which part of a tuple/dict return value to explain.
        eval_mode: True explains in eval mode for this call; None warns in training mode.

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
    if isinstance(base, str):
        info = get_method(base, argument="base")
        if info.kind != "gradient" or info.name == "smoothgrad":
            raise ValueError(
                f"`base` must be a gradient method other than smoothgrad; got {base!r} "
                f"(kind {info.kind!r})."
            )
        name, fn = info.name, info.fn
    elif callable(base):
        name, fn = getattr(base, "__name__", "callable"), base
    else:
        raise TypeError(f"`base` must be a method name or a function; got {base!r}.")
    fast = name in _FAST and fn is get_method(name).fn and set(kwargs) <= {"absolute"}
    check_generator("generator", generator)
    with model_guard(model, eval_mode=eval_mode, method="smoothgrad"):
        prep = prepare(
            model,
            inputs,
            target=target,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
            output=output,
        )
        x = prep.inputs
        n = x.shape[0]
        flat = x.reshape(n, -1)
        sigma = (flat.max(dim=1).values - flat.min(dim=1).values) * noise
        # one stream per example: the noise of a row does not depend on its batch or rank
        eps = per_example(
            example_generators(generator, n, device=x.device),
            lambda g: torch.randn(
                (n_samples, *x.shape[1:]), generator=g, dtype=x.dtype, device=x.device
            ),
            device=x.device,
        )
        view = (n, 1) + (1,) * (x.ndim - 1)
        noisy = (x.unsqueeze(1) + sigma.view(view) * eps).reshape(n * n_samples, *x.shape[1:])
        example = torch.arange(n, device=x.device).repeat_interleave(n_samples)
        if fast:
            grad = input_gradients(
                prep.forward, prep.target, noisy, example_index=example, batch_size=batch_size
            )
            if name == "input_x_gradient":
                samples = noisy * grad
            else:
                samples = grad.abs() if kwargs.get("absolute", True) else grad
            inner: dict[str, Any] = dict(kwargs)
        else:
            repeated_target: Any = target
            index = prep.target.index
            if prep.target.kind == "index" and index is not None:
                repeated_target = index.index_select(0, example.to(index.device))
            align = prep.forward._align
            inner_expl = fn(
                model,
                noisy,
                target=repeated_target,
                batch_size=batch_size,
                forward_args=[align(a, example) for a in prep.forward.args] or None,
                forward_kwargs={k: align(v, example) for k, v in prep.forward.kwargs.items()},
                output=output,
                eval_mode=False,
                **kwargs,
            )
            samples = inner_expl.attributions
            inner = dict(inner_expl.params)
        samples = samples.reshape(n, n_samples, *samples.shape[1:])
        attributions = _aggregate(samples, variant)
    return Explanation(
        attributions=attributions,
        inputs=x,
        method="smoothgrad",
        target=prep.target.describe(),
        params={
            "base": name,
            "variant": variant,
            "n_samples": n_samples,
            "noise": noise,
            "explain_kwargs": inner,
            "batch_size": batch_size,
        },
        extras={
            "standard_error": samples.std(dim=1) / n_samples**0.5
            if n_samples > 1
            else torch.zeros_like(attributions)
        },
    )
