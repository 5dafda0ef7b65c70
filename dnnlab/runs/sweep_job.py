"""One job of a sweep, as the train task and the stacked launcher both run it: where it trains
(matched to its sweep's folders by config, see sweeps.plan_job), then what its outcome means for its
folder and for the sweep.

`SweepJob.start` plans a job (skip a finished run, resume an interrupted one, restart a failed one,
or a new run; one printed line each); the job is trained by `api.train` (solo) or with others
(`api.train_stack`); `SweepJob.finish` turns its summary or error into the sweep's value (the best
validation accuracy, NaN for a failure) and its folder's last word.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from dnnlab import api
from dnnlab.errors import Interrupted, RunFolderTaken, StorageError, one_line, report_error
from dnnlab.runs.checkpoints import find_checkpoint, run_folder_of
from dnnlab.runs.rundir import RunDir, remove_stray
from dnnlab.runs.sweeps import plan_job

# What training a job gave: its summary, or the error (or interruption before training began) it stopped with.
Outcome = Union[dict[str, Any], Exception, KeyboardInterrupt]

# Sweep jobs this process did not run because their folder was taken (not failures).
refused: list[str] = []
# The sweep's own process id, for its jobs' worker processes (joblib) to tell that they are workers.
SWEEP_PID_ENV = "DNNLAB_SWEEP_PID"
_job_running = threading.Event()
_watching: list[threading.Thread] = []


def stop_when_orphaned() -> None:
    """In a sweep's worker process: once the sweep's process is gone (killed, Ctrl-C), stop as SIGTERM would.

    A killed parent does not take joblib's workers with it: they would go on training for nobody. The
    job in progress ends at its epoch boundary (`interrupted`, resumable), then the worker exits.
    """
    if os.environ.get(SWEEP_PID_ENV) in (None, str(os.getpid())) or _watching:
        return  # not a worker (the basic launcher runs jobs in the sweep's process), or already watching
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:  # re-parented the moment the parent dies, reaped or not
            time.sleep(0.2)
        if _job_running.is_set():
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler: stop at the next step, keep last.pt
            while _job_running.is_set():
                time.sleep(0.05)
        os._exit(128 + signal.SIGTERM)

    _watching.append(threading.Thread(target=watch, name="dnnlab-orphan-watch", daemon=True))
    _watching[0].start()


def job_config(cfg: DictConfig, hydra_cfg: DictConfig) -> DictConfig:
    """The config a job trains: with `resume=RUN` (a sweep over runs to continue) RUN's own, with the
    job's other overrides on top; else `cfg`."""
    if not cfg.resume:
        return cfg
    return api.resume_config(cfg.resume, [o for o in hydra_cfg.overrides.task if not o.startswith("resume=")])


