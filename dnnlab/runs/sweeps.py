"""Sweeps at scale: where a job runs when its sweep is re-run, and how many CPU threads it may use.

Hydra's own launchers (basic, joblib, submitit local/SLURM) and sweepers (basic, Optuna) run the
jobs; this module only makes each job a good citizen of its sweep.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dnnlab.runs.rundir import RunDir

log = logging.getLogger("dnnlab")


def sweep_job() -> DictConfig | None:
    """Hydra's config when this process is a job of a multirun sweep, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return hydra_cfg if hydra_cfg.mode == RunMode.MULTIRUN else None


def parallel_jobs(hydra_cfg: DictConfig) -> int:
    """How many jobs of this sweep share the machine: joblib's n_jobs (-1 = one per core), else 1."""
    launcher = hydra_cfg.launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n_jobs = int(launcher.get("n_jobs", -1))
    return (os.cpu_count() or 1) if n_jobs < 0 else max(1, n_jobs)


def thread_budget(requested: int | None, hydra_cfg: DictConfig | None) -> int | None:
    """torch intra-op threads: `trainer.threads` if set; in a parallel sweep cores ÷ jobs; else torch's default.

    A submitit job gets `cpus_per_task` when it is set (what SLURM actually reserved for it).
    """
    if requested:
        return int(requested)
    if hydra_cfg is None:
        return None
    cpus = hydra_cfg.launcher.get("cpus_per_task")
    if cpus:
        return int(cpus)
    jobs = parallel_jobs(hydra_cfg)
    return max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None


def previous_status(run: RunDir) -> str | None:
    """The status an earlier attempt left in this folder: summary.json's, 'interrupted' if only a checkpoint, or None."""
    if run.summary_path.exists():
        try:
            return json.loads(run.summary_path.read_text()).get("status")
        except (OSError, ValueError):
            pass  # an unreadable summary counts as no summary
    return "interrupted" if run.checkpoint_path("last").exists() else None


# Not part of what a job is: where it resumed from, how its folder was made free, and what the terminal shows and
# how many threads compute it (a re-run with another trainer.progress or trainer.threads finds its runs).
NOT_IDENTITY = (("resume",), ("trainer", "overwrite"), ("trainer", "progress"), ("trainer", "threads"))


def identity(data: dict[str, Any]) -> dict[str, Any]:
    """A job's resolved config as plain data, minus the keys in NOT_IDENTITY: equal identities, same job."""
    data = copy.deepcopy(data)
    for *parents, leaf in NOT_IDENTITY:
        node = data
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return data


def job_identity(cfg: DictConfig) -> dict[str, Any]:
    return identity(OmegaConf.to_container(cfg, resolve=True))


def folder_identity(run: RunDir) -> dict[str, Any] | None:
    """The identity of the job whose run this folder holds (its .hydra/config.yaml), or None."""
    try:
        text = run.config_path.read_text()
        if "${" in text:  # written by Hydra before dnnlab wrote .hydra/ itself: unresolved
            data = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
        else:  # dnnlab's own, resolved: plain YAML, read fast (a sweep compares every job folder)
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except Exception:  # no config, or one that does not read or resolve: no job to match
        return None
    return identity(data) if isinstance(data, dict) else None


@dataclass
class Plan:
    """What a sweep job does: skip (already done), resume, restart (a failed attempt) or new; and in which folder."""

    action: str
    folder: Path
    status: str | None = None
    summary: dict[str, Any] | None = None
    note: str = ""

    def line(self, job_dir: Path) -> str:
        what = {
            "skip": f"already {self.status} in {self.folder}: kept, skipped",
            "resume": f"was interrupted: resuming in {self.folder}",
            "restart": f"{self.status} before: starting over in {self.folder}",
            "new": f"new run in {self.folder}",
        }[self.action]
        return f"dnnlab: sweep job {job_dir} {what}{self.note}"


# A folder's status → how well a job whose config it holds is served by it (higher: prefer that folder).
# Diverged is a finished result like completed (the same config diverges again, and a study such as
# `clipping` measures the divergence rate): it is kept, not trained again.
FINISHED = ("completed", "early_stopped", "diverged")
PREFERENCE = {**dict.fromkeys(FINISHED, 3), "interrupted": 2}


def plan_job(job_dir: Path, depth: int, cfg: DictConfig) -> Plan:
    """Where a sweep job runs and what it does there, matched by config, not by Hydra's job number.

    A folder of the sweep holding this config's run is used: completed, early-stopped or diverged →
    skip, interrupted → resume, failed → start over (its outputs are cleared, under the lock).
    Else the job's own folder, unless it holds another config's run: that run is kept and the job
    goes to a new folder beside it. `depth`: how many levels below the sweep folder job folders lie.
    """
    want = job_identity(cfg)
    own = RunDir(job_dir)
    siblings = sorted(job_dir.parents[depth - 1].glob("/".join(["*"] * depth))) if depth else []  # subdir=.: none
    candidates = [job_dir, *(p for p in siblings if p != job_dir and p.is_dir())]
    matches = [(folder, status) for folder in candidates
               if (status := previous_status(RunDir(folder))) is not None and folder_identity(RunDir(folder)) == want]
    if matches:
        folder, status = max(matches, key=lambda m: (PREFERENCE.get(m[1], 1), m[0] == job_dir))
        run = RunDir(folder)
        if status in FINISHED:
            return Plan("skip", folder, status, run.read_summary())
        if status == "interrupted":
            return Plan("resume", folder, status)
        with run.lock():  # never clear what another process is writing
            if previous_status(run) == status:
                clear_attempt(run)
        return Plan("restart", folder, status)
    if previous_status(own) is None:
        return Plan("new", job_dir)
    return Plan("new", claim_folder(job_dir), note=f" ({job_dir} holds another config's run: kept)")


def claim_folder(job_dir: Path) -> Path:
    """A new, empty folder beside `job_dir` (<name>-<k>), made here so that no parallel job takes it too."""
    k = 1
    while True:
        folder = job_dir.with_name(f"{job_dir.name}-{k}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            k += 1


def clear_attempt(run: RunDir) -> None:
    """Remove an earlier failed attempt's outputs (metrics, checkpoints, summary), keeping .hydra/."""
    for path in (run.metrics_path, run.summary_path):
        path.unlink(missing_ok=True)
    shutil.rmtree(run.checkpoints_dir, ignore_errors=True)


class SharedStudy(Callback):
    """Hydra callback (hydra.callbacks in config.yaml): before an Optuna sweep with a storage starts,
    create its study once, so that several `dnnlab train -m` processes starting together on a fresh
    database do not race: two processes creating Optuna's tables at the same moment fail with
    "UNIQUE constraint failed: alembic_version" or "table alembic_version already exists"; the loser
    simply retries, now that the tables exist."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.get("sweeper") or {}
        if "optuna" in str(sweeper.get("_target_", "")).lower() and sweeper.get("storage"):
            prepare_study(str(sweeper.storage), sweeper.get("study_name"), sweeper.get("direction", "minimize"))


def prepare_study(storage: str, study_name: str | None, direction: Any, attempts: int = 5) -> None:
    """optuna.create_study(load_if_exists=True), retrying the schema-creation race of concurrent starts."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    directions = list(direction) if OmegaConf.is_list(direction) else [direction]
    for attempt in range(attempts):
        try:
            optuna.create_study(storage=storage, study_name=study_name, directions=[str(getattr(d, "name", d)) for d in directions],
                                load_if_exists=True)
            return
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
