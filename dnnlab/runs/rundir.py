"""The run folder: metrics.jsonl, summary.json, checkpoints/, train.log, .hydra/config.yaml.

Everything a run leaves on disk is written here, and every file that could be read back half
written (checkpoints, summary) is written atomically: temp file, fsync, rename. Reading, finding
and checking checkpoints, and the hook that writes them each epoch, are in dnnlab.runs.checkpoints.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import DictConfig, OmegaConf

from dnnlab.errors import RunFolderError, RunFolderTaken, writing
from dnnlab.runs.writer import WRITER


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
        # Checkpoints go to disk on the background writer (dnnlab.runs.writer): a training run's folder, under its lock.
        self.background = False
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

    def save_checkpoint(self, name: str, state: dict[str, Any], then: Callable[[], None] | None = None) -> None:
        """Write checkpoint `name` holding `state` as it is now (on the background writer when `background`);
        `then()` once it is on disk."""
        path = self.checkpoint_path(name)
        if not self.background:
            self.write_checkpoint(path, lambda f: _torch().save(state, f), then)
            return
        buffer = io.BytesIO()
        _torch().save(state, buffer)  # the state of now; the disk's turn comes later
        WRITER.submit(self.path, lambda: self.write_checkpoint(path, lambda f: f.write(buffer.getbuffer()), then))

    def write_checkpoint(self, path: Path, write: Callable[[Any], None], then: Callable[[], None] | None = None) -> None:
        keeps = (f"A checkpoint is replaced only once whole, so {self.path} keeps the last complete one, if any: "
                 f"free space, then continue with dnnlab train resume={self.path}.")
        with writing(path, after=keeps):
            atomic_write(path, write)
        if then is not None:
            then()

    def copy_checkpoint(self, source: str, target: str) -> None:
        """Make `target` hold what `source` holds now, atomically: a hard link, no second serialization.

        Checkpoints are only ever replaced by rename, never rewritten in place, so the link keeps
        today's contents when `source` is replaced later. With `background`, after the writes asked for before.
        """
        if self.background:
            WRITER.submit(self.path, lambda: self.link_checkpoint(source, target))
        else:
            self.link_checkpoint(source, target)

    def link_checkpoint(self, source: str, target: str) -> None:
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

    def finish_writes(self) -> None:
        """Wait until this folder's checkpoints are on disk; raise the StorageError of one that could not be written."""
        WRITER.wait()
        WRITER.check(self.path)

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
            WRITER.wait()  # another process gets the folder with every checkpoint asked for on disk
            unreported = WRITER.take(self.path)
            if unreported is not None:  # the run ended (with another error) before it could be told
                logging.getLogger("dnnlab").error("%s", unreported)
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
