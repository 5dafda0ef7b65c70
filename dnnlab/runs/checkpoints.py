"""Checkpoints of a run: written each epoch by `RunFolderHook` (with the metrics row and, at the end, the
summary), found by `resume=`, loaded without running code, checked for what a resume or a model needs.

RunDir (dnnlab.runs.rundir) names every path and writes every file; this module decides when and reads back.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnnlab.config.choices import MONITOR_MODES, require
from dnnlab.engine.hooks import Hook
from dnnlab.errors import CheckpointError, ConfigError, RunFolderError
from dnnlab.runs.rundir import RESUME_KEYS, RunDir, _torch
from dnnlab.runs.writer import WRITER

if TYPE_CHECKING:
    import torch


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing code from it (weights_only unpickling); CheckpointError if unusable."""
    import pickle

    WRITER.wait()  # a checkpoint this process is still writing
    try:
        state = _torch().load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"The checkpoint {path} does not exist.") from None
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        if found is None:  # not a pickled object it refused: the bytes are not a pickle at all
            raise _unreadable(path, error) from None
        raise CheckpointError(
            f"The checkpoint {path} holds Python objects ({found.group(1)}) besides "
            f"tensors, numbers and containers. dnnlab loads checkpoints with torch.load(weights_only=True), so "
            f"nothing in a file can run code, and refuses this one. Use a checkpoint written by dnnlab."
        ) from None
    except Exception as error:  # torch reports truncation and garbage as RuntimeError, EOFError, KeyError, …
        raise _unreadable(path, error) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is a PyTorch file but not a dnnlab checkpoint (it has no model weights).")
    return state


def _unreadable(path: str | os.PathLike, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"The checkpoint {path} cannot be read: it is truncated or not a PyTorch file "
        f"({type(error).__name__}: {' '.join(str(error).split())[:100]}). "
        f"Use another checkpoint (the run's checkpoints/best.pt or last.pt)."
    )


def check_resumable(state: dict[str, Any], path: str | os.PathLike) -> None:
    """CheckpointError unless `state` has everything an exact resume needs."""
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"The checkpoint {path} cannot resume a run: it lacks {', '.join(missing)}. "
            f"Resume from a run folder or its checkpoints/last.pt."
        )


