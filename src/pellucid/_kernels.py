"""The memory-layout policy of the evaluator: channels-last only where it measurably wins.

PyTorch's CPU convolutions and max pooling run on channels-last (NHWC) tensors with other
kernels than on contiguous (NCHW) ones, and which is faster depends on the model and the
image size: a small residual network on 3x32x32 images runs forward and backward about a
quarter faster channels-last, max pooling with many channels several times faster, while
torchvision's resnet18 on 64x64 images runs about twice as slow. So the choice is made per
evaluation, by measuring on the model at hand, never by a fixed rule and never remembered
across calls:

* ``"off"``: the model runs on the inputs as given (the default for single passes, and for
  every rule-based method, which decompose the model's own operations);
* ``"channels_last"``: images run on a channels-last copy, outputs and gradients come back
  in the usual layout;
* ``"auto"``: off until the evaluator is told that enough rows are coming
  (:meth:`Layout.expect`); then, at the first eligible call (CPU float32 images of a
  network with 2-d convolutions), a few rows of that call run up to three times in each
  layout (twice when one is clearly slower, :data:`EARLY_GAP`), and the faster one
  (channels-last only if it wins by :data:`MIN_GAIN`) is used for the rest of this
  evaluation.

The trial runs are invisible to the user's hooks: the model's module hooks are set aside
while they run (and put back, also when a trial raises), and a model that refuses the
channels-last layout (a ``.view`` of an activation raises) simply stays on the given
layout. Nothing of the model is touched otherwise: no module's ``forward`` is replaced and
no per-model state is kept.

:func:`channels_last_pool` is the op-level form used by rule engines, which run their own
max-pooling rule: the same values and indices, computed on a channels-last copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["KERNEL_MODES", "Layout", "channels_last_pool", "hooks_set_aside"]

KERNEL_MODES = ("auto", "off", "channels_last")
#: Channel count from which channels-last max pooling wins on the CPU.
MIN_CHANNELS = 8
#: Rows of the first call measured in each layout (up to three times each, best time kept).
TRIAL_ROWS = 4
#: ``"auto"`` measures only when at least this many rows are expected: the trial (six
#: passes of ``TRIAL_ROWS``) then costs at most a fifth of the work, and methods with a
#: single pass over the examples (saliency, Grad-CAM) never pay for a trial. SmoothGrad's
#: 320 rows on TinyResNet (3x32x32) are worth it: channels-last wins there.
MIN_EXPECTED_ROWS = 32 * TRIAL_ROWS
#: Channels-last is chosen only when it is at least this much faster (noise margin).
MIN_GAIN = 1.05
#: When after the second round one layout's best time is this many times the other's, the
#: trial ends there (the first round also sets the kernels up for the trial's batch size):
#: torchvision's resnet18 at 64x64 runs about twice as slow channels-last.
EARLY_GAP = 1.5

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def _is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` has channels-last strides, which are what PyTorch's kernels look at.

    ``is_contiguous(memory_format=torch.channels_last)`` is not enough: a one-channel image
    (N, 1, H, W) laid out as usual passes it, and a convolution still runs it, and every
    layer after it, in the usual layout."""
    return x.is_contiguous(memory_format=torch.channels_last) and (
        x.shape[1] != 1 or x.stride(1) == 1
    )


def _channels_last_copy(x: torch.Tensor) -> torch.Tensor:
    """``x`` with channels-last strides (a copy; also for one-channel images)."""
    if x.shape[1] == 1:
        return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
    return x.contiguous(memory_format=torch.channels_last)


def _worth_it(x: Any) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and x.ndim == 4
        and x.device.type == "cpu"
        and x.is_floating_point()
        and x.shape[1] >= MIN_CHANNELS
        and not _is_channels_last(x)
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
    out = func(x.contiguous(memory_format=torch.channels_last), *args, **kwargs)
    if isinstance(out, tuple) and len(out) == 2:  # values and indices
        return out[0].contiguous(), out[1].contiguous()
    return _contiguous(out)


