"""Channel spaces and layouts: the bookkeeping behind the channel dependency graph.

A *space* is a set of channels created by one layer; a tensor's channel dimension is a
*layout*, a tuple of :class:`Segment` (slices of spaces, repeated after a flatten). The
:class:`ChannelGraph` joins spaces that must be pruned together (union-find) and records
which are frozen and why. The op tables list what keeps a layout unchanged.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BINARY",
    "BINARY_METHODS",
    "PASS_FUNCTIONS",
    "PASS_METHODS",
    "PASS_MODULES",
    "POOL_FUNCTIONS",
    "POOL_MODULES",
    "REDUCE_FUNCTIONS",
    "REDUCE_METHODS",
    "ChannelGraph",
    "Member",
    "Segment",
    "Value",
]


@dataclass(frozen=True)
class Segment:
    """``length`` channels of ``space``, each repeated ``repeat`` times (after a flatten)."""

    space: int
    length: int
    repeat: int = 1


@dataclass(frozen=True)
class Value:
    """A traced tensor: its channel ``layout`` along dimension ``cdim``.

    ``free`` marks a tensor whose channel dimension is not decided yet (the model's input,
    a tensor attribute): it is frozen and takes whatever dimension it meets. ``param`` names
    the parameter such a tensor is (possibly expanded), so that it can be sliced along the
    channels it meets (positional embeddings, class tokens, layer scales).
    """

    layout: tuple[Segment, ...]
    cdim: int
    shape: tuple[int, ...]
    free: bool = False
    param: str | None = None


@dataclass
class Member:
    """A module slice tied to channel spaces: its output (``role="out"``: producers,
    ``"elementwise"``: BN/LN/GN/depthwise conv/tied attention) or input (``role="in"``:
    consumers); ``role="param"``: a parameter sliced along ``dim``; ``role="heads"``: the
    attention module whose head count the layout's channels are."""

    module: str
    role: str
    layout: tuple[Segment, ...]
    node: str
    dim: int = 0


@dataclass
class ChannelGraph:
    """Spaces, their union-find parents, members and the reasons spaces are frozen."""

    lengths: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    frozen: dict[int, str] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    producers: dict[int, str] = field(default_factory=dict)
    group_divisors: dict[int, list[int]] = field(default_factory=dict)
    needs_frozen: list[tuple[int, str]] = field(default_factory=list)
    attrs: dict[str, dict[str, int]] = field(default_factory=dict)
    refined: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)

    def expand(self, layout: tuple[Segment, ...]) -> tuple[Segment, ...]:
        """``layout`` with every refined or coarsened space replaced by its parts."""
        if not self.refined or not any(s.space in self.refined for s in layout):
            return layout
        out: list[Segment] = []
        for seg in layout:
            if seg.space in self.refined:
                parts = tuple(
                    Segment(sub, n, seg.repeat * factor)
                    for sub, n, factor in self.refined[seg.space]
                )
                out += self.expand(parts)
            else:
                out.append(seg)
        return tuple(out)

    def refine(self, space: int, cuts: list[int]) -> bool:
        """Cut ``space`` (and every space joined to it) at channel offsets ``cuts`` into
        parts that are pruned independently (a split or chunk along the channels); False
        when its channels are kept in equal numbers per chunk (heads, groups)."""
        root = self.find(space)
        bounds = [0, *sorted(set(cuts)), self.lengths[root]]
        sizes = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
        if any(d > 1 for s in self._live(root) for d in self.group_divisors.get(s, [])):
            return False
        return self._replace(root, [(n, 1) for n in sizes])

    def coarsen(self, space: int, factor: int) -> bool:
        """Tie every ``factor`` consecutive channels of ``space`` (and of every space joined
        to it) into one, as a flatten repeats them (a shuffle that interleaves them)."""
        root = self.find(space)
        length = self.lengths[root]
        divisors = [d for s in self._live(root) for d in self.group_divisors.get(s, [])]
        if length % factor or any((length // d) % factor for d in divisors):
            return False
        return self._replace(root, [(length // factor, factor)], divisors)

    def _live(self, root: int) -> list[int]:
        return [
            s for s in range(len(self.parent)) if s not in self.refined and self.find(s) == root
        ]

    def _replace(
        self, root: int, parts: list[tuple[int, int]], divisors: list[int] | None = None
    ) -> bool:
        """Every live space of ``root``'s group replaced by new spaces ``(length, factor)``."""
        first: list[int] = []
        for s in self._live(root):
            subs = [self.new_space(n, frozen=self.frozen.get(s)) for n, _f in parts]
            for i, sub in enumerate(subs):
                if s in self.producers:
                    self.producers[sub] = self.producers[s]
                if divisors:
                    self.group_divisors[sub] = list(divisors)
                if first:
                    self.union(first[i], sub, "split")
            first = first or subs
            self.refined[s] = [(sub, n, f) for sub, (n, f) in zip(subs, parts, strict=True)]
            for table in (self.frozen, self.producers, self.group_divisors):
                table.pop(s, None)  # type: ignore[attr-defined]
        for member in self.members:
            member.layout = self.expand(member.layout)
        self.needs_frozen = [
            (seg.space, message)
            for space_, message in self.needs_frozen
            for seg in self.expand((Segment(space_, self.lengths[space_]),))
        ]
        return True

    def divide(self, layout: tuple[Segment, ...], divisor: int) -> None:
        """Channels of ``layout`` are kept in equal numbers per ``divisor`` chunk."""
        for seg in self.expand(layout):
            self.group_divisors.setdefault(seg.space, []).append(divisor)

    def new_space(self, length: int, frozen: str | None = None) -> int:
        self.lengths.append(length)
        self.parent.append(len(self.parent))
        space = len(self.lengths) - 1
        if frozen:
            self.frozen[space] = frozen
        return space

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def union(self, a: int, b: int, node: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.lengths[ra] != self.lengths[rb]:
            raise ValueError(
                f"Cannot prune through node {node!r}: it combines {self.lengths[ra]} and "
                f"{self.lengths[rb]} channels."
            )
        self.parent[rb] = ra

    def freeze(self, layout: tuple[Segment, ...], reason: str) -> None:
        for seg in self.expand(layout):
            self.frozen.setdefault(seg.space, reason)

    def require_frozen(self, layout: tuple[Segment, ...], message: str) -> None:
        self.needs_frozen += [(seg.space, message) for seg in self.expand(layout)]

    def frozen_reason(self, root: int) -> str | None:
        for space, reason in self.frozen.items():
            if self.find(space) == root:
                return reason
        return None


PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.ELU,
    nn.SELU,
    nn.Softplus,
    nn.Mish,
    nn.Identity,
    nn.Hardtanh,
    nn.modules.dropout._DropoutNd,
)
POOL_MODULES = (
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.Upsample,
)
PASS_FUNCTIONS = {
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.abs,
    torch.neg,
    torch.exp,
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.leaky_relu,
    F.hardswish,
    F.hardsigmoid,
    F.elu,
    F.selu,
    F.softplus,
    F.mish,
    F.dropout,
    F.hardtanh,
    torch.sigmoid,
    operator.neg,
    torch.clamp,
    torch.square,
}
PASS_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "tanh",
    "abs",
    "neg",
    "exp",
    "contiguous",
    "clone",
    "float",
    "double",
    "half",
    "to",
    "detach",
    "clamp",
    "clamp_min",
    "square",
    "type_as",
}
POOL_FUNCTIONS = {
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.interpolate,
}
BINARY = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.iadd,
    operator.imul,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.maximum,
    torch.minimum,
}
BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "mul_", "maximum", "minimum"}
REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
