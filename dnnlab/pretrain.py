"""What a model is trained to do (`model.task`): classify, reconstruct its input, or tell real inputs
from corrupted ones — the last two need no labels, so they pretrain layers for `model.pretrained`.

A task turns the loaded data into the data the model trains on (`prepare`), supplies the loss and
the score the trainer counts, and any hooks its training needs.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import replace
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from dnnlab.data import Splits
from dnnlab.errors import ConfigError
from dnnlab.engine.hooks import Hook
from dnnlab.models import encoder_decoder_pairs, stem
from dnnlab.schedules import Schedule
from dnnlab.engine.trainer import Trainer, count_correct

log = logging.getLogger("dnnlab")


class Classification:
    """The data as loaded; cross-entropy loss; accuracy."""

    def __init__(self) -> None:
        self.loss_fn: nn.Module = nn.CrossEntropyLoss()
        self.score_fn = count_correct

    def prepare(self, data: Splits) -> Splits:
        return data

    def hooks(self, optimizer_cfg: DictConfig) -> list[Hook]:
        return []


def no_score(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A zero count: the trainer's accuracy slot, which `NoAccuracy` then reports as NaN (null)."""
    return torch.zeros((), dtype=torch.long, device=output.device)


class NoAccuracy(Hook):
    """Report train/val/test accuracy as NaN (null in JSON): a reconstruction has no accuracy (stage `measure`:
    the row and summary say so when written)."""

    stage = "measure"

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        metrics["train_acc"] = metrics["val_acc"] = math.nan

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        summary["test_acc"] = math.nan


class Reconstruction(Classification):
    """Autoencoder: the target is the flattened input itself (labels unused); mean squared error.

    `greedy_epochs > 0` first trains the stack one encoder/decoder pair at a time, each pair for
    that many epochs on the codings of the (frozen) pairs below it ("training one autoencoder at a
    time", Géron ch. 17; Bengio et al. 2007), then fine-tunes the whole stack for `trainer.epochs`.
    `greedy_epochs = 0` trains the whole stack at once.
    """

    def __init__(self, greedy_epochs: int = 0) -> None:
        if greedy_epochs < 0:
            raise ConfigError(f"model.task.greedy_epochs={greedy_epochs} is not valid; use 0 (train the whole "
                             f"autoencoder at once) or a positive number of epochs per layer")
        self.greedy_epochs = greedy_epochs
        self.loss_fn = nn.MSELoss()
        self.score_fn = no_score

    def prepare(self, data: Splits) -> Splits:
        return replace(data, train_y=data.train_x.flatten(1), val_y=data.val_x.flatten(1), test_y=data.test_x.flatten(1))

    def hooks(self, optimizer_cfg: DictConfig) -> list[Hook]:
        hooks: list[Hook] = [NoAccuracy()]
        if self.greedy_epochs:
            hooks.append(GreedyLayerwise(optimizer_cfg, self.greedy_epochs))
        return hooks


