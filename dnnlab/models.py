"""Model architectures (the `model` config group): a plain MLP, a small CNN and an autoencoder.

All are `nn.Sequential`s of named blocks (`hidden1`, `conv1`, …, `output`) so that layer names are
stable across runs: diagnostics key on them and pretrained weights load by them (the autoencoder's
encoder blocks are named exactly like the MLP's hidden blocks, so an MLP can reuse them).

Their anatomy is declared here once (see "anatomy" below): the blocks, the output layer, the weight
tensors, norms, dropouts and encoder/decoder pairs. Every tool (regularizers, initializers,
diagnostics, transfer, pretraining, export, TensorBoard) asks these functions, never the structure.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Callable, Sequence, Union

import torch
from omegaconf import DictConfig
from torch import nn

from dnnlab.config.choices import NORM_POSITIONS, is_width_list, require, widths_problem
from dnnlab.errors import ConfigError

Factory = Callable[..., nn.Module]
Widths = Union[int, Sequence[int]]  # model.width: one width for every hidden layer, or one per layer

# Block names (they are checkpoint keys: old runs load by them).
HIDDEN = "hidden"  # dense hidden blocks hidden1…, also the autoencoder's encoder
DECODER = "decode"  # the autoencoder's decoder blocks decode{depth}…decode1
HEAD = "output"  # a classifier's output layer (the autoencoder ends in decode1, its reconstruction)


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


def _keeps_bias(norm: Factory | None, position: str) -> bool:
    """Whether a block's linear/conv layer has a bias: not with a norm before the activation (its shift replaces it)."""
    require("normalization.position", position, NORM_POSITIONS)
    return not (norm is not None and position == "before")


# What api.build_model gives every architecture from the data and the other groups; the rest of its
# parameters are the `model` node's keys.
BUILT_ARGS = ("input_shape", "n_classes", "activation", "norm", "norm_position", "dropout")


def layer_widths(depth: int, width: Widths) -> list[int]:
    """The width of each of the `depth` hidden layers, input side first: `width` for all, or its list (one per layer)."""
    if not is_width_list(width):
        return [int(width)] * depth
    problem = widths_problem(depth, width)
    if problem:
        raise ConfigError(problem + ".")
    return [int(w) for w in width]


def mlp(
    input_shape: tuple[int, ...],
    n_classes: int,
    activation: Factory,
    depth: int = 3,
    width: Widths = 100,
    norm: Factory | None = None,
    norm_position: str = "none",
    dropout: Factory | None = None,
) -> nn.Sequential:
    """`depth` hidden layers of `width` units (or one width per layer: `width=[300, 100]`), then the output layer;
    with norm before the activation the layers have no bias."""
    widths = layer_widths(depth, width)
    fan_in = math.prod(input_shape)
    layers = [("flatten", nn.Flatten()), *_dense_stack(fan_in, widths, activation, norm, norm_position, dropout)]
    layers.append((HEAD, nn.Linear(widths[-1] if widths else fan_in, n_classes)))
    return nn.Sequential(OrderedDict(layers))


mlp.dense_sequential = True  # SELU's self-normalization holds for it (see self_normalizing_problems)


def _dense_stack(
    fan_in: int,
    widths: list[int],
    activation: Factory,
    norm: Factory | None,
    norm_position: str,
    dropout: Factory | None,
) -> list[tuple[str, nn.Module]]:
    """One dense block per width, `hidden1…`: `fan_in` → widths[0] → … → widths[-1]."""
    bias = _keeps_bias(norm, norm_position)
    layers = []
    for i, width in enumerate(widths, start=1):
        linear = nn.Linear(fan_in, width, bias=bias)
        layers.append((f"{HIDDEN}{i}", _block(linear, width, activation, norm, norm_position, dropout)))
        fan_in = width
    return layers


def autoencoder(
    input_shape: tuple[int, ...],
    n_classes: int,
    activation: Factory,
    depth: int = 2,
    width: Widths = 32,
    norm: Factory | None = None,
    norm_position: str = "none",
    dropout: Factory | None = None,
) -> nn.Sequential:
    """Stacked autoencoder: encoder `hidden1…hidden{depth}` (the MLP's blocks), mirrored decoder `decode{depth}…decode1`.

    The output is the reconstruction of the flattened input (`n_classes` is ignored). `decode{k}`
    maps block k's codings back to block k-1's width (`decode1`, a plain linear layer, to the input),
    so each encoder/decoder pair is also a shallow autoencoder for greedy layer-wise training; with
    `width=[300, 100]` the net is n → 300 → 100 → 300 → n.
    """
    n_features = math.prod(input_shape)
    if depth < 1:
        raise ConfigError(f"model=autoencoder needs model.depth >= 1 encoder layers; got model.depth={depth}")
    widths = layer_widths(depth, width)
    layers = [("flatten", nn.Flatten()), *_dense_stack(n_features, widths, activation, norm, norm_position, dropout)]
    bias = _keeps_bias(norm, norm_position)
    for k in range(depth, 1, -1):  # decoder blocks have no dropout: they reconstruct clean codings
        linear = nn.Linear(widths[k - 1], widths[k - 2], bias=bias)  # block k's width back to block k-1's
        layers.append((f"{DECODER}{k}", _block(linear, widths[k - 2], activation, norm, norm_position, None)))
    layers.append((f"{DECODER}1", nn.Linear(widths[0], n_features)))
    return nn.Sequential(OrderedDict(layers))


