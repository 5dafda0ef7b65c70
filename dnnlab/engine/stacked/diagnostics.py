"""Every member's per-layer diagnostics (dnnlab.observe.diagnostics) from one probe pass over the stack.

Each member keeps its own DiagnosticsHook (its probe batch, activation family, bounds, `diag_s`); the stack
stacks the members' probes into one (K, B, …) batch, runs the stacked model forward and backward once in
eval mode, and hands each hook its member's statistics (`DiagnosticsHook.give`), computed by the hook's
own definitions with a leading member dimension. Members whose hooks differ in what they measure
(family, bounds, probe size) are measured one by one, as solo runs are.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from dnnlab.engine.stacked.functional import stacked_cross_entropy
from dnnlab.engine.stacked.layers import StackedLinear
from dnnlab.engine.stacked.model import StackedModel
from dnnlab.models import weights
from dnnlab.observe.diagnostics import DiagnosticsHook, probe_pass

if TYPE_CHECKING:
    from dnnlab.engine.trainer import Trainer


def summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ over members of each member's mean cross entropy: member k's gradient is its own loss's."""
    return stacked_cross_entropy(logits, y).sum()


class StackedDiagnostics:
    """Measures the diagnostics of the members `trainers` of `model` at once; build it with `for_stack`."""

    def __init__(self, model: StackedModel, hooks: list[DiagnosticsHook]):
        self.model, self.hooks, first = model, hooks, hooks[0]
        self.probe = (torch.stack([h.probe[0] for h in hooks]), torch.stack([h.probe[1] for h in hooks]))
        self.blocks = {name: model.get_submodule(name) for name in first.blocks}
        self.weights_of = {name: weights(block, kinds=(StackedLinear,)) for name, block in self.blocks.items()}

    @classmethod
    def for_stack(cls, model: StackedModel, trainers: list[Trainer]) -> StackedDiagnostics | None:
        """The stacked probe of these members, or None when not every member measures, or not the same way."""
        hooks = [next((h for h in t.hooks if isinstance(h, DiagnosticsHook)), None) for t in trainers]
        if any(h is None or h.probe is None for h in hooks):
            return None
        ways = {(h.family, tuple(h.bounds.items()), tuple(h.blocks), tuple(h.probe[0].shape)) for h in hooks}
        return cls(model, hooks) if len(ways) == 1 else None

    def measure(self) -> None:
        """Give every member's hook this epoch's statistics (its `diag_s` counts the stack's probe, as its
        `epoch_s` counts the stack's epoch)."""
        t0 = time.perf_counter()
        trainable = [w for ws in self.weights_of.values() for w in ws]
        acts, grads = probe_pass(self.model, self.blocks, self.probe, summed_cross_entropy, trainable)
        rows = self.hooks[0].statistics(self.weights_of, trainable, grads, acts, lead=1)
        seconds = time.perf_counter() - t0
        for hook, stats in zip(self.hooks, rows):
            hook.give(stats, seconds)
