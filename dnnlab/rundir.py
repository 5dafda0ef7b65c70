"""The run folder: metrics.jsonl, summary.json, checkpoints/, train.log, .hydra/config.yaml.

Everything a run leaves on disk is written here, and every file that could be read back half
written (checkpoints, summary) is written atomically: temp file, fsync, rename.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from dnnlab.hooks import Hook

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write via `write(file)` to a temp file beside `path`, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunDir:
    """One run's folder and the files in it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def config_path(self) -> Path:
        return self.path / ".hydra" / "config.yaml"

    def checkpoint_path(self, name: str = "last") -> Path:
        return self.path / "checkpoints" / f"{name}.pt"

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({k: finite_or_none(v) for k, v in row.items()}) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        with open(self.metrics_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def keep_metrics_through(self, epoch: int) -> None:
        """Drop rows after `epoch` (written after the checkpoint a resume starts from)."""
        rows = [r for r in self.read_metrics() if r.get("epoch", 0) <= epoch]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(self.metrics_path, lambda f: f.write(text), mode="w")

    def write_summary(self, summary: dict[str, Any]) -> None:
        clean = {k: finite_or_none(v) for k, v in summary.items()}
        atomic_write(self.summary_path, lambda f: json.dump(clean, f, indent=2), mode="w")

    def read_summary(self) -> dict[str, Any]:
        with open(self.summary_path) as f:
            return json.load(f)

    def save_config(self, cfg: DictConfig) -> None:
        """Write the resolved config unless Hydra already did."""
        if not self.config_path.exists():
            text = OmegaConf.to_yaml(cfg, resolve=True)
            atomic_write(self.config_path, lambda f: f.write(text), mode="w")

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        atomic_write(self.checkpoint_path(name), lambda f: torch.save(state, f))

    def attach_log(self, logger: logging.Logger) -> logging.Handler:
        """Mirror `logger` into train.log; returns the handler so the caller can detach it."""
        handler = logging.FileHandler(self.path / "train.log")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        return handler


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing code from it (weights_only unpickling)."""
    return torch.load(path, map_location=map_location, weights_only=True)


class RunFolderHook(Hook):
    """Writes each epoch's metrics row, `last.pt` every epoch and `best.pt` on improvement."""

    def __init__(self, run: RunDir, monitor: str = "val_loss", mode: str = "min", config_yaml: str = ""):
        if mode not in ("min", "max"):
            raise ValueError(f"trainer.monitor_mode={mode!r} is not valid; use min or max")
        self.run, self.monitor, self.mode, self.config_yaml = run, monitor, mode, config_yaml
        self.best: float | None = None
        self.best_epoch = 0

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        self.run.append_metrics(metrics)
        logging.getLogger("dnnlab").info(
            "epoch %d  train_loss %.4f  train_acc %.4f  val_loss %.4f  val_acc %.4f  lr %.3g",
            metrics["epoch"], metrics["train_loss"], metrics["train_acc"],
            metrics["val_loss"], metrics["val_acc"], metrics["lr"],
        )
        if trainer.status == "diverged":
            return  # keep the last good checkpoints
        value = metrics[self.monitor]
        best = self.improved(value)
        if best:
            self.best, self.best_epoch = value, metrics["epoch"]
        state = trainer.state_dict()
        state["config"] = self.config_yaml
        if best:
            self.run.save_checkpoint("best", state)
        self.run.save_checkpoint("last", state)

    def on_fit_end(self, trainer, summary: dict[str, Any]) -> None:
        rows = self.run.read_metrics()
        best_row = next((r for r in rows if r["epoch"] == self.best_epoch), None)
        if best_row is not None:
            summary.update(best_epoch=self.best_epoch, best_val_loss=best_row["val_loss"], best_val_acc=best_row["val_acc"])
        if rows:
            last = rows[-1]
            summary.update({f"final_{k}": last[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")})
        summary["run_dir"] = str(self.run.path)
        self.run.write_summary(summary)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
