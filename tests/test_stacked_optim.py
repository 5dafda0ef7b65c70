"""StackedOptimizer: each member's update is its own torch optimizer's, and its state converts to and from torch's."""
from __future__ import annotations

import copy

import pytest
import torch
from helpers.stacked import assert_same_state, batch_indices, dataset, members, run_both, stacked_update
from torch import nn

from dnnlab.engine.stacked.model import CannotStack, stack_models
from dnnlab.engine.stacked.optim import StackedOptimizer

pytestmark = pytest.mark.filterwarnings("ignore:grad and param do not obey the gradient layout contract")
K = 3
# (class, the members' differing keyword arguments): every stacked optimizer with per-member hyper-parameters
CASES = {
    "sgd": (torch.optim.SGD, [dict(lr=0.05), dict(lr=0.1, weight_decay=1e-3), dict(lr=0.02)]),
    "momentum": (torch.optim.SGD, [dict(lr=0.05, momentum=0.9, dampening=0.1), dict(lr=0.1, momentum=0.0, dampening=0.3),
                                   dict(lr=0.02, momentum=0.5, weight_decay=1e-2)]),
    "nesterov": (torch.optim.SGD, [dict(lr=0.05 * (i + 1), momentum=0.9 - 0.2 * i, nesterov=True, weight_decay=1e-3 * i)
                                   for i in range(K)]),
    "adam": (torch.optim.Adam, [dict(lr=1e-3 * (i + 1), betas=(0.9 - 0.05 * i, 0.999 - 0.01 * i), weight_decay=1e-2 * i)
                                for i in range(K)]),
    "adam_amsgrad": (torch.optim.Adam, [dict(lr=1e-2, amsgrad=True, eps=10.0 ** (-8 + i)) for i in range(K)]),
    "adamw": (torch.optim.AdamW, [dict(lr=1e-2 * (i + 1), weight_decay=0.1 * i) for i in range(K)]),
    "nadam": (torch.optim.NAdam, [dict(lr=2e-3 * (i + 1), momentum_decay=4e-3 * (i + 1), betas=(0.9, 0.99 - 0.01 * i))
                                  for i in range(K)]),
    "nadam_decoupled": (torch.optim.NAdam, [dict(lr=1e-2, weight_decay=0.1 * i, decoupled_weight_decay=True)
                                            for i in range(K)]),
    "rmsprop": (torch.optim.RMSprop, [dict(lr=1e-3 * (i + 1), alpha=0.9 + 0.04 * i, weight_decay=1e-3 * i) for i in range(K)]),
    "rmsprop_centered_momentum": (torch.optim.RMSprop, [dict(lr=1e-3, centered=True, momentum=m) for m in (0.0, 0.5, 0.9)]),
    "adagrad": (torch.optim.Adagrad, [dict(lr=1e-2 * (i + 1), lr_decay=1e-2 * i, initial_accumulator_value=0.1 * i,
                                           weight_decay=1e-3) for i in range(K)]),
    "adamax": (torch.optim.Adamax, [dict(lr=2e-3 * (i + 1), betas=(0.8 + 0.05 * i, 0.99), weight_decay=1e-2 * i)
                                    for i in range(K)]),
}


def maker(case: str, **extra):
    cls, kwargs = CASES[case]
    return lambda i, model: cls(model.parameters(), **kwargs[i], **extra)


@pytest.mark.parametrize("case", CASES)
def test_each_member_trains_as_its_solo_run(case):
    pair = run_both(members(K), maker(case))
    torch.testing.assert_close(torch.stack(pair.losses), torch.stack(pair.solo_losses), rtol=1e-5, atol=1e-6)
    assert_same_state(pair.stacked, pair.models, pair.solo)


def assert_updates_bit_for_bit(make, steps: int = 4) -> StackedOptimizer:
    """Given the same gradients, every member's parameters after each step equal its torch optimizer's exactly."""
    models = members(K)
    solo = copy.deepcopy(models)
    solo_opts = [make(i, m) for i, m in enumerate(solo)]
    stacked = stack_models(models)
    opt = StackedOptimizer.from_members([make(i, m) for i, m in enumerate(models)], stacked)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        opt.zero_grad()
        stacked.flat_grad.copy_(torch.randn(stacked.flat_grad.shape, generator=gen))
        opt.step()
        for k, (model, solo_opt) in enumerate(zip(solo, solo_opts)):
            for p, stacked_p in zip(model.parameters(), stacked.stacked_parameters()):
                p.grad = stacked_p.grad[k].clone()
            solo_opt.step()
    stacked.write_back(models)
    for mine, ref in zip(models, solo):
        for a, b in zip(mine.parameters(), ref.parameters()):
            assert torch.equal(a, b)
    return opt


