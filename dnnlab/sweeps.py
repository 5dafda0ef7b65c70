"""Sweeps at scale: what a job does when its sweep is re-run, and how many CPU threads it may use.

Hydra's own launchers (basic, joblib, submitit local/SLURM) and sweepers (basic, Optuna) run the
jobs; this module only makes each job a good citizen of its sweep.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any

from hydra.experimental.callback import Callback

from omegaconf import DictConfig, OmegaConf

from dnnlab.rundir import RunDir

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


def same_job(run: RunDir, cfg: DictConfig) -> bool:
    """Whether the earlier attempt in this folder trained this very config (an Optuna re-run may not)."""
    from dnnlab.rundir import load_checkpoint

    path = run.checkpoint_path("last")
    if not path.exists():
        return False
    try:
        saved = load_checkpoint(path).get("config", "")
    except Exception:  # an unreadable checkpoint is no earlier attempt worth keeping
        return False
    return bool(saved) and without_resume(OmegaConf.create(saved)) == without_resume(cfg)


def without_resume(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data, minus `resume` (a resumed attempt records where it resumed from)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("resume", None)
    return data


def plan_job(run: RunDir, cfg: DictConfig) -> tuple[str, dict[str, Any] | None]:
    """What a re-run sweep job does in its folder: ('skip', summary) | ('resume', None) | ('fresh', None).

    Completed (or early-stopped) jobs are skipped, interrupted ones resume from last.pt, and failed or
    diverged ones start over — each only when the folder's checkpoint holds this job's config.
    """
    status = previous_status(run)
    if status is None:
        return "fresh", None
    if same_job(run, cfg):
        if status in ("completed", "early_stopped"):
            return "skip", run.read_summary()
        if status == "interrupted":
            return "resume", None
    clear_attempt(run)  # failed, diverged, or another config: keep nothing that could be mistaken for this attempt
    return "fresh", None


def clear_attempt(run: RunDir) -> None:
    """Remove an earlier failed attempt's outputs (metrics, checkpoints, summary), keeping .hydra/."""
    for path in (run.metrics_path, run.summary_path):
        path.unlink(missing_ok=True)
    shutil.rmtree(run.path / "checkpoints", ignore_errors=True)


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
