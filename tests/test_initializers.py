import math

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from dnnlab.api import build_model, compose
from dnnlab.data import load_data

FAN_IN, FAN_OUT = 400, 300


def init_std(name: str, activation: str = "relu") -> tuple[float, nn.Linear]:
    cfg = compose([f"initializer={name}", f"activation={activation}"])
    layer = nn.Linear(FAN_IN, FAN_OUT)
    instantiate(cfg.initializer)(nn.Sequential(layer))
    return layer.weight.std().item(), layer


@pytest.mark.parametrize(
    "name, activation, expected",
    [
        ("glorot_normal", "tanh", math.sqrt(2 / (FAN_IN + FAN_OUT))),
        ("glorot_uniform", "tanh", math.sqrt(2 / (FAN_IN + FAN_OUT))),  # U(±a) has std a/√3
        ("he_normal", "relu", math.sqrt(2 / FAN_IN)),
        ("he_uniform", "relu", math.sqrt(2 / FAN_IN)),
        ("he_normal", "leaky_relu", math.sqrt(2 / (1 + 0.01**2) / FAN_IN)),
        ("he_normal", "tanh", 5 / 3 / math.sqrt(FAN_IN)),  # the activation's gain
        ("lecun_normal", "selu", math.sqrt(1 / FAN_IN)),
        ("lecun_uniform", "selu", math.sqrt(1 / FAN_IN)),
        ("normal", "sigmoid", 1.0),
        ("uniform", "relu", 0.05 / math.sqrt(3)),
    ],
)
def test_weight_std_matches_formula(name, activation, expected):
    std, layer = init_std(name, activation)
    assert std == pytest.approx(expected, rel=0.05)
    assert torch.all(layer.bias == 0)


def test_orthogonal_rows_are_orthonormal():
    _, layer = init_std("orthogonal")
    w = layer.weight  # 300 × 400: rows orthonormal
    assert torch.allclose(w @ w.T, torch.eye(FAN_OUT), atol=1e-4)


def test_default_keeps_pytorch_init_and_bias_is_settable():
    _, layer = init_std("default")
    assert layer.bias.abs().sum() > 0  # PyTorch's uniform biases untouched
    cfg = compose(["initializer=he_normal", "initializer.bias=0.5"])
    layer = nn.Linear(10, 10)
    instantiate(cfg.initializer)(nn.Sequential(layer))
    assert torch.all(layer.bias == 0.5)


def last_over_first_std(overrides: list[str], width: int = 100) -> tuple[float, float, list[float]]:
    """Activation std of the first and last of 20 hidden layers on standardized digits, and each layer's saturated fraction."""
    cfg = compose(["model.depth=20", f"model.width={width}", *overrides])
    torch.manual_seed(0)
    data = load_data(cfg.data)
    model = build_model(cfg, data).eval()
    stds: list[float] = []
    hooks = [blk.act.register_forward_hook(lambda m, i, o: stds.append(o.std().item()))
             for name, blk in model.named_children() if name.startswith("hidden")]
    sat: list[float] = []
    with torch.no_grad():
        x = data.train_x[:500]
        model(x)
        h = x.flatten(1)
        for name, blk in model.named_children():
            if name.startswith("hidden"):
                h = blk(h)
                sat.append(((h < 0.01) | (h > 0.99)).float().mean().item())
    for hk in hooks:
        hk.remove()
    return stds[0], stds[-1], sat


@pytest.mark.parametrize("overrides", [["initializer=he_normal", "activation=elu"], ["initializer=lecun_normal", "activation=selu"]])
def test_good_init_keeps_activation_scale_across_20_layers(overrides):
    first, last, _ = last_over_first_std(overrides)
    assert first / 4 < last < first * 4, (first, last)


def test_normal_init_with_sigmoid_saturates():
    # Pre-activations have std ≈ √(width·E[h²]): at width 300 about 11, so most sigmoids sit at 0 or 1.
    _, _, sat = last_over_first_std(["initializer=normal", "activation=sigmoid"], width=300)
    assert sum(sat[1:]) / len(sat[1:]) > 0.5  # most units within 0.01 of 0 or 1