class RealVsCorrupted(Classification):
    """Self-supervised auxiliary task: is this input real (1) or corrupted (0)? Labels unused.

    Each split becomes its real inputs plus one corrupted copy of each, in which a `corruption`
    fraction of the features is replaced by the same features of another random input of the
    split — the guides' "good vs bad sentence" task, where a word is swapped for a random one.
    Swapping keeps every feature's distribution, so only the joint structure gives it away.
    """

    def __init__(self, corruption: float = 0.3, seed: int = 0) -> None:
        if not 0.0 < corruption <= 1.0:
            raise ConfigError(f"model.task.corruption={corruption} is not valid; use the fraction of features "
                             f"to corrupt, a number in (0, 1]")
        super().__init__()
        self.corruption, self.seed = corruption, seed

    def prepare(self, data: Splits) -> Splits:
        gen = torch.Generator().manual_seed(self.seed)
        parts = {}
        for split in ("train", "val", "test"):
            x, y = self.real_and_corrupted(getattr(data, f"{split}_x"), gen)
            parts.update({f"{split}_x": x, f"{split}_y": y})
        return replace(data, **parts, n_classes=2, name=f"{data.name}-real-vs-corrupted")

    def real_and_corrupted(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs followed by their corrupted copies, shuffled, with labels 1 = real, 0 = corrupted."""
        n = len(x)
        flat = x.flatten(1)
        donors = flat[torch.randint(n, (n,), generator=gen)]
        mask = torch.rand(flat.shape, generator=gen) < self.corruption
        corrupted = torch.where(mask, donors, flat).view_as(x)
        both = torch.cat([x, corrupted])
        labels = torch.cat([torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)])
        order = torch.randperm(2 * n, generator=gen)
        return both[order], labels[order]


def build_task(model_cfg: DictConfig) -> Classification:
    """The configured `model.task` (classification when the config predates tasks)."""
    from hydra.utils import instantiate

    node = model_cfg.get("task")
    return instantiate(node) if node is not None else Classification()


class GreedyLayerwise(Hook):
    """At the start of the first epoch, train each encoder/decoder pair of a stacked autoencoder on its own.

    Pair k is `hidden{k}` + `decode{k}`; it learns to reconstruct the codings of `hidden{k-1}`
    (the input for k = 1), computed once with the trained pairs below it in eval mode.

    Pretraining belongs to the first epoch: the epoch-0 `last.pt` (written before it) holds the
    state before pretraining, so a resume from it pretrains again from the same weights and RNG
    states — exactly — and a resume from a later epoch does not. A signal during pretraining stops
    the inner trainers and, through the outer one, the run (its first epoch is then discarded).
    """

    key = "GreedyLayerwise"  # its state in checkpoints: stable, whatever the class is called
    stage = "steer"

    def __init__(self, optimizer_cfg: DictConfig, epochs: int) -> None:
        self.optimizer_cfg, self.epochs = optimizer_cfg, epochs
        self.stages: list[dict[str, Any]] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.stages:  # resumed after pretraining: the summary still reports it
            trainer.notes["greedy_stages"] = self.stages

    def on_epoch_start(self, trainer: Trainer) -> None:
        if trainer.epoch > 0 or trainer.interrupted is not None:
            return
        pairs = encoder_decoder_pairs(trainer.model)
        stages = []
        codings = self.codings(stem(trainer.model), trainer.data)
        for name, encoder, decoder in pairs:
            losses = self.train_pair(nn.Sequential(encoder, decoder), codings, trainer)
            if losses is None:
                log.warning("greedy pretraining interrupted at %s/%d; a resume pretrains again from the start", name, len(pairs))
                return
            stages.append({"layer": name, "first_val_loss": losses[0], "val_loss": losses[1]})
            log.info("greedy pretraining %s/%d: val reconstruction loss %.4f → %.4f", name, len(pairs), *losses)
            codings = self.codings(encoder, codings)
        self.stages = trainer.notes["greedy_stages"] = stages

    @torch.no_grad()
    def codings(self, encoder: nn.Module, data: Splits) -> Splits:
        """`data` passed through `encoder` in eval mode; inputs and targets are both the codings."""
        encoder.eval()
        out = {}
        for split in ("train", "val", "test"):
            h = encoder(getattr(data, f"{split}_x"))
            out.update({f"{split}_x": h, f"{split}_y": h})
        return replace(data, **out, input_shape=tuple(out["train_x"].shape[1:]))

    def train_pair(self, pair: nn.Module, data: Splits, outer: Trainer) -> tuple[float, float] | None:
        """Train one shallow autoencoder; its validation loss before and after (None when a signal stopped it)."""
        from dnnlab.optim import build_optimizer

        optimizer, clipper = build_optimizer(self.optimizer_cfg, pair.parameters())
        inner = InnerTrainer(
            outer, pair, data, optimizer, clipper, Schedule(None, "epoch"), hooks=[History()],
            epochs=self.epochs, batch_size=outer.batch_size, eval_batch_size=outer.eval_batch_size,
            seed=int(outer.generator.initial_seed()), loss_fn=nn.MSELoss(), score_fn=no_score,
        )
        first = inner.evaluate(data.val_x, data.val_y)[0].item()
        inner.fit()
        if inner.status == "interrupted":
            return None
        return first, inner.hooks[0].rows[-1]["val_loss"]

    def state_dict(self) -> dict[str, Any]:
        return {"stages": self.stages}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stages = state.get("stages", [])


class InnerTrainer(Trainer):
    """A trainer run inside another's `fit`: the outer one's signal handlers stay, its stop flag is shared,
    and only the outer one reports the stop (the inner one has no run folder or checkpoint)."""

    def __init__(self, outer: Trainer, *args: Any, **kwargs: Any) -> None:
        self.outer = outer
        super().__init__(*args, **kwargs)

    @property
    def interrupted(self) -> int | None:  # type: ignore[override]
        return self.outer.interrupted

    @interrupted.setter
    def interrupted(self, signum: int | None) -> None:
        if signum is not None:
            self.outer.interrupt(signum)

    def stop_on_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # the outer trainer's handlers catch the signal

    def stopped_by_signal(self, partial_epoch: bool) -> None:
        self.stop("interrupted", "")


class History(Hook):
    """Keeps every epoch's metrics row in memory."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.rows.append(dict(metrics))

