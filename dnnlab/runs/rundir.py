"""The run folder: metrics.jsonl, summary.json, checkpoints/, train.log, .hydra/config.yaml.

Everything a run leaves on disk is written here, and every file that could be read back half
written (checkpoints, summary) is written atomically: temp file, fsync, rename.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from omegaconf import DictConfig, OmegaConf

from dnnlab.errors import CheckpointError, ConfigError, RunFolderError, RunFolderTaken, writing
from dnnlab.engine.hooks import Hook
from dnnlab.config.schema import MONITOR_MODES

if TYPE_CHECKING:
    import torch


def _torch():
    """torch, imported on first use: `dnnlab report` reads run folders without it (≈2 s of start-up)."""
    import torch

    return torch

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
TEMP_SUFFIX = ".tmp"  # atomic_write's temp files: .<name>.<random>.tmp beside the target
LOCK_NAME = ".lock"
# The temp files dnnlab's writers leave when killed mid-write, by folder (relative to the run folder):
# atomic_write's .<name>.<random>.tmp of the files dnnlab writes there, and copy_checkpoint's link temp.
OWN_TEMP_FILES = {
    ".": r"\.(summary\.json|metrics\.jsonl|eval\.json|export\.json|lr_find\.json)\.\w+\.tmp",
    "checkpoints": r"\.[^/]+\.pt\.(\w+|\d+\.link)\.tmp",
    ".hydra": r"\.(config|overrides|hydra)\.yaml\.\w+\.tmp",
}
# A folder holding any of these holds a run: a new run there would mix with it.
RUN_MARKERS = ("metrics.jsonl", "summary.json", "checkpoints")
# Everything dnnlab writes into a run folder (train, eval, export, lr-find, report's report.md/.html and *.png):
# what trainer.overwrite=true moves aside.
RUN_ENTRIES = (".hydra", *RUN_MARKERS, "train.log", "tensorboard", "eval.json", "export.json", "export",
               "report.md", "report.html", "lr_find.csv", "lr_find.json", "lr_find.png")
# Keys a checkpoint must hold for `resume=` to continue a run exactly.
RESUME_KEYS = ("model", "optimizer", "schedule", "epoch", "step", "rng", "hooks")


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write via `write(file)` to a temp file beside `path`, fsync it, then rename it over `path`.

    A full or read-only disk is a StorageError naming `path`.
    """
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        try:
            with os.fdopen(fd, mode) as f:
                os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file gets the usual permissions
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make the renames in `folder` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunDir:
    """One run's folder and the files in it: the one owner of every path in a run folder.

    `create=False` names the paths of a folder that is only read (report, eval): nothing is made.
    """

    def __init__(self, path: str | os.PathLike, create: bool = True):
        self.path = Path(path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def hydra_dir(self) -> Path:
        return self.path / ".hydra"

    @property
    def config_path(self) -> Path:
        return self.hydra_dir / "config.yaml"

    @property
    def overrides_path(self) -> Path:
        return self.hydra_dir / "overrides.yaml"

    @property
    def launch_path(self) -> Path:
        """Hydra's own config of the job that started the run (.hydra/hydra.yaml)."""
        return self.hydra_dir / "hydra.yaml"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_path(self, name: str = "last") -> Path:
        return self.checkpoints_dir / f"{name}.pt"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.json"

    @property
    def export_path(self) -> Path:
        return self.path / "export.json"

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_MARKERS)

    def check_free(self, overwrite: bool = False) -> None:
        """RunFolderError unless a new run may start here: the folder holds no run, or `overwrite` may move it aside."""
        if not self.holds_run():
            return
        if not overwrite:
            found = ", ".join(name for name in RUN_MARKERS if (self.path / name).exists())
            raise RunFolderTaken(
                f"The folder {self.path} already holds a run ({found}); a new run there would mix its metrics and "
                f"checkpoints into that one. Continue that run with `dnnlab train resume={self.path}`, pick another "
                f"folder (hydra.run.dir=… or run_dir=…), or add trainer.overwrite=true to move the old run aside "
                f"into {self.path.absolute().name}.old-<n> beside it."
            )
        foreign = sorted(p.name for p in self.path.iterdir() if not self._is_run_entry(p.name))
        if foreign:
            raise RunFolderError(
                f"trainer.overwrite=true moves the run in {self.path} aside, but the folder also holds files dnnlab "
                f"did not write ({', '.join(foreign[:5])}{', …' if len(foreign) > 5 else ''}), which would stay "
                f"mixed with the new run. Move them away, or train into a folder of its own."
            )

    @staticmethod
    def _is_run_entry(name: str) -> bool:
        return name in (*RUN_ENTRIES, LOCK_NAME) or name.endswith(".png")

    def move_aside(self) -> Path:
        """Move the run in this folder (dnnlab's files; not the lock) into a new sibling <name>.old-<n>; returns it."""
        here = self.path.absolute()
        n = 1
        while True:
            target = here.parent / f"{here.name}.old-{n}"
            try:
                target.mkdir()
                break
            except FileExistsError:
                n += 1
        for entry in sorted(self.path.iterdir()):
            if entry.name != LOCK_NAME and self._is_run_entry(entry.name):
                shutil.move(entry, target / entry.name)  # a rename; a copy only across file systems
        fsync_dir(self.path)
        fsync_dir(target)
        return target

    def append_metrics(self, row: dict[str, Any]) -> None:
        with writing(self.metrics_path), open(self.metrics_path, "a") as f:
            f.write(json.dumps({k: finite_or_none(v) for k, v in row.items()}) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        lines = [(n, line) for n, line in enumerate(self.metrics_path.read_text().splitlines(), 1) if line.strip()]
        rows = []
        for i, (number, line) in enumerate(lines):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                if i < len(lines) - 1:
                    raise RunFolderError(
                        f"{self.metrics_path} is damaged: its line {number} is not JSON ({error.msg}: "
                        f"{line[:60]!r}). dnnlab writes whole rows, so another program changed the file; restore it, "
                        f"or delete that row to keep the others."
                    ) from None
                # The last row, cut short by a writer killed mid-append: its epoch was never checkpointed.
        return rows

    def keep_metrics_through(self, epoch: int) -> None:
        """Drop rows after `epoch` (written after the checkpoint a resume starts from)."""
        rows = [r for r in self.read_metrics() if r.get("epoch", 0) <= epoch]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(self.metrics_path, lambda f: f.write(text), mode="w")

    def write_summary(self, summary: dict[str, Any]) -> None:
        clean = {k: finite_or_none(v) for k, v in summary.items()}
        atomic_write(self.summary_path, lambda f: json.dump(clean, f, indent=2), mode="w")

    def read_summary(self) -> dict[str, Any]:
        try:
            with open(self.summary_path) as f:
                summary = json.load(f)
            if isinstance(summary, dict):
                return summary
            problem = f"it holds a JSON {type(summary).__name__}"
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            problem = " ".join(str(error).split())[:80]
        raise RunFolderError(
            f"{self.summary_path} is not a dnnlab summary (a JSON object): {problem}. dnnlab writes it atomically, so "
            f"another program changed it; delete it (the report then works from metrics.jsonl) or restore it."
        )

    def save_config(self, cfg: DictConfig, overwrite: bool = False) -> None:
        """Write the resolved config unless there is one (`overwrite`: a new run's, or a resumed run's new config)."""
        if overwrite or not self.config_path.exists():
            text = OmegaConf.to_yaml(cfg, resolve=True)
            atomic_write(self.config_path, lambda f: f.write(text), mode="w")

    def save_launch(self, hydra_cfg: DictConfig) -> None:
        """Hydra's record of the job that started this run, beside config.yaml: overrides.yaml and hydra.yaml.

        dnnlab writes them (hydra.output_subdir is null), under the lock and only for a run that goes ahead,
        so a refused process leaves the folder as it was.
        """
        for path, node in ((self.overrides_path, hydra_cfg.overrides.task), (self.launch_path, {"hydra": hydra_cfg})):
            text = OmegaConf.to_yaml(node)
            atomic_write(path, lambda f: f.write(text), mode="w")

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        keeps = (f"A checkpoint is replaced only once whole, so {self.path} keeps the last complete one, if any: "
                 f"free space, then continue with dnnlab train resume={self.path}.")
        with writing(self.checkpoint_path(name), after=keeps):
            atomic_write(self.checkpoint_path(name), lambda f: _torch().save(state, f))

    def copy_checkpoint(self, source: str, target: str) -> None:
        """Make `target` hold what `source` holds now, atomically: a hard link, no second serialization.

        Checkpoints are only ever replaced by rename, never rewritten in place, so the link keeps
        today's contents when `source` is replaced later.
        """
        src, dst = self.checkpoint_path(source), self.checkpoint_path(target)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link{TEMP_SUFFIX}")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:  # a file system without hard links: copy the bytes instead
            atomic_write(dst, lambda f: f.write(src.read_bytes()))
            return
        os.replace(tmp, dst)
        fsync_dir(dst.parent)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock file while writing; a second writer is refused at once.

        An OS file lock (filelock: flock/LockFileEx) dies with its process, so the lock file a killed
        run leaves behind does not block `resume=`.
        """
        from filelock import FileLock, Timeout

        if (self.path / LOCK_NAME).is_symlink():  # a lock that points elsewhere could make dnnlab create or truncate any file
            raise RunFolderError(f"{self.path / LOCK_NAME} is a symbolic link; dnnlab does not follow it. "
                                 f"Delete it (no dnnlab process leaves a link there) and run again.")
        lock = FileLock(self.path / LOCK_NAME, timeout=0)
        try:
            with writing(self.path / LOCK_NAME):
                lock.acquire()
        except Timeout:
            raise RunFolderTaken(
                f"The run folder {self.path} is in use by another dnnlab process (it holds {self.path / LOCK_NAME}). "
                f"Two writers would interleave its metrics and checkpoints: wait for that run to end or stop it, "
                f"or train into a new folder (without resume=)."
            ) from None
        try:
            self.remove_temp_files()
            yield
        finally:
            lock.release()

    def remove_temp_files(self) -> None:
        """Delete the temp files a dnnlab writer killed mid-write left (the real files are whole).

        Only dnnlab's own, by name and place: the folder may be a user's (`hydra.run.dir=.`).
        """
        for folder, pattern in OWN_TEMP_FILES.items():
            for tmp in (self.path / folder).glob(f".*{TEMP_SUFFIX}"):
                if re.fullmatch(pattern, tmp.name) and tmp.is_file():
                    tmp.unlink(missing_ok=True)

    def attach_log(self, logger: logging.Logger) -> logging.Handler:
        """Mirror `logger` into train.log; returns the handler so the caller can detach it."""
        handler = logging.FileHandler(self.path / "train.log", delay=True)  # no file until a line is logged
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        return handler


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing code from it (weights_only unpickling); CheckpointError if unusable."""
    import pickle

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


def remove_stray(path: str | os.PathLike) -> bool:
    """Remove a folder Hydra made for a job that wrote nothing (only .hydra/ and the lock); True if removed.

    Never one whose lock another process holds: a run setting up there has written nothing yet either.
    """
    path = Path(path)
    if not path.is_dir() or any(p.name not in (".hydra", LOCK_NAME) for p in path.iterdir()):
        return False
    hydra = path / ".hydra"
    if hydra.is_dir() and any(p.suffix != ".yaml" or p.is_dir() for p in hydra.iterdir()):
        return False
    try:
        with RunDir(path).lock():
            for p in hydra.glob("*.yaml"):
                p.unlink()
            with contextlib.suppress(FileNotFoundError):
                hydra.rmdir()
            (path / LOCK_NAME).unlink(missing_ok=True)
    except RunFolderTaken:
        return False
    try:
        path.rmdir()
    except OSError:  # something appeared meanwhile: not a stray
        return False
    with contextlib.suppress(OSError):  # also outputs/<date>/ and outputs/ when this was their only run
        path.parent.rmdir()
        path.parent.parent.rmdir()
    return True


class RunFolderHook(Hook):
    """Writes each epoch's metrics row, `last.pt` every epoch and `best.pt` on improvement."""

    key = "RunFolderHook"  # its state in checkpoints: stable, whatever the class is called

    def __init__(self, run: RunDir, monitor: str = "val_loss", mode: str = "min", config_yaml: str = ""):
        if mode not in MONITOR_MODES:
            raise ConfigError(f"trainer.monitor_mode={mode!r} is not valid; use {' or '.join(MONITOR_MODES)}")
        self.run, self.monitor, self.mode, self.config_yaml = run, monitor, mode, config_yaml
        self.best: float | None = None
        self.best_epoch = 0

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
        self.run.save_checkpoint("best", self.checkpoint(trainer))
        self.run.copy_checkpoint("best", "last")

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
