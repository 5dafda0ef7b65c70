import math

import pytest
import torch

from dnnlab.api import compose
from dnnlab.schedules import build_schedule

LR = 0.1


def lrs(schedule: str, steps: int, *overrides: str, epochs: int = 1, steps_per_epoch: int | None = None):
    """Learning rate before each of `steps` scheduler steps."""
    cfg = compose([f"schedule={schedule}", "optimizer=momentum", f"optimizer.lr={LR}", *overrides])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR, momentum=0.9)
    sched = build_schedule(cfg.schedule, opt, epochs, steps_per_epoch or steps)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched.per_step:
            sched.step_end()
        else:
            sched.epoch_end(val_loss=1.0)
    return seen, sched


def test_power():
    seen, _ = lrs("power", 3001, "schedule.s=1000", "schedule.c=1.0")
    for t in (0, 1000, 3000):
        assert seen[t] == pytest.approx(LR / (1 + t / 1000))
    seen, _ = lrs("power", 2001, "schedule.s=500", "schedule.c=0.5")
    for t in (0, 500, 2000):
        assert seen[t] == pytest.approx(LR / (1 + t / 500) ** 0.5)


def test_exponential():
    seen, sched = lrs("exponential", 4001, "schedule.s=2000")
    assert sched.per_step
    for t in (0, 1000, 4000):
        assert seen[t] == pytest.approx(LR * 0.1 ** (t / 2000))


def test_piecewise_is_per_epoch():
    seen, sched = lrs("piecewise", 20, "schedule.boundaries=[5,15]", "schedule.factors=[1,0.5,0.1]", epochs=20)
    assert sched.per_epoch
    assert seen[4] == pytest.approx(LR) and seen[5] == pytest.approx(LR * 0.5) and seen[15] == pytest.approx(LR * 0.1)


def test_performance_halves_after_patience_without_improvement():
    seen, sched = lrs("performance", 10, "schedule.factor=0.5", "schedule.patience=2", epochs=10)
    # constant val_loss: epoch 1 is the best, epochs 2-3 are within patience, epoch 4 reduces
    assert seen[0] == seen[3] == pytest.approx(LR)
    assert seen[4] == pytest.approx(LR * 0.5)


def test_1cycle_rises_then_falls():
    seen, sched = lrs("1cycle", 1000, epochs=10, steps_per_epoch=100)
    peak = seen.index(max(seen))
    assert seen[0] == pytest.approx(LR / 25)
    assert max(seen) == pytest.approx(LR, rel=1e-3)
    assert peak == pytest.approx(300, abs=2)  # pct_start = 0.3
    assert all(a <= b + 1e-12 for a, b in zip(seen[:peak], seen[1 : peak + 1]))
    assert all(a >= b - 1e-12 for a, b in zip(seen[peak:], seen[peak + 1 :]))
    assert seen[-1] < LR / 25 / 1000  # anneals far below the start


def test_1cycle_momentum_auto():
    _, sched = lrs("1cycle", 10, epochs=1, steps_per_epoch=10)
    assert sched.scheduler.cycle_momentum
    cfg = compose(["schedule=1cycle", "optimizer=adagrad"])
    opt = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    assert not build_schedule(cfg.schedule, opt, 1, 10).scheduler.cycle_momentum


def test_cosine():
    seen, _ = lrs("cosine", 101, epochs=1, steps_per_epoch=100)
    for t in (0, 50, 100):
        assert seen[t] == pytest.approx(LR * (1 + math.cos(math.pi * t / 100)) / 2, abs=1e-9)


def test_none_is_constant():
    seen, _ = lrs("none", 5)
    assert seen == [LR] * 5
