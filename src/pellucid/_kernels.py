"""Faster equivalent CPU kernels, used only while pellucid itself runs the user's model.

PyTorch's CPU max pooling is several times slower on contiguous (NCHW) tensors than on
channels-last ones whenever there are more than a few channels: it vectorizes along the
width, which is short in small images. Measured here (one thread, 2x2 pooling, inputs of
2M values, both format conversions included): 2.2-3.9x faster from 8 channels up, for 8x8
to 112x112 images; slower with 3 channels. Forward and backward give identical values,
indices and gradients (the same window scan picks the same maximum on ties). On the
digits SmallCNN, max pooling is a third of a forward pass; occlusion of 16 digits runs
1.2x faster with it.

:func:`fast_kernels` feeds the model's ``nn.MaxPool2d`` modules channels-last copies of their
inputs while pellucid evaluates it without a graph (perturbations, metrics: most of the
model evaluations), through hooks on those modules only, removed on exit (a
torch-function mode would put every operation of the model through Python); outputs come
back contiguous. Models without max pooling pay nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["channels_last_pool", "fast_kernels", "fast_pools"]

#: Channel count from which channels-last max pooling wins on the CPU (see above).
MIN_CHANNELS = 8


def _worth_it(x: Any) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and x.ndim == 4
        and x.device.type == "cpu"
        and x.is_floating_point()
        and x.shape[1] >= MIN_CHANNELS
        and not x.is_contiguous(memory_format=torch.channels_last)
    )


def _contiguous(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.contiguous()
    if isinstance(value, tuple):
        return tuple(_contiguous(v) for v in value)
    return value


def channels_last_pool(func: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """``func(x, *args, **kwargs)`` for a 2-d max-pooling ``func``, computed on a
    channels-last copy of ``x`` where that is faster; the results come back contiguous."""
    if not _worth_it(x):
        return func(x, *args, **kwargs)
    return _contiguous(func(x.contiguous(memory_format=torch.channels_last), *args, **kwargs))


def _to_channels_last(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    # (grad may be switched on inside the block, e.g. from an explained layer on)
    if args and _worth_it(args[0]) and not (torch.is_grad_enabled() and args[0].requires_grad):
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def _to_contiguous(module: nn.Module, args: Any, out: Any) -> Any:
    return _contiguous(out)


@contextmanager
def fast_kernels(pools: Sequence[nn.Module]) -> Iterator[None]:
    """Within the block, the max-pooling modules ``pools`` (from :func:`fast_pools`) run on
    channels-last copies of CPU inputs with many channels (identical results, faster).
    Their hooks are removed on exit, also when the block raises. Only without a graph: with
    one, the conversions' backward copies cost what the faster forward saves."""
    if not pools or torch.is_grad_enabled():
        yield
        return
    handles = []
    try:
        for module in pools:
            # after the user's pre-hooks (they see the input as given), and before the
            # user's forward hooks (they see the output contiguous, as without us)
            handles.append(module.register_forward_pre_hook(_to_channels_last))
            handles.append(module.register_forward_hook(_to_contiguous, prepend=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def fast_pools(model: Any) -> tuple[nn.Module, ...]:
    """The 2-d max-pooling modules of ``model`` (an ``nn.Module``) that
    :func:`fast_kernels` may speed up; none for other callables."""
    if not isinstance(model, nn.Module):
        return ()
    return tuple(m for m in model.modules() if isinstance(m, nn.MaxPool2d))