@pytest.mark.parametrize("case", CASES)
def test_update_is_torch_single_tensor_math_bit_for_bit(case):
    assert not assert_updates_bit_for_bit(maker(case)).kernel


FUSED = [case for case, (cls, _) in CASES.items() if cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW,
                                                              torch.optim.Adagrad)]


@pytest.mark.parametrize("case", FUSED)
def test_fused_members_step_with_torchs_fused_kernel_bit_for_bit(case):
    """Members built fused=True (dnnlab's implementation=auto) step with torch's fused kernel, grouped by hyper-parameters."""
    assert assert_updates_bit_for_bit(maker(case, fused=True)).kernel


@pytest.mark.parametrize("case", ["adam", "momentum"])
def test_fused_seed_stack_is_one_call_and_lr_stack_one_per_member(case):
    cls, kwargs = CASES[case]
    models = members(K)
    same = StackedOptimizer.from_members([cls(m.parameters(), **kwargs[0], fused=True) for m in models], stack_models(models))
    models = members(K)
    mixed = StackedOptimizer.from_members([cls(m.parameters(), **kwargs[i], fused=True) for i, m in enumerate(models)],
                                          stack_models(models))
    assert same.kernel and [g for g, _ in same.member_groups()] == [list(range(K))]
    assert [g for g, _ in mixed.member_groups()] == [[k] for k in range(K)]


def test_fused_members_resumed_at_other_steps_are_stepped_apart():
    """Members whose optimizers have taken different numbers of steps get their own bias corrections."""
    models = members(K)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for m in models]
    for k, (m, o) in enumerate(zip(models, opts)):
        for _ in range(k):
            m(dataset()[0][:4]).sum().backward()
            o.step()
    stacked = StackedOptimizer.from_members(opts, stack_models(models))
    assert [g for g, _ in stacked.member_groups()] == [[k] for k in range(K)]


@pytest.mark.parametrize("flags", [dict(foreach=True), dict(fused=True)])
def test_members_with_torch_fast_kernels_stack_too(flags):
    """dnnlab picks fused or multi-tensor kernels (optimizer.implementation=auto); the stack follows them within rounding."""
    pair = run_both(members(K), maker("adam", **flags))
    torch.testing.assert_close(torch.stack(pair.losses), torch.stack(pair.solo_losses), rtol=1e-5, atol=1e-6)
    assert_same_state(pair.stacked, pair.models, pair.solo)


def solo_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def restored(pair, make) -> tuple[list[nn.Module], list[torch.optim.Optimizer]]:
    """Fresh solo models and optimizers loaded from the members' state_dicts (as `resume=` would)."""
    models, optimizers = [], []
    for k, (model, member_opt) in enumerate(zip(pair.models, pair.member_opts)):
        fresh = members(K)[k]
        fresh.load_state_dict(copy.deepcopy(model.state_dict()))
        optimizer = make(k, fresh)
        optimizer.load_state_dict(copy.deepcopy(member_opt.state_dict()))
        models.append(fresh)
        optimizers.append(optimizer)
    return models, optimizers


@pytest.mark.parametrize("case", CASES)
def test_written_back_state_continues_solo_exactly_as_the_stack(case):
    """write_back → member state_dicts in torch's format; a fresh solo model+optimizer loaded from them steps as the stack."""
    make = maker(case)
    pair = run_both(members(K), make, steps=3)
    pair.stacked.write_back(pair.models)
    pair.opt.write_back(pair.member_opts)
    fresh, fresh_opts = restored(pair, make)
    x, y = dataset()
    idx = batch_indices(K, 1, seed=9)[0]
    for k in range(K):
        solo_step(fresh[k], fresh_opts[k], x[idx[k]], y[idx[k]])
    stacked_update(pair.stacked, pair.opt, x[idx], y[idx])
    assert_same_state(pair.stacked, pair.models, fresh)


def test_write_back_before_the_first_step_leaves_torch_without_state():
    pair = run_both(members(K), maker("adam"), steps=0)
    pair.opt.write_back(pair.member_opts)
    assert all(o.state_dict()["state"] == {} for o in pair.member_opts)


