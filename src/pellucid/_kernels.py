"""Faster equivalent CPU kernels, used only while pellucid itself runs the user's model.

PyTorch's CPU max pooling is several times slower on contiguous (NCHW) tensors than on
channels-last ones whenever there are more than a few channels: it vectorizes along the
width, which is short in small images. Measured here (one thread, 2x2 pooling, inputs of
2M values, both format conversions included): 2.2-3.9x faster from 8 channels up, for 8x8
to 112x112 images; slower with 3 channels. Values and indices are identical (the same
window scan picks the same maximum on ties). On the digits SmallCNN max pooling is a third
of a forward pass.

:func:`fast_kernels` runs the model's ``nn.MaxPool2d`` modules that way for the duration of
one call: their ``forward`` is shadowed by an instance attribute, removed again on exit
(also when the call raises), so the model is left exactly as it was and nothing else of it
is touched (a torch-function mode would put every operation of the model through Python).
Without a graph the pooling simply runs on a channels-last copy; with one, a small autograd
function keeps the fast forward and the (already fast) contiguous backward, with the same
gradients. Models without max pooling pay nothing; rule-based methods, which decompose the
pooling themselves, do not use it.

:func:`call_channels_last` runs a whole convolutional network on a channels-last copy of
images from 16x16 pixels (float32, CPU): the convolutions then skip their layout reorders
(TinyResNet on 3x32x32: 1.27x faster forward and backward). Values agree to float rounding;
gradients and outputs come back in the usual layout; a model that refuses the layout (a
``.view`` of an activation) runs as given, and is remembered.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

__all__ = [
    "call_channels_last",
    "channels_last_pool",
    "fast_kernels",
    "fast_pools",
    "is_convnet",
]

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


class _MaxPool2d(torch.autograd.Function):
    """Max pooling with the channels-last forward and the contiguous backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, params: tuple[Any, ...]) -> torch.Tensor:
        kernel, stride, padding, dilation, ceil_mode = params
        y, indices = channels_last_pool(
            F.max_pool2d_with_indices, x, kernel, stride, padding, dilation, ceil_mode
        )
        ctx.save_for_backward(x, indices)
        ctx.params = params
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, indices = ctx.saved_tensors
        kernel, stride, padding, dilation, ceil_mode = ctx.params
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x, kernel, stride, padding, dilation, ceil_mode, indices
        )
        return grad_x, None


def _fast_forward(module: nn.MaxPool2d) -> Callable[[torch.Tensor], Any]:
    kernel = list(_pair(module.kernel_size))
    stride = list(_pair(module.stride)) if module.stride else kernel
    params = (
        kernel,
        stride,
        list(_pair(module.padding)),
        list(_pair(module.dilation)),
        bool(module.ceil_mode),
    )
    original = type(module).forward

    def forward(x: torch.Tensor) -> Any:
        if not _worth_it(x):
            return original(module, x)
        if torch.is_grad_enabled() and x.requires_grad:
            if module.return_indices:
                return original(module, x)
            return _MaxPool2d.apply(x, params)
        func = F.max_pool2d_with_indices if module.return_indices else F.max_pool2d
        return channels_last_pool(func, x, *params)

    return forward


@contextmanager
def fast_kernels(pools: Sequence[nn.MaxPool2d]) -> Iterator[None]:
    """Within the block, the max-pooling modules ``pools`` (from :func:`fast_pools`) run on
    channels-last copies of CPU inputs with many channels (identical results, faster)."""
    shadowed = []
    try:
        for module in pools:
            if "forward" not in module.__dict__:  # a forward set on the instance: leave it
                module.forward = _fast_forward(module)  # type: ignore[method-assign,assignment]
                shadowed.append(module)
        yield
    finally:
        for module in shadowed:
            del module.forward


def fast_pools(model: Any) -> tuple[nn.MaxPool2d, ...]:
    """The 2-d max-pooling modules of ``model`` (an ``nn.Module``) that
    :func:`fast_kernels` may speed up; none for other callables."""
    if not isinstance(model, nn.Module):
        return ()
    return tuple(m for m in model.modules() if type(m) is nn.MaxPool2d)  # type: ignore[misc]


# ------------------------------------------------------------------ channels-last networks
#: Images from this many pixels run channels-last through a convolutional network on the
#: CPU. Measured here (one thread, forward+backward, the same rows): TinyResNet 1.27x
#: faster on 3x32x32, 1.09x on 3x16x16; 0.98-1.02x on 8x8 and on the plain SmallCNN.
MIN_CHANNELS_LAST_PIXELS = 256
#: Models known to run channels-last (True) or to refuse it (False), e.g. with a ``.view``
#: of an activation; weakly keyed, so forgotten with the model.
_CHANNELS_LAST: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def is_convnet(model: Any) -> bool:
    """Whether ``model`` is an ``nn.Module`` with 2-d convolutions (channels-last may pay)."""
    return isinstance(model, nn.Module) and any(isinstance(m, nn.Conv2d) for m in model.modules())


def _wants_channels_last(model: nn.Module, x: Any) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and x.ndim == 4
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.shape[2] * x.shape[3] >= MIN_CHANNELS_LAST_PIXELS
        and not x.is_contiguous(memory_format=torch.channels_last)
        and _CHANNELS_LAST.get(model, True)
    )


class _ChannelsLast(torch.autograd.Function):
    """A channels-last copy whose gradient comes back contiguous, the layout of the input."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def call_channels_last(
    model: nn.Module, x: torch.Tensor, args: Sequence[Any], kwargs: dict[str, Any]
) -> Any:
    """``model(x, *args, **kwargs)``, on a channels-last copy of ``x`` where that is faster.

    The copy is differentiable, so gradients reach ``x`` in its own layout; the values agree
    with the contiguous call to float rounding (the convolutions use other kernels). A
    model that refuses channels-last input (a ``RuntimeError``, typically from ``.view`` of
    an activation) is run again as given, and remembered, so it is tried only once (its
    forward hooks may see that first, failed call); an error of the model's own raises from
    that second call.
    """
    if not _wants_channels_last(model, x):
        return model(x, *args, **kwargs)
    if x.requires_grad and torch.is_grad_enabled():
        moved = _ChannelsLast.apply(x)
    else:
        moved = x.contiguous(memory_format=torch.channels_last)
    try:
        out = model(moved, *args, **kwargs)
    except RuntimeError:
        out = model(x, *args, **kwargs)  # a genuine error of the model raises again here
        _CHANNELS_LAST[model] = False
        return out
    _CHANNELS_LAST[model] = True
    return out