autoencoder.dense_sequential = True


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
    if is_width_list(width):
        raise ConfigError(f"model=cnn takes one model.width, the first block's channels (doubled in each block after "
                          f"it); got model.width={list(width)}. A list of widths, one per hidden layer, is for model=mlp "
                          f"and model=autoencoder; give model=cnn an integer, e.g. model.width=32.")
    if len(input_shape) != 3:
        raise ConfigError(
            f"model=cnn needs image data shaped (channels, height, width); this data set's samples "
            f"have shape {tuple(input_shape)}. Use model=mlp, or data=digits|mnist|fashion_mnist|cifar10."
        )
    bias = _keeps_bias(norm, norm_position)
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
    layers.append((f"{HIDDEN}1", _block(linear, dense, activation, norm, norm_position, dropout)))
    layers.append((HEAD, nn.Linear(dense, n_classes)))
    return nn.Sequential(OrderedDict(layers))


# ---------------------------------------------------------------------------------- anatomy
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)  # layers with a weight matrix or filter bank
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def weighted_layers(model: nn.Module, kinds: tuple[type, ...] = WEIGHTED) -> list[tuple[str, nn.Module]]:
    """Every linear/conv layer (of `kinds`) with its dotted name, in module order (what initializers set and
    TensorBoard draws)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]


def weights(model: nn.Module, hidden_only: bool = False, kinds: tuple[type, ...] = WEIGHTED) -> list[torch.Tensor]:
    """Weights (not biases, not norm parameters) of every linear/conv layer; `hidden_only`: without the classifier's
    head (`output`), the rows max-norm caps. `kinds`: the weighted layer classes (a stack of models has its own)."""
    head = getattr(model, HEAD, None)
    return [m.weight for _, m in weighted_layers(model, kinds) if not (hidden_only and m is head)]


def blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The top-level blocks that hold weights, input side first (`hidden1`, `conv1`, …, `output`): the layers
    diagnostics report and transfer reuses or freezes."""
    return {name: block for name, block in model.named_children() if weighted_layers(block)}


def output(model: nn.Module) -> tuple[str, nn.Module]:
    """The last block (`output`; an autoencoder's `decode1`): the layer a transfer to other labels replaces."""
    return list(blocks(model).items())[-1]


def hidden_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks below the output, input side first: what `model.freeze` counts."""
    return list(blocks(model).items())[:-1]


def stem(model: nn.Module) -> nn.Sequential:
    """The weightless layers before the first block (`flatten`): the input as the first block sees it."""
    first = next(iter(blocks(model)))
    names = [name for name, _ in model.named_children()]
    return nn.Sequential(*(getattr(model, name) for name in names[: names.index(first)]))


def encoder_decoder_pairs(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """An autoencoder's (name, encoder block, decoder block), lowest first: `hidden{k}` with `decode{k}`, each
    a shallow autoencoder of greedy layer-wise training."""
    depth = sum(1 for name, _ in model.named_children() if name.startswith(HIDDEN))
    return [(f"{HIDDEN}{k}", getattr(model, f"{HIDDEN}{k}"), getattr(model, f"{DECODER}{k}")) for k in range(1, depth + 1)]


def batch_norms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every batch norm with its dotted name (folded on export, kept in inference mode when frozen)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BATCH_NORMS)]


def dropouts(model: nn.Module) -> list[nn.Module]:
    """Every dropout layer (kept active by MC dropout)."""
    return [m for m in model.modules() if isinstance(m, DROPOUTS)]


def leaves(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, module) of every leaf module, in forward order (the models are nested Sequentials)."""
    found = []
    for name, child in model.named_children():
        found.extend(leaves(child) if list(child.children()) else [(model, name, child)])
    return found


# The config groups SELU's conditions read (each one's sub-node is an argument below).
SELF_NORMALIZING_GROUPS = ("activation", "model", "data", "initializer", "normalization", "regularization")


def self_normalizing_problems(activation: DictConfig, model: DictConfig, data: DictConfig, initializer: DictConfig,
                              normalization: DictConfig, regularization: DictConfig) -> list[str]:
    """What breaks SELU's self-normalization in this config (Klambauer et al. 2017; Géron ch. 11).

    It needs a plain stack of dense layers, standardized inputs, LeCun-normal weights, and no
    normalization layers or ordinary dropout (alpha dropout is fine); empty when not SELU.
    """
    from hydra.utils import get_method

    if activation.module.get("_target_") != "torch.nn.SELU":
        return []
    problems = []
    if not getattr(get_method(model._target_), "dense_sequential", False):
        problems.append(f"model={model._target_.rsplit('.', 1)[-1]} is not a plain dense stack (use model=mlp)")
    if data.get("scaling") != "standardize":
        problems.append(f"data.scaling={data.get('scaling')} (needs standardize)")
    weight = initializer.get("weight") or {}
    if not (str(weight.get("_target_", "")).endswith("kaiming_normal_") and weight.get("nonlinearity") == "linear"
            and weight.get("mode", "fan_in") == "fan_in"):
        problems.append("the initializer is not LeCun normal (use initializer=lecun_normal)")
    if normalization.get("layer") is not None:
        problems.append("a normalization layer is added (use normalization=none)")
    if any(str(node.get("_target_")) == "dnnlab.regularization.Dropout" for node in regularization.values()):
        problems.append("plain dropout is added (use alpha_dropout)")
    return problems


def check_self_normalizing(**groups: DictConfig) -> None:
    """Warn in one line when a SELU network's self-normalization conditions are broken (SELF_NORMALIZING_GROUPS)."""
    problems = self_normalizing_problems(**groups)
    if problems:
        logging.getLogger("dnnlab").warning("SELU will not self-normalize: %s.", "; ".join(problems))