@contextmanager
def hooks_set_aside(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s module hooks are set aside (restored on exit), so that
    runs made only to measure are not seen by the user's hooks."""
    saved = []
    try:
        for module in model.modules():
            for attr in _HOOK_DICTS:
                current = module.__dict__.get(attr)
                if current:
                    saved.append((module, attr, current))
                    setattr(module, attr, type(current)())
        yield
    finally:
        for module, attr, current in saved:
            setattr(module, attr, current)


class _ChannelsLast(torch.autograd.Function):
    """A channels-last copy whose gradient comes back contiguous, the layout of the input."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return _channels_last_copy(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def _to_channels_last(x: torch.Tensor) -> torch.Tensor:
    if x.requires_grad and torch.is_grad_enabled():
        return _ChannelsLast.apply(x)  # type: ignore[no-any-return]
    return _channels_last_copy(x)


class Layout:
    """One evaluation's memory-layout choice for ``model`` (see the module docstring).

    Args:
        model: the callable the evaluator runs; only an ``nn.Module`` with ``nn.Conv2d``
            layers is ever run channels-last.
        mode: ``"auto"``, ``"off"`` or ``"channels_last"``.
    """

    def __init__(self, model: Any, mode: str = "auto") -> None:
        if mode not in KERNEL_MODES:
            raise ValueError(f"`kernels` must be one of {KERNEL_MODES}; got {mode!r}.")
        self.model, self.mode = model, mode
        self.channels_last: bool | None = None if mode == "auto" else mode == "channels_last"
        if mode == "channels_last" and not self._has_convs():
            self.channels_last = False
        self.expected = 0
        self.trial: dict[str, float] = {}  # best trial seconds per layout, once measured

    def expect(self, rows: int) -> None:
        """Announce ``rows`` rows to come (``"auto"`` measures only for large workloads)."""
        self.expected = max(self.expected, int(rows))

    def _has_convs(self) -> bool:
        """Whether the model has 2-d convolutions (only such a network runs channels-last);
        asked only when a choice is to be made, not on every evaluator's construction."""
        model = self.model
        return isinstance(model, nn.Module) and any(
            isinstance(m, nn.Conv2d) for m in model.modules()
        )

    @staticmethod
    def eligible(x: Any) -> bool:
        """CPU float32 images (N, C, H, W) not already with channels-last strides."""
        return (
            isinstance(x, torch.Tensor)
            and x.ndim == 4
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and not _is_channels_last(x)
        )

    def call(
        self, run: Callable[[torch.Tensor, int | None], torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """``run(x, None)`` in the chosen layout; the output comes back contiguous.
        ``run(rows, k)`` calls the model on rows standing for the first ``k`` rows of ``x``
        (with their aligned arguments) and returns the explained output tensor."""
        if self.channels_last is False or not self.eligible(x):
            return run(x, None)
        if self.channels_last is None:
            if self.expected < MIN_EXPECTED_ROWS or x.shape[0] < 2:
                return run(x, None)
            self.channels_last = self._has_convs() and self._measure(run, x)
        if not self.channels_last:
            return run(x, None)
        # an image-shaped output may come back channels-last: give it the usual layout
        return run(_to_channels_last(x), None).contiguous()

    def _measure(
        self, run: Callable[[torch.Tensor, int | None], torch.Tensor], x: torch.Tensor
    ) -> bool:
        """Time ``TRIAL_ROWS`` rows in both layouts (up to three times each, interleaved) with hooks set
        aside; True when channels-last wins by ``MIN_GAIN``. Times are the process's CPU
        time, which other processes on a shared machine do not inflate."""
        k = min(TRIAL_ROWS, x.shape[0])
        grad = torch.is_grad_enabled() and x.requires_grad
        rows = x[:k].detach().requires_grad_(grad)
        best = {"given": float("inf"), "channels_last": float("inf")}

        def timed(layout: str, n: int) -> float:
            part = rows[:n]
            moved = part if layout == "given" else _to_channels_last(part)
            start = time.process_time()
            out = run(moved, n)
            if grad and out.requires_grad:
                torch.autograd.grad(out.sum(), part, allow_unused=True)
            return time.process_time() - start

        with hooks_set_aside(self.model):
            try:
                for round_ in range(3):
                    for layout in best:
                        best[layout] = min(best[layout], timed(layout, k))
                    slow, fast = max(best.values()), min(best.values())
                    if round_ and slow > EARLY_GAP * fast:  # a clear winner: no third round
                        break
            except RuntimeError:  # the model refuses channels-last (or fails): as given
                return False
        self.trial = best
        return best["channels_last"] * MIN_GAIN < best["given"]
