import pytest
import torch

from dnnlab.api import compose
from dnnlab.config.catalog import options
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


@pytest.mark.parametrize("name, auto", [("adam", "fused"), ("adamw", "fused"), ("sgd", "fused"), ("nadam", "foreach"), ("rmsprop", "foreach")])
def test_auto_implementation_takes_the_fastest_pytorch_kernel(name, auto):
    opt, _ = build_optimizer(compose([f"optimizer={name}"]).optimizer, [torch.nn.Parameter(torch.zeros(2))])
    assert opt.defaults.get(auto) is True
    loop, _ = build_optimizer(compose([f"optimizer={name}", "optimizer.implementation=loop"]).optimizer, [torch.nn.Parameter(torch.zeros(2))])
    assert not loop.defaults.get("fused") and loop.defaults.get("foreach") is False


@pytest.mark.parametrize("name", ["adam", "nadam", "sgd", "momentum"])
def test_fused_and_loop_implementations_take_the_same_steps(name):
    def run(implementation: str) -> torch.Tensor:
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 3)
        opt, _ = build_optimizer(compose([f"optimizer={name}", f"optimizer.implementation={implementation}"]).optimizer, model.parameters())
        x = torch.randn(16, 5)
        for _ in range(5):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        return model.weight.detach()

    assert torch.allclose(run("auto"), run("loop"), atol=1e-6)


def test_bad_implementation_is_named():
    with pytest.raises(ValueError, match="optimizer.implementation"):
        build_optimizer(compose(["optimizer.implementation=fast"]).optimizer, [torch.nn.Parameter(torch.zeros(2))])


def test_loading_state_keeps_this_optimizers_kernel_choice():
    """A run saved with fused Adam resumes with the multi-tensor one (and vice versa) when asked to."""
    from dnnlab.optim import load_optimizer_state

    model = torch.nn.Linear(4, 2)
    fused = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    model(torch.randn(8, 4)).sum().backward()
    fused.step()
    multi = torch.optim.Adam(model.parameters(), lr=0.5, foreach=True)
    load_optimizer_state(multi, fused.state_dict())
    group = multi.param_groups[0]
    assert (group["fused"], group["foreach"], group["lr"]) == (None, True, 0.01)
    assert torch.equal(multi.state[model.weight]["exp_avg"], fused.state[model.weight]["exp_avg"])
    multi.step()  # the loaded state works with this kernel


def test_loading_state_with_a_different_group_count_still_fails():
    from dnnlab.optim import load_optimizer_state

    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    saved = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="different number of parameter groups"):
        load_optimizer_state(torch.optim.SGD([a, b], lr=0.1), saved)
