"""Hydra Launcher plugin `hydra/launcher=stacked` (config: dnnlab/conf/hydra/launcher/stacked.yaml): the
jobs of a dnnlab sweep that can train together do, as one stacked model; the others train alone.

Hydra discovers it in the `hydra_plugins` namespace package and imports this module at every start,
so the work (and dnnlab, and torch) is imported only when jobs are launched (see `_core`).
"""
from __future__ import annotations

from typing import Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class StackedLauncher(Launcher):
    def __init__(self, max_stack: Optional[int] = None, min_speedup: Optional[float] = None) -> None:
        self.max_stack = max_stack  # most jobs per stack; None: no count limit (the stacked loop splits by memory)
        self.min_speedup = min_speedup  # the step speed-up a stack must measure to train stacked; None: dnnlab's default
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from . import _core

        return _core.launch(self, job_overrides, initial_job_idx)