@pytest.mark.parametrize("case", ["momentum", "adam", "nadam", "adagrad"])
def test_read_from_takes_a_member_restored_from_a_checkpoint(case):
    """A member whose model and optimizer were loaded from a solo run that went further continues from that state."""
    make = maker(case)
    pair = run_both(members(K), make, steps=2)
    pair.stacked.write_back(pair.models)
    pair.opt.write_back(pair.member_opts)
    x, y = dataset()
    ahead, ahead_opt = members(K)[1], None
    ahead.load_state_dict(pair.models[1].state_dict())
    ahead_opt = make(1, ahead)
    ahead_opt.load_state_dict(pair.member_opts[1].state_dict())
    for idx in batch_indices(1, 2, seed=5):  # member 1 went two steps further solo
        solo_step(ahead, ahead_opt, x[idx[0]], y[idx[0]])
    pair.models[1].load_state_dict(ahead.state_dict())
    pair.member_opts[1].load_state_dict(ahead_opt.state_dict())
    pair.stacked.read_from(pair.models)
    pair.opt.read_from(pair.member_opts)
    if pair.opt.rule.counts_steps:
        assert pair.opt.steps.tolist() == [2, 4, 2]
    reference, ref_opts = restored(pair, make)
    idx = batch_indices(K, 1, seed=7)[0]
    stacked_update(pair.stacked, pair.opt, x[idx], y[idx])
    for k in range(K):
        solo_step(reference[k], ref_opts[k], x[idx[k]], y[idx[k]])
    assert_same_state(pair.stacked, pair.models, reference)


def test_refresh_follows_each_members_schedule_lr_and_betas():
    """1cycle changes lr and β1 on every member's own optimizer each step; after refresh the stack uses them."""
    pair = run_both(members(K), maker("adam"), steps=0)
    schedules = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.01 * (k + 1), total_steps=10)
                 for opts in ([t.optimizer for t in pair.trainers], pair.member_opts) for k, o in enumerate(opts)]
    pair.opt.refresh(pair.member_opts)
    for step in range(5):
        pair.train(1, seed=step)
        for schedule in schedules:
            schedule.step()
        pair.opt.refresh(pair.member_opts)
    group = pair.member_opts[2].param_groups[0]
    assert group["betas"][0] != 0.9 and group["lr"] != 0.01 * 3  # 1cycle moved them …
    hypers = pair.opt.hypers()
    assert (hypers["beta1"][2], hypers["lr"][2]) == (group["betas"][0], group["lr"])  # … and the stack read them
    torch.testing.assert_close(torch.stack(pair.losses), torch.stack(pair.solo_losses), rtol=1e-5, atol=1e-6)
    assert_same_state(pair.stacked, pair.models, pair.solo)


def test_keep_drops_members_and_the_others_continue_as_solo():
    pair = run_both(members(K), maker("momentum"), steps=2)
    pair.keep([2, 0])
    assert pair.stacked.members == 2 and pair.stacked.flat.shape[0] == 2
    pair.train(2, seed=3)
    torch.testing.assert_close(torch.stack(pair.losses[2:]), torch.stack(pair.solo_losses[2:]), rtol=1e-5, atol=1e-6)
    assert_same_state(pair.stacked, pair.models, pair.solo)


def test_cannot_stack_several_param_groups():
    models = members(2)
    stacked = stack_models(models)
    groups = [torch.optim.SGD([{"params": list(m.parameters())[:2]}, {"params": list(m.parameters())[2:]}], lr=0.1)
              for m in members(2)]
    with pytest.raises(CannotStack, match="2 parameter groups"):
        StackedOptimizer.from_members(groups, stacked)


@pytest.mark.parametrize("make, match", [
    (lambda i, m: torch.optim.Rprop(m.parameters()), "optimizer Rprop has no stacked form yet"),
    (lambda i, m: torch.optim.Adam(m.parameters(), maximize=True), "maximize=True"),
    (lambda i, m: torch.optim.Adam(m.parameters(), amsgrad=i == 0), "amsgrad settings differ"),
    (lambda i, m: (torch.optim.Adam if i else torch.optim.AdamW)(m.parameters()), "optimizers differ"),
])
def test_cannot_stack_says_why(make, match):
    models = members(2)
    stacked = stack_models(models)
    with pytest.raises(CannotStack, match=match):
        StackedOptimizer.from_members([make(i, m) for i, m in enumerate(models)], stacked)
