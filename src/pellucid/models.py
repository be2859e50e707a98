"""Small reference architectures used by the study, the docs and the tests.

Each trains on two CPU cores in seconds. ``build_model(name, ..., seed=)`` constructs one
deterministically.

Example:
    >>> import torch
    >>> net = build_model("SmallCNN", in_channels=1, n_classes=10, seed=0)
    >>> net(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from pellucid._validation import check_choice, check_float, check_int, did_you_mean
from pellucid.sources.sklearn import from_sklearn

__all__ = [
    "from_sklearn",
    "MLP",
    "MODELS",
    "DeepPlainNet",
    "SequenceRNN",
    "SmallCNN",
    "TinyResNet",
    "TinyTransformer",
    "build_model",
]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}


def _activation(name: str) -> nn.Module:
    return _ACTIVATIONS[check_choice("activation", name, tuple(_ACTIVATIONS))]()


class MLP(nn.Module):
    """A multi-layer perceptron for tabular data: Linear -> activation, repeated.

    Args:
        in_features: number of input features.
        n_classes: number of outputs (1 for regression).
        hidden: widths of the hidden layers.
        activation: ``relu``, ``tanh``, ``sigmoid`` or ``gelu``.
        dropout: dropout probability after each hidden activation.

    Raises:
        TypeError: a size or `dropout` has the wrong type.
        ValueError: a size is < 1 or `dropout` is outside [0, 1).
    """

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        hidden: Sequence[int] = (64, 32),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_int("in_features", in_features, min_value=1)
        check_int("n_classes", n_classes, min_value=1)
        check_float("dropout", dropout, min_value=0.0, max_value=1.0, max_inclusive=False)
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            check_int("hidden", h, min_value=1)
            layers += [nn.Linear(width, h), _activation(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """Two conv blocks (Conv -> BatchNorm -> ReLU) and a linear head, for 8x8 images.

    Raises:
        TypeError: a channel count is not an integer.
        ValueError: a channel count is < 1.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        channels: Sequence[int] = (16, 32),
        image_size: int = 8,
    ) -> None:
        super().__init__()
        c1, c2 = (check_int("channels", c, min_value=1) for c in channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 2
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * side * side, 64), nn.ReLU(), nn.Linear(64, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Conv-BN-ReLU-Conv-BN plus the identity (or a 1x1 projection), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class TinyResNet(nn.Module):
    """A small residual network with BatchNorm: stem, ``n_blocks`` stages, global pool, head.

    Raises:
        TypeError: `width` or `n_blocks` is not an integer.
        ValueError: `width` or `n_blocks` is < 1.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        width: int = 16,
        n_blocks: int = 2,
    ) -> None:
        super().__init__()
        check_int("width", width, min_value=1)
        check_int("n_blocks", n_blocks, min_value=1)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        channels = width
        for i in range(n_blocks):
            out = width * (2 if i > 0 else 1)
            blocks.append(BasicBlock(channels, out, stride=2 if i > 0 else 1))
            channels = out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class DeepPlainNet(nn.Module):
    """A deep tanh/sigmoid MLP without normalization: the classic exploding/vanishing case.

    Args:
        in_features: input features.
        n_classes: outputs.
        depth: number of hidden layers.
        width: hidden width.
        activation: ``tanh`` (default) or ``sigmoid`` (or ``relu``).
        init_scale: weights are drawn from N(0, init_scale^2 / fan_in); above ~1.5 with tanh,
            gradients explode with depth; below ~0.5 they vanish.

    Raises:
        TypeError: `depth` or `init_scale` has the wrong type.
        ValueError: `depth` is < 1 or `init_scale` is not > 0.
    """

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        depth: int = 12,
        width: int = 64,
        activation: str = "tanh",
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check_int("depth", depth, min_value=1)
        check_float("init_scale", init_scale, min_value=0.0, min_inclusive=False)
        self.init_scale = init_scale
        layers: list[nn.Module] = []
        fan_in = in_features
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), _activation(activation)]
            fan_in = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=init_scale / math.sqrt(module.in_features))
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))


class SequenceRNN(nn.Module):
    """An LSTM or GRU classifier over sequences (N, T, F), or token ids (N, T) with ``vocab_size``.

    Raises:
        ValueError: `cell` is not ``"lstm"`` or ``"gru"``.
    """

    def __init__(
        self,
        input_size: int,
        n_classes: int,
        hidden: int = 32,
        cell: str = "lstm",
        num_layers: int = 1,
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        cell = check_choice("cell", cell, ("lstm", "gru"))
        self.embedding = nn.Embedding(vocab_size, input_size) if vocab_size else None
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(input_size, hidden, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            x = self.embedding(x)
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block built on ``nn.MultiheadAttention``."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        attended, _ = self.attn(h, h, h, need_weights=False)
        x = x + attended
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """An encoder classifier: tokens (ids with ``vocab_size``, or feature vectors) -> mean pool.

    Args:
        input_size: features per token for float sequences (N, T, F); ignored with vocab.
        n_classes: outputs.
        d_model: model width; n_heads: attention heads; n_layers: encoder blocks.
        max_len: longest sequence (learned positional embedding).
        vocab_size: when given, inputs are token ids (N, T) through ``embedding``.

    Raises:
        ValueError: `d_model` is not divisible by `n_heads`.
    """

    def __init__(
        self,
        input_size: int,
        n_classes: int,
        d_model: int = 32,
        n_heads: int = 4,
        n_layers: int = 2,
        max_len: int = 64,
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(
                f"`d_model` must be divisible by `n_heads`; got d_model={d_model}, "
                f"n_heads={n_heads}."
            )
        self.embedding: nn.Module = (
            nn.Embedding(vocab_size, d_model) if vocab_size else nn.Linear(input_size, d_model)
        )
        self.position = nn.Parameter(torch.zeros(1, max_len, d_model))
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(EncoderBlock(d_model, n_heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embedding(x)
        h = h + self.position[:, : h.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(dim=1))


MODELS: dict[str, type[nn.Module]] = {
    "MLP": MLP,
    "SmallCNN": SmallCNN,
    "TinyResNet": TinyResNet,
    "DeepPlainNet": DeepPlainNet,
    "SequenceRNN": SequenceRNN,
    "TinyTransformer": TinyTransformer,
}


def build_model(name: str, *, seed: int = 0, **kwargs: Any) -> nn.Module:
    """Construct the reference model ``name`` with weights drawn from ``seed``.

    The global RNG state is left as it was.

    Raises:
        ValueError: `name` is not a reference model (with the closest suggestion), `seed` < 0, or a
            keyword is out of range.
        TypeError: `seed` or a keyword has the wrong type.
    """
    if name not in MODELS:
        raise ValueError(
            f"`model` must be one of {', '.join(MODELS)}; got {name!r}."
            + did_you_mean(name, MODELS)
        )
    check_int("seed", seed, min_value=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](**kwargs)