@dataclass
class SweepJob:
    """A job on its way: the config it trains, Hydra's folder for it and the folder its run is in."""

    cfg: DictConfig
    hydra_cfg: DictConfig
    job_dir: Path  # Hydra's folder for the job
    folder: Path  # where its run is: a sweep job may be matched to another folder of its sweep
    sweep: bool
    outcome: Outcome | None = None  # known without training: a finished run's summary, or a planning error

    @classmethod
    def start(cls, cfg: DictConfig, hydra_cfg: DictConfig) -> "SweepJob":
        """Plan the job (its one line on stderr); an error on the way is its outcome, for `finish`."""
        job_dir = Path(hydra_cfg.runtime.output_dir)
        job = cls(cfg, hydra_cfg, job_dir, job_dir, hydra_cfg.mode == RunMode.MULTIRUN)
        if job.sweep:
            stop_when_orphaned()
        _job_running.set()
        try:
            job.plan()
        except (Exception, KeyboardInterrupt) as error:
            job.outcome = error
        return job

    def plan(self) -> None:
        if self.cfg.resume:  # each continues in its own folder
            self.cfg = job_config(self.cfg, self.hydra_cfg)
        elif self.sweep and not self.cfg.trainer.get("overwrite"):  # overwrite: its own folder, the old run moved aside
            plan = plan_job(self.job_dir, len(Path(str(self.hydra_cfg.sweep.subdir)).parts), self.cfg)
            self.folder = plan.folder
            print(plan.line(self.job_dir), file=sys.stderr)
            if plan.action == "skip":
                self.outcome = {"status": plan.status, **(plan.summary or {})}
            if plan.action == "resume":  # an interrupted or preempted job continues from its last.pt
                self.cfg = api.resume_config(self.folder)

    @property
    def run_dir(self) -> Path:
        """The folder it trains in: a continued run's own (`resume=`), else the planned one."""
        if self.cfg.resume:
            return run_folder_of(find_checkpoint(self.cfg.resume)) or self.job_dir
        return self.folder

    def train(self) -> Outcome:
        """Train it alone (`api.train`)."""
        try:
            return api.train(self.cfg, run_dir=None if self.cfg.resume else self.folder, hydra_cfg=self.hydra_cfg)
        except (Exception, KeyboardInterrupt) as error:
            return error

    def finish(self, outcome: Outcome) -> float:
        """The job's value for the sweep (best val accuracy; NaN for a failure in a sweep).

        In a sweep a job's error is recorded in its summary.json (`failed`) and the sweep goes on; a
        signal stops the whole sweep (`Interrupted` is a KeyboardInterrupt, which launchers pass on).
        Outside a sweep the error is raised (a UserError: hydra_app carries it to main).
        """
        try:
            if isinstance(outcome, BaseException):
                return self.failed(outcome)
        finally:
            if self.folder != self.job_dir:
                remove_stray(self.job_dir)  # Hydra made it, the job ran elsewhere
            _job_running.clear()
        if self.cfg.resume:
            remove_stray(self.job_dir)  # the run went on in its own folder
        raise_if_interrupted(outcome)
        return float(outcome.get("best_val_acc") or 0.0)

    def failed(self, error: BaseException) -> float:
        if isinstance(error, KeyboardInterrupt):  # Ctrl-C before training began
            remove_stray(self.job_dir)
            raise error
        if self.sweep and isinstance(error, RunFolderTaken):  # not this job's failure: write nothing there
            report_error(error, prefix=f"sweep job {self.job_dir} was not run: ")
            refused.append(str(self.folder))
            return math.nan
        if self.sweep:
            record_failure(self.folder, error, self.cfg, self.hydra_cfg)
            return math.nan
        if not isinstance(error, RunFolderTaken):  # a taken folder is another run's: leave it be
            remove_stray(self.job_dir)  # the error came before training: Hydra's folder holds nothing
        raise error


def run(cfg: DictConfig, hydra_cfg: DictConfig) -> float:
    """One job, trained alone: planned, trained, finished."""
    job = SweepJob.start(cfg, hydra_cfg)
    return job.finish(job.outcome if job.outcome is not None else job.train())


def raise_if_interrupted(summary: dict[str, Any]) -> None:
    """A run stopped by a signal ends the command (and a sweep) with 128 + the signal's number."""
    if summary["status"] == "interrupted":
        raise Interrupted(signal.Signals[summary["interrupted_by"]])


def record_failure(job_dir: Path, error: Exception, cfg: Any, hydra_cfg: Any) -> None:
    """Print a sweep job's error and make sure its folder says `failed` and which job it was (train
    writes both once training has begun)."""
    report_error(error, prefix=f"sweep job {job_dir} failed: ")
    run = RunDir(job_dir)
    with contextlib.suppress(StorageError):  # a full disk: the error printed above is all that can be recorded
        if not run.summary_path.exists():
            run.write_summary({"status": "failed", "error": one_line(error), "run_dir": str(job_dir)})
        if not run.config_path.exists():
            with contextlib.suppress(OmegaConfBaseException):  # the error may be an interpolation that does not resolve
                run.save_config(cfg)
            run.save_launch(hydra_cfg)
