"""`logger=tensorboard`: every metrics key as a TensorBoard scalar, weights and gradients as
histograms, written with `torch.utils.tensorboard` into `<run>/tensorboard/`.

TensorBoard is an optional extra: `pip install -e ".[tensorboard]"`, then
`tensorboard --logdir outputs`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dnnlab.errors import UserError
from dnnlab.hooks import Hook
from dnnlab.initializers import WEIGHTED

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

    def __init__(self, run_dir: str, subdir: str = "tensorboard", histograms: bool = True):
        self.histograms = histograms
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
        for name, module in model.named_modules():
            if isinstance(module, WEIGHTED):
                self.writer.add_histogram(f"weight/{name}", module.weight.detach(), epoch)
                if module.weight.grad is not None:  # the last training step's gradient
                    self.writer.add_histogram(f"grad/{name}", module.weight.grad, epoch)

    def on_fit_end(self, trainer, summary: dict[str, Any]) -> None:
        self.writer.close()
