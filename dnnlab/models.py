"""Model architectures (the `model` config group): a plain MLP and a small CNN.

Both are `nn.Sequential`s of named blocks (`hidden1`, `conv1`, …, `output`) so that layer names are
stable across runs: diagnostics key on them and pretrained weights load by them.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

from torch import nn

Factory = Callable[..., nn.Module]


def _block(
    layer: nn.Module,
    width: int,
    activation: Factory,
    norm: Factory | None,
    position: str,
    dropout: Factory | None,
    spatial: bool = False,
) -> nn.Sequential:
    """One hidden block: layer → [norm] → activation → [norm] → [dropout]."""
    parts: list[tuple[str, nn.Module]] = [("linear" if not spatial else "conv", layer)]
    if norm is not None and position == "before":
        parts.append(("norm", norm(width, spatial=spatial)))
    parts.append(("act", activation()))
    if norm is not None and position == "after":
        parts.append(("norm", norm(width, spatial=spatial)))
    if dropout is not None and not spatial:
        parts.append(("drop", dropout()))
    return nn.Sequential(OrderedDict(parts))


def mlp(
    input_shape: tuple[int, ...],
    n_classes: int,
    activation: Factory,
    depth: int = 3,
    width: int = 100,
    norm: Factory | None = None,
    norm_position: str = "none",
    dropout: Factory | None = None,
) -> nn.Sequential:
    """`depth` hidden layers of `width` units; with norm before the activation the layer has no bias."""
    bias = not (norm is not None and norm_position == "before")
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    fan_in = math.prod(input_shape)
    for i in range(1, depth + 1):
        linear = nn.Linear(fan_in, width, bias=bias)
        layers.append((f"hidden{i}", _block(linear, width, activation, norm, norm_position, dropout)))
        fan_in = width
    layers.append(("output", nn.Linear(fan_in, n_classes)))
    return nn.Sequential(OrderedDict(layers))


def cnn(
    input_shape: tuple[int, ...],
    n_classes: int,
    activation: Factory,
    depth: int = 2,
    width: int = 32,
    dense: int = 128,
    norm: Factory | None = None,
    norm_position: str = "none",
    dropout: Factory | None = None,
) -> nn.Sequential:
    """`depth` blocks of 3×3 conv + 2×2 max-pool (channels width·2^i), a dense layer, the output."""
    if len(input_shape) != 3:
        raise ValueError(
            f"model=cnn needs image data shaped (channels, height, width); this data set's samples "
            f"have shape {tuple(input_shape)}. Use model=mlp, or data=digits|mnist|fashion_mnist|cifar10."
        )
    bias = not (norm is not None and norm_position == "before")
    channels, height, width_px = input_shape
    layers: list[tuple[str, nn.Module]] = []
    for i in range(1, depth + 1):
        out = width * 2 ** (i - 1)
        conv = nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=bias)
        block = _block(conv, out, activation, norm, norm_position, None, spatial=True)
        if min(height, width_px) >= 2:
            block.add_module("pool", nn.MaxPool2d(2))
            height, width_px = height // 2, width_px // 2
        layers.append((f"conv{i}", block))
        channels = out
    layers.append(("flatten", nn.Flatten()))
    linear = nn.Linear(channels * height * width_px, dense, bias=bias)
    layers.append(("hidden1", _block(linear, dense, activation, norm, norm_position, dropout)))
    layers.append(("output", nn.Linear(dense, n_classes)))
    return nn.Sequential(OrderedDict(layers))
