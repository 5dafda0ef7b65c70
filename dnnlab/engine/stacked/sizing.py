"""How big a stack may be and whether it pays: the members that fit in free memory, and the stack's speed
against its members one after another, measured on throwaway copies before training."""
from __future__ import annotations

import copy
import inspect
import math
import os
import time
from typing import TYPE_CHECKING, Callable, Iterable

import torch

from dnnlab.engine.stacked.functional import stacked_cross_entropy
from dnnlab.engine.stacked.model import stack_models
from dnnlab.engine.stacked.optim import StackedOptimizer

if TYPE_CHECKING:
    from dnnlab.engine.trainer import Trainer

# The step speed-up the probe must measure for a stack to train. The probe times training steps only; the rest of
# an epoch (validation, each member's bookkeeping) gains less, and a stack's K-fold working set fits the caches less
# well over a whole epoch, so a whole stack trains about 10 % below the probe (measured: probe 1.11×, run 0.98× for
# 8 × 784-300-100-10 at batch 128; probe 3.8×, run 2.5–2.8× for 8 digits MLPs). 1.15 keeps a stack ≥ 0.9× its
# members one after another.
MIN_SPEEDUP = 1.15


def members_that_fit(trainers: list[Trainer], share: float = 0.5) -> int:
    """How many of these members a stack may hold: `share` of the device's free memory over one member's need
    (its parameters, gradients and two optimizer states, and its training and evaluation activations)."""
    first = trainers[0]
    params = sum(p.numel() for p in first.model.parameters())
    widths = sum(m.out_features for m in first.model.modules() if isinstance(m, torch.nn.Linear))
    batch = max(first.batch_size, first.eval_batch_size)
    need = 4 * (4 * params + 3 * batch * (widths + first.data.train_x[0].numel()))
    if first.device.type == "cuda":
        free = torch.cuda.mem_get_info(first.device)[0]
    else:
        free = available_memory()
    return max(1, min(len(trainers), int(share * free // max(need, 1))))


def available_memory() -> int:
    """Bytes of host memory available to a new allocation: Linux's MemAvailable (free plus reclaimable cache),
    else the free pages."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def measure_speedup(trainers: list[Trainer], rounds: int = 3, steps: int = 3, warmup: int = 2) -> float:
    """How much faster the stack steps than its members one after another, timed on throwaway copies.

    Each way is warmed up (first calls initialise kernels), then timed in alternating rounds, and each keeps its
    best round: a slow spell of a shared machine then hits neither. The members and the global random state are
    left as they were.
    """
    with torch.random.fork_rng(devices=[trainers[0].device] if trainers[0].device.type == "cuda" else []):
        copies = [copy.deepcopy(t.model) for t in trainers]
        optimizers = [rebuilt(t.optimizer, c.parameters()) for t, c in zip(trainers, copies)]
        stacked = stack_models(copies)
        stacked_optimizer = StackedOptimizer.from_members(optimizers, stacked)
        data, size, device = trainers[0].data, trainers[0].batch_size, trainers[0].device
        n, k = len(data.train_y), len(trainers)
        generator = torch.Generator(device=device).manual_seed(0)
        total = warmup + rounds * (steps + 1)
        idx = torch.randint(0, n, (total, k, size), device=device, generator=generator)

        def stacked_step(i: int) -> None:
            loss = stacked_cross_entropy(stacked(data.train_x[idx[i]]), data.train_y[idx[i]]).sum()
            stacked_optimizer.zero_grad()
            loss.backward()
            stacked_optimizer.step()

        def solo_step(i: int) -> None:
            model, optimizer, loss_fn = copies[0], optimizers[0], trainers[0].loss_fn
            loss = loss_fn(model(data.train_x[idx[i, 0]]), data.train_y[idx[i, 0]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        stacked.train()
        copies[0].train()
        for i in range(warmup):
            solo_step(i)
            stacked_step(i)
        solo_s = stacked_s = math.inf
        for r in range(rounds):
            first = warmup + r * (steps + 1)
            # Each round starts with an untimed step: the other way's round has just evicted this one's weights
            # from the caches, which a run's steps in a row do not suffer.
            solo_step(first)
            solo_s = min(solo_s, timed(solo_step, range(first + 1, first + 1 + steps), device) * k)
            stacked_step(first)
            stacked_s = min(stacked_s, timed(stacked_step, range(first + 1, first + 1 + steps), device))
    return solo_s / max(stacked_s, 1e-12)


def rebuilt(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """An optimizer of `optimizer`'s class and settings over `params`. Its defaults can hold keys its constructor
    does not take (torch 2.13's AdamW keeps `decoupled_weight_decay=True`), so only the ones it takes are passed."""
    accepted = inspect.signature(type(optimizer).__init__).parameters
    return type(optimizer)(params, **{k: v for k, v in optimizer.defaults.items() if k in accepted})


def timed(step: Callable[[int], None], indices: range, device: torch.device) -> float:
    """Seconds per call of `step` over `indices`."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in indices:
        step(i)
    sync()
    return (time.perf_counter() - t0) / len(indices)