def model_mismatch(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> list[str]:
    """Each way the saved weights do not fit `model`: a layer whose shape differs, is missing or is extra."""
    own = model.state_dict()
    problems = [
        f"{k} is {list(v.shape)} in the checkpoint but {list(own[k].shape)} in the model"
        for k, v in saved.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in saved]
    extra = [k for k in saved if k not in own]
    if missing:
        problems.append(f"the model's {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in the checkpoint")
    if extra:
        problems.append(f"the checkpoint's {', '.join(extra)} {'is' if len(extra) == 1 else 'are'} not in the model")
    return problems


# The last.pt of each job folder of a sweep folder, as a glob pattern (RunDir spells the path; "*" is the job).
JOB_LAST = str(RunDir("*", create=False).checkpoint_path("last"))


def find_checkpoint(resume: str | os.PathLike) -> Path:
    """`resume=` names a run folder (→ its newest checkpoint, last.pt) or a checkpoint file; returns an absolute path."""
    WRITER.wait()
    path = Path(resume).expanduser().absolute()
    if path.is_file():
        return path
    run = RunDir(path, create=False)
    last = run.checkpoint_path("last")
    if last.is_file():
        best = run.checkpoint_path("best")  # newer than last.pt only when killed between the two writes
        newer = best.is_file() and checkpoint_epoch(best) > checkpoint_epoch(last) >= 0  # (an unreadable last.pt is reported)
        return best if newer else last
    if not path.exists():
        why = "it does not exist"
    elif not path.is_dir():
        why = "it is not a folder or a file"
    elif any(path.glob(JOB_LAST)):
        runs = sorted(p.parent.parent.name for p in path.glob(JOB_LAST))
        why = f"it is a sweep folder; resume one of its runs, e.g. resume={path / runs[0]} (runs: {', '.join(runs)})"
    else:
        why = f"it has no checkpoints/last.pt (it holds: {', '.join(sorted(p.name for p in path.iterdir())) or 'nothing'})"
    raise RunFolderError(
        f"resume={resume} is not a dnnlab run: {why}. Give a run folder (e.g. outputs/2026-01-31/12-00-00) "
        f"or a checkpoint file (…/checkpoints/last.pt)."
    )


def checkpoint_epoch(path: Path) -> int:
    """The epoch a checkpoint holds, -1 if it cannot be read (mmap: the tensors are not read)."""
    try:
        return int(_torch().load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:
        return -1


def run_folder_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint belongs to (<run>/checkpoints/<name>.pt), or None for a loose file."""
    run = RunDir(checkpoint.parent.parent, create=False)
    if checkpoint.parent.name == run.checkpoints_dir.name and (run.metrics_path.exists() or run.hydra_dir.is_dir()):
        return run.path
    return None


class RunFolderHook(Hook):
    """Writes each epoch's metrics row, `last.pt` every epoch and `best.pt` on improvement."""

    key = "RunFolderHook"  # its state in checkpoints: stable, whatever the class is called
    stage = "record"

    def __init__(self, run: RunDir, monitor: str = "val_loss", mode: str = "min", config_yaml: str = ""):
        require("trainer.monitor_mode", mode, MONITOR_MODES)
        self.run, self.monitor, self.mode, self.config_yaml = run, monitor, mode, config_yaml
        self.best: float | None = None
        self.best_epoch = 0
        self.best_epoch_on_disk = 0  # the epoch best.pt holds: a run whose newer best.pt failed reports this one

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def checkpoint(self, trainer) -> dict[str, Any]:
        state = trainer.state_dict()
        state["config"] = self.config_yaml
        return state

    def on_fit_start(self, trainer) -> None:
        # last.pt always holds the latest epoch boundary, from the start: an interrupt during the
        # first epoch (or the first epoch after a resume from best.pt) then resumes from here.
        self.run.save_checkpoint("last", self.checkpoint(trainer))

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        self.run.append_metrics(metrics)
        logging.getLogger("dnnlab").info(
            "epoch %d  train_loss %.4f  train_acc %.4f  val_loss %.4f  val_acc %.4f  lr %.3g",
            metrics["epoch"], metrics["train_loss"], metrics["train_acc"],
            metrics["val_loss"], metrics["val_acc"], metrics["lr"],
        )
        if trainer.status == "diverged":
            return  # keep the last good checkpoints
        if self.monitor not in metrics:
            raise ConfigError(
                f"trainer.monitor={self.monitor!r} is not a logged metric; "
                f"valid: {', '.join(sorted(k for k in metrics if '/' not in k))}"
            )
        value = metrics[self.monitor]
        if not self.improved(value):
            self.run.save_checkpoint("last", self.checkpoint(trainer))
            return
        self.best, self.best_epoch = value, metrics["epoch"]
        # best.pt first, then last.pt as a link to it. In between, best.pt is the newer state and
        # find_checkpoint resumes from it: at every instant the state a resume loads names best.pt's epoch as best.
        self.run.save_checkpoint("best", self.checkpoint(trainer), then=functools.partial(self.on_disk, self.best_epoch))
        self.run.copy_checkpoint("best", "last")

    def on_fit_end(self, trainer, summary: dict[str, Any]) -> None:
        # The summary speaks of the checkpoints: they must be on disk. One that could not be written fails the
        # run (its trainer then ends it `failed` and comes back here), unless the run failed already of another error.
        with contextlib.suppress(Exception) if trainer.status == "failed" else contextlib.nullcontext():
            self.run.finish_writes()
        rows = self.run.read_metrics()
        best_row = next((r for r in rows if r["epoch"] == self.best_epoch_on_disk), None)
        if best_row is not None:
            summary.update(best_epoch=self.best_epoch_on_disk, best_val_loss=best_row["val_loss"], best_val_acc=best_row["val_acc"])
        if rows:
            last = rows[-1]
            summary.update({f"final_{k}": last[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")})
        summary["run_dir"] = str(self.run.path)
        self.run.write_summary(summary)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.best_epoch_on_disk = self.best_epoch

    def on_disk(self, epoch: int) -> None:
        """best.pt now holds `epoch` (called by the writer once the file is whole)."""
        self.best_epoch_on_disk = epoch
