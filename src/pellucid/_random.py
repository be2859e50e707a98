"""Per-example random streams: a stochastic method's result for one example does not depend on
the batch it came in, the ``batch_size`` or the number of ranks that shared the work.

The user's ``generator`` gives exactly one draw per call: a base key. Example ``i`` of the
whole dataset then draws everything it needs from its own generator, seeded by a mix of the
base key and ``i``. ``explain_sharded`` tells the methods where a rank's shard starts
(:func:`example_offset`), so rank ``r`` seeds its rows with their global indices and the
merged result equals a single process's bit for bit.

Example:
    >>> import torch
    >>> draw = lambda g: torch.randn(3, generator=g)
    >>> whole = per_example(example_generators(torch.Generator().manual_seed(0), 4), draw)
    >>> with example_offset(2):
    ...     tail = per_example(example_generators(torch.Generator().manual_seed(0), 2), draw)
    >>> torch.equal(whole[2:], tail)
    True
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

__all__ = [
    "current_offset",
    "example_generators",
    "example_offset",
    "keyed_generator",
    "per_example",
    "stream_key",
]

_MASK = (1 << 64) - 1
_OFFSET: contextvars.ContextVar[int] = contextvars.ContextVar("pellucid_example_offset", default=0)


@contextmanager
def example_offset(offset: int) -> Iterator[None]:
    """Within the block, the first example of a call is example ``offset`` of the dataset."""
    token = _OFFSET.set(int(offset))
    try:
        yield
    finally:
        _OFFSET.reset(token)


def _mix(value: int) -> int:
    """SplitMix64's finalizer: nearby integers give unrelated 64-bit seeds."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def example_generators(
    generator: torch.Generator | None, n: int, *, device: torch.device | str | None = None
) -> list[torch.Generator]:
    """One generator per example, seeded from one draw of ``generator`` and the example's
    index in the whole dataset (the current :func:`example_offset` plus its row).

    ``generator=None`` draws the base key from torch's global random state.
    """
    base = stream_key(generator)
    start = current_offset()
    target = torch.device(device) if device is not None else torch.device("cpu")
    return [keyed_generator(base, start + i, target) for i in range(n)]


def stream_key(generator: torch.Generator | None) -> int:
    """One draw of ``generator`` (torch's global random state for None): the base key of a
    call's random streams."""
    source = "cpu" if generator is None else generator.device
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=source))


def keyed_generator(key: int, index: int, device: torch.device | str) -> torch.Generator:
    """The generator of stream ``index`` under base ``key``, on ``device`` (the same draws
    whichever chunk, batch or rank asks for that stream)."""
    return torch.Generator(device=device).manual_seed(_mix(key + index))


def current_offset() -> int:
    """The dataset index of this call's first example (see :func:`example_offset`)."""
    return _OFFSET.get()


def per_example(
    generators: list[torch.Generator],
    draw: Callable[[torch.Generator], torch.Tensor],
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``draw(g)`` for every example's generator, stacked along a new first dimension
    (``device``: where the generators live, for an empty batch)."""
    if not generators:
        return draw(torch.Generator(device=device or "cpu")).unsqueeze(0)[:0]
    return torch.stack([draw(g) for g in generators])
