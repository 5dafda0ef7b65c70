import pytest
import torch

from dnnlab.api import compose
from dnnlab.catalog import options
from dnnlab.optim import build_optimizer

EXPECTED = {
    "sgd": (torch.optim.SGD, {"momentum": 0.0}),
    "momentum": (torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
    "nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "adagrad": (torch.optim.Adagrad, {}),
    "rmsprop": (torch.optim.RMSprop, {"alpha": 0.9}),
    "adam": (torch.optim.Adam, {"betas": (0.9, 0.999)}),
    "adamax": (torch.optim.Adamax, {}),
    "nadam": (torch.optim.NAdam, {}),
    "adamw": (torch.optim.AdamW, {"weight_decay": 0.01}),
}


def test_every_option_is_covered():
    assert set(options("optimizer")) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_optimizer_is_the_pytorch_class_with_guide_defaults(name):
    cls, defaults = EXPECTED[name]
    opt, clipper = build_optimizer(compose([f"optimizer={name}"]).optimizer, [torch.nn.Parameter(torch.zeros(2))])
    assert type(opt) is cls and not clipper
    for key, value in defaults.items():
        got = opt.defaults[key]
        assert (tuple(got) if isinstance(got, (list, tuple)) else got) == value


def test_weight_decay_override():
    opt, _ = build_optimizer(compose(["optimizer=sgd", "optimizer.weight_decay=0.1"]).optimizer, [torch.nn.Parameter(torch.zeros(2))])
    assert opt.defaults["weight_decay"] == 0.1


def grads_after_clip(*overrides: str) -> torch.Tensor:
    p = torch.nn.Parameter(torch.zeros(4))
    _, clipper = build_optimizer(compose(["optimizer=sgd", *overrides]).optimizer, [p])
    p.grad = torch.tensor([3.0, -4.0, 0.5, 0.0])
    clipper()
    return p.grad


def test_clip_by_value():
    assert torch.equal(grads_after_clip("optimizer.clip_value=1.0"), torch.tensor([1.0, -1.0, 0.5, 0.0]))


def test_clip_by_norm_keeps_direction():
    g = grads_after_clip("optimizer.clip_norm=1.0")
    assert g.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(g / g.norm(), torch.tensor([3.0, -4.0, 0.5, 0.0]) / torch.tensor([3.0, -4.0, 0.5, 0.0]).norm())
