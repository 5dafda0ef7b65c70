"""Micro-benchmark of one training step: K members stacked (dnnlab.engine.stacked) vs K solo steps one after another.

    python bench/stacked_step.py                      # the issue's three workloads, K=8
    python bench/stacked_step.py --members 16 --repeats 7

Both sides do the same work per step: gather each member's own batch by index, forward, cross
entropy, backward, optimizer step (solo: torch's fused kernel where it has one, as dnnlab's
`optimizer.implementation=auto` picks). Prints model-samples/s (K × batch / step time) of each
and their ratio; the best of `repeats` interleaved timings, since the machine may be shared.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.engine.stacked.functional import stacked_cross_entropy
from dnnlab.engine.stacked.model import stack_models
from dnnlab.engine.stacked.optim import StackedOptimizer
from dnnlab.models import mlp

WORKLOADS = [  # (name, input features, hidden widths, classes, batch, optimizer)
    ("64-100-100-100-10 Adam", 64, [100, 100, 100], 10, 32, "adam"),
    ("64-100-100-100-10 SGD+momentum", 64, [100, 100, 100], 10, 32, "momentum"),
    ("784-300-100-10 Adam", 784, [300, 100], 10, 128, "adam"),
]


def member(features: int, widths: list[int], classes: int, seed: int) -> nn.Sequential:
    """dnnlab.models.mlp with hidden widths `widths` (ReLU, PyTorch's default initialization), seeded."""
    torch.manual_seed(seed)
    return mlp((features,), classes, nn.ReLU, depth=len(widths), width=widths)


def optimizer(kind: str, params, k: int) -> torch.optim.Optimizer:
    lr = 1e-3 * (1 + k)  # a per-member learning rate, as in a learning-rate sweep
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.SGD(params, lr=10 * lr, momentum=0.9, fused=True)


def timed(step: Callable[[], None], steps: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per call of `step` by `clock` (wall time, or with one thread the CPU time it used: robust to a busy machine)."""
    for _ in range(5):
        step()
    start = clock()
    for _ in range(steps):
        step()
    return (clock() - start) / steps


def bench_step(features: int, widths: list[int], classes: int, batch: int, kind: str, members: int = 8,
               steps: int = 50, repeats: int = 5, n: int = 4096,
               clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Model-samples/s of the stacked step and of K solo steps one after another, and their ratio."""
    x, y = torch.randn(n, features), torch.randint(0, classes, (n,))
    solo = [member(features, widths, classes, k) for k in range(members)]
    solo_opt = [optimizer(kind, m.parameters(), k) for k, m in enumerate(solo)]
    mates = [member(features, widths, classes, k) for k in range(members)]
    stacked = stack_models(mates)
    stacked_opt = StackedOptimizer.from_members([optimizer(kind, m.parameters(), k) for k, m in enumerate(mates)], stacked)
    gen = torch.Generator().manual_seed(0)

    def solo_step() -> None:
        for model, opt in zip(solo, solo_opt):
            idx = torch.randint(0, n, (batch,), generator=gen)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def stacked_step() -> None:
        idx = torch.randint(0, n, (members, batch), generator=gen)
        losses = stacked_cross_entropy(stacked(x[idx]), y[idx])
        stacked_opt.zero_grad()
        losses.sum().backward()
        stacked_opt.step()

    solo_s = stacked_s = float("inf")
    for _ in range(repeats):  # interleaved, best of each: the machine may be busy with other work
        solo_s = min(solo_s, timed(solo_step, steps, clock))
        stacked_s = min(stacked_s, timed(stacked_step, steps, clock))
    rate = members * batch
    return {"solo_samples_per_s": rate / solo_s, "stacked_samples_per_s": rate / stacked_s, "speedup": solo_s / stacked_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by this thread's CPU time (with --threads 1): steady on a machine others are using")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time and torch.get_num_threads() != 1:
        parser.error("--cpu-time needs --threads 1 (it counts the main thread only)")
    clock = time.thread_time if args.cpu_time else time.perf_counter
    print(f"K={args.members}, {torch.get_num_threads()} threads, {'CPU' if args.cpu_time else 'wall'} time, torch {torch.__version__}")
    for name, features, widths, classes, batch, kind in WORKLOADS:
        r = bench_step(features, widths, classes, batch, kind, args.members, args.steps, args.repeats, clock=clock)
        print(f"{name:34s} batch {batch:4d}: solo {r['solo_samples_per_s']:9.0f}  stacked "
              f"{r['stacked_samples_per_s']:9.0f} model-samples/s  → {r['speedup']:.2f}×")


if __name__ == "__main__":
    main()
