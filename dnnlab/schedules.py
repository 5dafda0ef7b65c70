"""Learning-rate schedules (the `schedule` config group).

PyTorch's own schedulers where one exists (OneCycleLR, CosineAnnealingLR, ReduceLROnPlateau);
the guides' power, exponential and piecewise-constant schedules are small LRScheduler subclasses.
"""
from __future__ import annotations

import bisect
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from dnnlab.errors import ConfigError
from dnnlab.config.choices import INTERVALS, require


class PowerLR(LRScheduler):
    """η(t) = η₀ / (1 + t/s)^c."""

    def __init__(self, optimizer: torch.optim.Optimizer, s: float, c: float = 1.0, last_epoch: int = -1):
        self.s, self.c = s, c
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [base / (1 + self.last_epoch / self.s) ** self.c for base in self.base_lrs]


class ExponentialDecayLR(LRScheduler):
    """η(t) = η₀ · 0.1^(t/s)."""

    def __init__(self, optimizer: torch.optim.Optimizer, s: float, last_epoch: int = -1):
        self.s = s
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [base * 0.1 ** (self.last_epoch / self.s) for base in self.base_lrs]


class PiecewiseConstantLR(LRScheduler):
    """η(t) = η₀ · factors[i] where i = number of boundaries ≤ t."""

    def __init__(self, optimizer: torch.optim.Optimizer, boundaries: list[int], factors: list[float], last_epoch: int = -1):
        if len(factors) != len(boundaries) + 1:
            raise ConfigError(
                f"schedule.factors needs one more entry than schedule.boundaries "
                f"(got {len(factors)} factors for {len(boundaries)} boundaries)"
            )
        self.boundaries, self.factors = list(boundaries), list(factors)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = self.factors[bisect.bisect_right(self.boundaries, self.last_epoch)]
        return [base * factor for base in self.base_lrs]


class Schedule:
    """A scheduler plus when it steps: after every optimizer step or after every epoch."""

    def __init__(self, scheduler: Any | None, interval: str):
        self.scheduler, self.interval = scheduler, interval
        self.per_step = scheduler is not None and interval == "step"
        self.per_epoch = scheduler is not None and interval == "epoch"

    def step_end(self) -> None:
        if self.per_step:
            self.scheduler.step()

    def epoch_end(self, val_loss: float) -> None:
        if not self.per_epoch:
            return
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(val_loss)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


def has_momentum(optimizer: torch.optim.Optimizer) -> bool:
    defaults = optimizer.defaults
    return "betas" in defaults or defaults.get("momentum", 0) > 0


def build_schedule(cfg: DictConfig, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int) -> Schedule:
    """Instantiate the schedule; `total_steps`/`T_max` left null are the run's length in its interval."""
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    interval = kwargs.pop("interval", "epoch")
    require("schedule.interval", interval, INTERVALS)
    if kwargs.get("_target_") is None:
        return Schedule(None, interval)
    length = epochs * steps_per_epoch if interval == "step" else epochs
    for key in ("total_steps", "T_max"):
        if key in kwargs and kwargs[key] is None:
            kwargs[key] = length
    if kwargs.get("cycle_momentum") == "auto":
        kwargs["cycle_momentum"] = has_momentum(optimizer)
    return Schedule(instantiate(kwargs, optimizer), interval)
