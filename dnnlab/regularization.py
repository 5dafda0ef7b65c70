"""Regularization (the `regularization` config group, a composable list).

Each regularizer acts at one place: the loss (`penalty`), the model's hidden blocks
(`dropout_layer`), after each optimizer step (`constrain`), or at the end of an epoch (a `Hook`).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from dnnlab.errors import ConfigError
from dnnlab.engine.hooks import Hook
from dnnlab.models import weights
from dnnlab.config.choices import MONITOR_MODES, require


class Regularizer:
    """A regularizer; it declares where it acts (`adds_penalty`, `constrains`), so no one sniffs its methods."""

    adds_penalty = False  # `penalty` adds a term to the loss
    constrains = False  # `constrain` acts on the model after every optimizer step

    def penalty(self, weights: list[torch.Tensor]) -> torch.Tensor | None:
        return None

    def dropout_layer(self) -> nn.Module | None:
        return None

    def constrain(self, model: nn.Module) -> None:
        return None


def penalties(regularizers: Sequence[Regularizer]) -> list[Callable[[list[torch.Tensor]], torch.Tensor]]:
    """The loss terms of the regularizers that add one (the trainer's `penalties`)."""
    return [r.penalty for r in regularizers if r.adds_penalty]


def constraints(regularizers: Sequence[Regularizer]) -> list[Callable[[nn.Module], None]]:
    """The after-step constraints of the regularizers that have one (the trainer's `constraints`)."""
    return [r.constrain for r in regularizers if r.constrains]


class L1(Regularizer):
    """λ·Σ|w| over all weights (biases excluded)."""

    adds_penalty = True

    def __init__(self, weight: float = 1e-5):
        self.weight = weight

    def penalty(self, weights: list[torch.Tensor]) -> torch.Tensor:
        return self.weight * sum(w.abs().sum() for w in weights)


class L2(Regularizer):
    """λ·Σw² over all weights (biases excluded), as Keras' `regularizers.l2`."""

    adds_penalty = True

    def __init__(self, weight: float = 1e-4):
        self.weight = weight

    def penalty(self, weights: list[torch.Tensor]) -> torch.Tensor:
        return self.weight * sum(w.square().sum() for w in weights)


class Dropout(Regularizer):
    """Dropout after every hidden block's activation (torch.nn.Dropout)."""

    def __init__(self, rate: float = 0.2):
        self.rate = rate

    def dropout_layer(self) -> nn.Module:
        return nn.Dropout(self.rate)


class AlphaDropout(Dropout):
    """Alpha dropout (torch.nn.AlphaDropout): keeps SELU activations' mean and variance."""

    def dropout_layer(self) -> nn.Module:
        return nn.AlphaDropout(self.rate)


class MaxNorm(Regularizer):
    """After every step, rescale each hidden unit's incoming weight vector (a row) to norm ≤ r."""

    constrains = True

    def __init__(self, r: float = 3.0):
        self.r = r
        self._weights: list[torch.Tensor] | None = None

    @torch.no_grad()
    def constrain(self, model: nn.Module) -> None:
        if self._weights is None:
            self._weights = weights(model, hidden_only=True)
        for w in self._weights:
            # renorm over dim 0 treats each output unit (row / filter) separately
            w.copy_(torch.renorm(w, p=2, dim=0, maxnorm=self.r))


class EarlyStopping(Regularizer, Hook):
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs (keras.callbacks.EarlyStopping)."""

    key = "EarlyStopping"  # its state in checkpoints: stable, whatever the class is called
    stage = "steer"  # after diagnostics (it may watch grad_norm/<layer>), before the checkpoint holding its state

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        patience: int = 5,
        min_delta: float = 0.0,
        restore_best: bool = True,
    ):
        require("regularization.early_stopping.mode", mode, MONITOR_MODES)
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta, self.restore_best = abs(min_delta), restore_best
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        if self.monitor not in metrics:
            raise ConfigError(
                f"regularization.early_stopping.monitor={self.monitor!r} is not a logged metric; "
                f"valid: {', '.join(sorted(k for k in metrics if '/' not in k))}"
            )
        value = metrics[self.monitor]
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, metrics["epoch"], 0
            if self.restore_best:
                self.best_weights = copy.deepcopy(trainer.model.state_dict())
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.stop(
                "early_stopped",
                f"{self.monitor} did not improve for {self.patience} epochs (best {self.best:.4g} at epoch {self.best_epoch})",
            )

    def on_train_end(self, trainer) -> None:
        if self.restore_best and self.best_weights is not None and trainer.status == "early_stopped":
            trainer.model.load_state_dict(self.best_weights)
            trainer.notes["restored_best_epoch"] = self.best_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.best_weights = state["best_weights"]
