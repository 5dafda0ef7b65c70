"""`logger=tensorboard`: every metrics key as a TensorBoard scalar, weights and gradients as
histograms, and at the end an HParams summary (the technique and swept keys, the final metrics),
written with `torch.utils.tensorboard` into `<run>/tensorboard/`; `tensorboard --logdir
multirun/DIR` then shows a sweep in the HParams table and parallel-coordinates views.

TensorBoard is an optional extra: `pip install -e ".[tensorboard]"`, then
`tensorboard --logdir outputs`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dnnlab.errors import UserError
from dnnlab.engine.hooks import Hook
from dnnlab.models import weighted_layers

TECHNIQUES = ("data", "model", "initializer", "activation", "normalization", "optimizer", "schedule")
VALUES = ("optimizer.lr", "trainer.batch_size", "trainer.epochs", "model.depth", "model.width", "seed")
FINAL = ("test_acc", "test_loss", "best_val_acc", "best_val_loss", "final_train_loss", "final_val_loss",
         "final_train_acc", "final_val_acc")  # summary keys shown as the HParams view's metrics, tagged final/<key>

MISSING = (
    "logger=tensorboard needs the tensorboard package, which is an optional extra of dnnlab and is not "
    'installed: pip install -e ".[tensorboard]" (or pip install tensorboard), or use logger=none. ({error})'
)


class MissingExtra(UserError, ImportError):
    """An optional dependency that the chosen config needs is not installed."""


def summary_writer(log_dir: Path):
    """torch.utils.tensorboard.SummaryWriter, or a clear error naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise MissingExtra(MISSING.format(error=error)) from error
    return SummaryWriter(log_dir=str(log_dir))


class TensorBoardHook(Hook):
    """Scalars each epoch (every numeric metrics key); weight and last-step gradient histograms."""

    stage = "report"  # after the run folder's hook: the HParams view gets the finished summary

    def __init__(self, run_dir: str, subdir: str = "tensorboard", histograms: bool = True, config: DictConfig | None = None):
        self.histograms, self.config = histograms, config
        self.writer = summary_writer(Path(run_dir) / subdir)  # fails now, before any training

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        epoch = metrics["epoch"]
        for key, value in metrics.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, epoch)
        if self.histograms:
            self.add_histograms(trainer.model, epoch)
        self.writer.flush()

    def add_histograms(self, model, epoch: int) -> None:
        for name, module in weighted_layers(model):
            self.writer.add_histogram(f"weight/{name}", module.weight.detach(), epoch)
            if module.weight.grad is not None:  # the last training step's gradient
                self.writer.add_histogram(f"grad/{name}", module.weight.grad, epoch)

    def on_fit_end(self, trainer, summary: dict[str, Any]) -> None:
        if self.config is not None:
            self.add_hparams(hparams(self.config, *hydra_job()), summary, trainer.epoch)
        self.writer.close()

    def add_hparams(self, values: dict[str, Any], summary: dict[str, Any], step: int) -> None:
        """The HParams plugin's experiment and session summaries plus the final metrics as scalars, in
        this run's own event file (SummaryWriter.add_hparams would put them in a new timestamped run)."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        metrics = {f"final/{k}": float(summary[k]) for k in FINAL
                   if isinstance(summary.get(k), (int, float)) and math.isfinite(summary[k])}
        for summary_proto in hparams_summaries(values, metrics):
            self.writer.file_writer.add_summary(summary_proto)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)


def hydra_job() -> tuple[dict[str, str], list[str]]:
    """This Hydra job's config-group choices and its command-line overrides (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}, []
    hydra_cfg = HydraConfig.get()
    return dict(hydra_cfg.runtime.choices), list(hydra_cfg.overrides.task)


def hparams(cfg: DictConfig, choices: dict[str, str], overrides: list[str]) -> dict[str, Any]:
    """The run's hyper-parameters as HParams values: each technique's option name (Hydra's choice,
    else its class name), the regularizers, the key numbers, and every override given (the swept keys)."""
    values: dict[str, Any] = {}
    for group in TECHNIQUES:
        node = cfg.get(group)
        target = str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""
        values[group] = choices.get(group) or target.rsplit(".", 1)[-1] or "none"
    values["regularization"] = ",".join(cfg.get("regularization") or {}) or "none"
    for key in [*VALUES, *(o.split("=", 1)[0].lstrip("+~") for o in overrides)]:
        if key in values or key.startswith("hydra") or key in choices:
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, (bool, int, float, str)):
            values[key] = value
        elif value is not None:
            values[key] = str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
    return values
