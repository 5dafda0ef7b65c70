"""Tiny sweep members, their solo reference (dnnlab's own Trainer.update) and the stacked step, for the stacked-core tests."""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from dnnlab.data import Splits
from dnnlab.engine.stacked.functional import (
    stacked_clip_, stacked_cross_entropy, stacked_l1, stacked_l2, stacked_max_norm_,
)
from dnnlab.engine.stacked.model import StackedModel, stack_models
from dnnlab.engine.stacked.optim import StackedOptimizer
from dnnlab.engine.trainer import Trainer
from dnnlab.models import mlp
from dnnlab.normalization import batch_norm, layer_norm
from dnnlab.optim import GradClipper
from dnnlab.regularization import L1, L2, MaxNorm
from dnnlab.schedules import Schedule

FEATURES, CLASSES, N, BATCH = 8, 5, 256, 16
NORMS = {"batchnorm": (functools.partial(batch_norm, momentum=0.1, eps=1e-5), "before"),
         "batchnorm_after": (functools.partial(batch_norm, momentum=0.1, eps=1e-5), "after"),
         "layernorm": (functools.partial(layer_norm, eps=1e-5), "before")}


def dataset(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One shared training set: (N, FEATURES) inputs and (N,) labels."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N, FEATURES, generator=gen), torch.randint(0, CLASSES, (N,), generator=gen)


def members(k: int, activation: Callable[[], nn.Module] | Sequence[Callable[[], nn.Module]] = nn.ReLU,
            norm: str | None = None, dropout: Sequence[Callable[[], nn.Module]] | None = None) -> list[nn.Sequential]:
    """K tiny dnnlab MLPs (input 8, depth 2, width 16, 5 classes), member i built after manual_seed(i)."""
    factory, position = NORMS[norm] if norm else (None, "none")
    models = []
    for i in range(k):
        torch.manual_seed(i)
        act = activation[i] if isinstance(activation, Sequence) else activation
        models.append(mlp((FEATURES,), CLASSES, act, depth=2, width=16, norm=factory, norm_position=position,
                          dropout=dropout[i] if dropout else None))
    return models


def solo_trainer(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 l1: float | None = None, l2: float | None = None, max_norm: float | None = None,
                 clip_value: float | None = None, clip_norm: float | None = None) -> Trainer:
    """dnnlab's Trainer for one member, with its regularizers and clipping (its `update` is the solo step)."""
    splits = Splits(x, y, x[:8], y[:8], x[:8], y[:8], CLASSES, (FEATURES,), "test")
    penalties = [r.penalty for r in ([L1(l1)] if l1 else []) + ([L2(l2)] if l2 else [])]
    constraints = [MaxNorm(max_norm).constrain] if max_norm else []
    clipper = GradClipper(list(model.parameters()), clip_value, clip_norm)
    return Trainer(model, splits, optimizer, clipper, Schedule(None, "step"), penalties, constraints)


def per_member(values: Sequence[float | None], missing: float) -> torch.Tensor:
    """(K,) strengths; a member without the technique gets the value that makes it a no-op."""
    return torch.tensor([missing if v is None else v for v in values])


def stacked_update(model: StackedModel, opt: StackedOptimizer, x: torch.Tensor, y: torch.Tensor,
                   settings: Sequence[dict[str, float | None]] = ()) -> torch.Tensor:
    """The stacked version of Trainer.update: loss + penalties, backward, clip, step, max-norm; returns (K,) losses."""
    def strength(key: str, missing: float) -> torch.Tensor | None:
        values = [s.get(key) for s in settings]
        return per_member(values, missing) if any(v is not None for v in values) else None

    losses = stacked_cross_entropy(model(x), y)
    total = losses
    for key, penalty in (("l1", stacked_l1), ("l2", stacked_l2)):
        lam = strength(key, 0.0)
        if lam is not None:
            total = total + penalty(model.weight_tensors(), lam)
    opt.zero_grad()
    total.sum().backward()
    stacked_clip_(model.stacked_parameters(), strength("clip_value", float("inf")), strength("clip_norm", float("inf")))
    opt.step()
    r = strength("max_norm", float("inf"))
    if r is not None:
        stacked_max_norm_(model.weight_tensors(hidden_only=True), r)
    return losses.detach()


def batch_indices(k: int, steps: int, seed: int = 1) -> torch.Tensor:
    """(steps, K, BATCH) sample indices: each member its own random batches from the one data set."""
    return torch.randint(0, N, (steps, k, BATCH), generator=torch.Generator().manual_seed(seed))


@dataclass
class Pair:
    """The same members trained stacked and solo (copies, through dnnlab's Trainer.update) on the same batches."""

    stacked: StackedModel
    opt: StackedOptimizer
    models: list[nn.Sequential]  # the members the stack was built from (write_back targets)
    member_opts: list[torch.optim.Optimizer]
    trainers: list[Trainer]  # the solo references
    settings: list[dict[str, float | None]]
    losses: list[torch.Tensor] = field(default_factory=list)  # (K,) per step, stacked
    solo_losses: list[torch.Tensor] = field(default_factory=list)

    @property
    def solo(self) -> list[nn.Module]:
        return [t.model for t in self.trainers]

    def train(self, steps: int, seed: int = 1) -> None:
        """`steps` steps of both, each member on its own random batches."""
        x, y = dataset()
        for idx in batch_indices(len(self.trainers), steps, seed):
            self.losses.append(stacked_update(self.stacked, self.opt, x[idx], y[idx], self.settings))
            self.solo_losses.append(torch.stack([t.update(x[i], y[i])[0] for t, i in zip(self.trainers, idx)]))

    def keep(self, indices: list[int]) -> None:
        """Members at `indices` stay (stack and references); the others leave."""
        self.stacked.keep(indices)
        self.opt.keep(indices)
        for name in ("models", "member_opts", "trainers", "settings"):
            setattr(self, name, [getattr(self, name)[i] for i in indices])


def run_both(models: list[nn.Sequential], make_optimizer: Callable[[int, nn.Module], torch.optim.Optimizer],
             steps: int = 5, settings: Sequence[dict[str, float | None]] | None = None) -> Pair:
    """Stack `models` and train them `steps` steps, and deep copies of them solo, on the same batches."""
    settings = list(settings) if settings is not None else [{} for _ in models]
    x, y = dataset()
    solo = copy.deepcopy(models)
    trainers = [solo_trainer(m, make_optimizer(i, m), x, y, **s) for i, (m, s) in enumerate(zip(solo, settings))]
    member_opts = [make_optimizer(i, m) for i, m in enumerate(models)]
    stacked = stack_models(models)
    pair = Pair(stacked, StackedOptimizer.from_members(member_opts, stacked), models, member_opts, trainers, settings)
    pair.train(steps)
    return pair


def assert_same_state(stacked: StackedModel, models: list[nn.Module], solo: list[nn.Module],
                      rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """The stack, written back into `models`, holds every member's solo parameters and buffers."""
    stacked.write_back(models)
    for k, (mine, ref) in enumerate(zip(models, solo)):
        theirs = ref.state_dict()
        for name, value in mine.state_dict().items():
            torch.testing.assert_close(value, theirs[name], rtol=rtol, atol=atol, msg=lambda m: f"member {k} {name}: {m}")
