"""The stacked launcher's work: load every job's config as the basic launcher does, plan each
(dnnlab.runs.sweep_job), partition the jobs that must train (dnnlab.runs.stacks), train each stack
with `dnnlab.api.train_stack` and every other job alone, and return one JobReturn per job, in order.

A job in a stack goes through what Hydra's `run_job` does for a job (its output folder, logging,
`on_job_start`/`on_job_end` callbacks, its JobReturn), with the training itself shared.
"""
from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn, JobRuntime, JobStatus, _flush_loggers, _save_config, configure_log, env_override, filter_overrides,
    run_job, setup_globals,
)
from omegaconf import OmegaConf, open_dict, read_write

from .stacked_launcher import StackedLauncher

log = logging.getLogger(__name__)
DIR_KEY, SUBDIR_KEY = "hydra.sweep.dir", "hydra.sweep.subdir"


class Job:
    """One job of the launch: its sweep config (job number, output folder set) and, once begun, its JobReturn."""

    def __init__(self, launcher: StackedLauncher, idx: int, overrides: Sequence[str]) -> None:
        self.launcher, self.idx, self.overrides = launcher, idx, list(overrides)
        config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, self.overrides)
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        HydraConfig.instance().set_config(config)  # the subdir may name the job: ${hydra.job.num}
        output_dir = os.path.join(str(OmegaConf.select(config, DIR_KEY)), str(OmegaConf.select(config, SUBDIR_KEY)))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(output_dir)
        self.config = config
        self.activate()
        self.hydra_cfg = HydraConfig.get()
        self.task_cfg = copy.deepcopy(config)
        with read_write(self.task_cfg), open_dict(self.task_cfg):
            del self.task_cfg["hydra"]
        self.ret: JobReturn | None = None
        self.sweep_job: Any = None  # dnnlab.runs.sweep_job.SweepJob, once planned

    @property
    def output_dir(self) -> str:
        return str(self.config.hydra.runtime.output_dir)

    def activate(self) -> None:
        """Make this job Hydra's current one (interpolations such as ${hydra:job.num} read it)."""
        HydraConfig.instance().set_config(self.config)

    def run_alone(self) -> JobReturn:
        """As the basic launcher runs a job: Hydra's run_job with the task function (which plans the job itself)."""
        self.ret = run_job(hydra_context=self.launcher.hydra_context, task_function=self.launcher.task_function,
                           config=self.config, job_dir_key=DIR_KEY, job_subdir_key=SUBDIR_KEY)
        return self.ret

    def begin(self) -> None:
        """What run_job does before the task: folder, logging, .hydra/ (if Hydra writes it), on_job_start;
        then plan the job, with its config resolved under its own Hydra config."""
        from dnnlab.runs.sweep_job import SweepJob

        self.activate()
        Path(self.output_dir).mkdir(parents=True, exist_ok=True)
        hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
        self.ret = JobReturn(overrides=OmegaConf.to_container(self.config.hydra.overrides.task), cfg=self.task_cfg,
                             hydra_cfg=hydra_cfg, working_dir=os.getcwd())
        configure_log(self.config.hydra.job_logging, self.config.hydra.verbose)
        if self.config.hydra.output_subdir is not None:
            folder = Path(self.output_dir) / str(self.config.hydra.output_subdir)
            _save_config(self.task_cfg, "config.yaml", folder)
            _save_config(hydra_cfg, "hydra.yaml", folder)
            _save_config(self.config.hydra.overrides.task, "overrides.yaml", folder)
        with env_override(self.config.hydra.job.env_set):
            self.launcher.hydra_context.callbacks.on_job_start(config=self.config, task_function=self.launcher.task_function)
        self.sweep_job = SweepJob.start(copy.deepcopy(self.task_cfg), self.hydra_cfg)
        if self.sweep_job.outcome is None:
            try:  # a stack trains under one job's Hydra config: each member's ${hydra:…} is read now, under its own
                OmegaConf.resolve(self.sweep_job.cfg)
            except Exception:
                pass  # does not resolve: it trains alone (stacks.stack_key) and fails there, recorded as usual

    def end(self, value: Any) -> None:
        """What run_job does after the task: the JobReturn's value and status, on_job_end."""
        self.activate()
        self.ret.return_value = value
        self.ret.status = JobStatus.COMPLETED
        self.ret.task_name = JobRuntime.instance().get("name")
        _flush_loggers()
        self.launcher.hydra_context.callbacks.on_job_end(config=self.config, job_return=self.ret)

    def finish(self, outcome: Any) -> None:
        self.end(self.sweep_job.finish(outcome))

    def abandon(self) -> None:
        """A job planned but not finished: remove the folders it made, if they hold nothing."""
        from dnnlab.runs.rundir import remove_stray

        if self.sweep_job is not None and self.ret.status == JobStatus.UNKNOWN:
            remove_stray(self.sweep_job.folder)
            remove_stray(self.sweep_job.job_dir)

    def line(self, text: str) -> None:
        print(f"dnnlab: sweep job {self.output_dir} {text}", file=sys.stderr)


def launch(launcher: StackedLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    # dnnlab (and torch) are imported once jobs are launched: Hydra imports this package at every start.
    from dnnlab.runs import stacks

    setup_globals()
    assert launcher.config is not None and launcher.hydra_context is not None and launcher.task_function is not None
    stacks.check_max_stack(launcher.max_stack)
    stacks.check_min_speedup(launcher.min_speedup)
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    log.info(f"Launching {len(job_overrides)} jobs, stacked where they can train together")
    previous, jobs = HydraConfig.instance().cfg, []
    try:
        for i, overrides in enumerate(job_overrides):
            jobs.append(Job(launcher, initial_job_idx + i, overrides))
            log.info(f"\t#{jobs[-1].idx} : {' '.join(filter_overrides(jobs[-1].overrides))}")
        why = launch_reason(launcher)
        if why is not None:
            print(f"dnnlab: hydra/launcher=stacked runs these {len(jobs)} jobs one after another: {why}", file=sys.stderr)
            return [job.run_alone() for job in jobs]
        for unit in units(jobs, launcher.max_stack):
            run_unit(unit, launcher.min_speedup)
        return [job.ret for job in jobs]
    except BaseException:  # a signal (or a bug): jobs planned but never trained leave no empty folders behind
        for job in jobs:
            job.abandon()
        raise
    finally:
        HydraConfig.instance().cfg = previous


def launch_reason(launcher: StackedLauncher) -> str | None:
    """Why no job of this launch can stack, or None."""
    from dnnlab.cli import train_task

    task = inspect.unwrap(launcher.task_function)
    if task is not train_task:
        return f"only the jobs of `dnnlab train` stack, not those of `{sys.argv[0]}` ({task.__module__})"
    if launcher.config.hydra.job.chdir:
        return "hydra.job.chdir=true, and the members of a stack cannot each run in their own working directory"
    return None


def units(jobs: list[Job], max_stack: int | None) -> list[list[Job]]:
    """The launch's jobs as units of work, in order of their first job: a job with no stacked form (alone,
    through run_job), and the planned jobs in stacks (a unit of one trains alone, planned)."""
    from dnnlab.runs import stacks
    from dnnlab.runs.sweep_job import job_config

    found: list[list[Job]] = []
    planned: dict[str, list[Job]] = {}  # a stack shares its Hydra job settings (env_set) too
    claimed: dict[Path, int] = {}  # the folders planned so far → their job
    for job in jobs:
        job.activate()
        try:
            why = stacks.solo_reason(job_config(job.task_cfg, job.hydra_cfg), job.hydra_cfg.runtime.choices)
        except Exception:  # the config does not resolve, or resume= names no run: its job says so when it runs
            why = None
        if why is not None:
            job.line(f"runs solo: {why}")
            found.append([job])
            continue
        job.begin()
        if job.sweep_job.outcome is not None:  # a finished run kept, or an error: nothing to train
            job.finish(job.sweep_job.outcome)
            continue
        apart_from(claimed, job)
        claimed[job.sweep_job.run_dir] = job.idx
        planned.setdefault(json.dumps(OmegaConf.to_container(job.config.hydra.job.env_set), sort_keys=True), []).append(job)
    for group in planned.values():
        found += [[group[i] for i in indices] for indices in stacks.partition([j.sweep_job.cfg for j in group], max_stack)]
    return sorted(found, key=lambda unit: unit[0].idx)


def apart_from(claimed: dict[Path, int], job: Job) -> None:
    """A new run planned into a folder an earlier job of this launch was planned into (a constant
    hydra.sweep.subdir) trains in a folder of its own beside it, as it would after that job under the basic launcher."""
    from dnnlab.runs.sweeps import claim_folder

    planned = job.sweep_job.run_dir
    if planned in claimed and not job.sweep_job.cfg.resume:
        job.sweep_job.folder = claim_folder(planned)
        job.line(f"is planned into {planned}, as job {claimed[planned]} is: it trains in {job.sweep_job.folder}")


def run_unit(unit: list[Job], min_speedup: float | None) -> None:
    """Train a unit: a job alone, or a stack; a signal ends the launch once every member is finished."""
    from dnnlab.api import StackMember, train_stack

    first = unit[0]
    if first.sweep_job is None:
        first.run_alone()
        return
    if len(unit) == 1:
        first.activate()
        first.finish(first.sweep_job.train())
        return
    print(f"dnnlab: sweep jobs {', '.join(str(job.idx) for job in unit)} form a stack of {len(unit)}", file=sys.stderr)
    members = [StackMember(job.sweep_job.cfg, job.sweep_job.run_dir, job.hydra_cfg) for job in unit]
    first.activate()
    try:
        with env_override(first.config.hydra.job.env_set):
            outcomes = train_stack(members, min_speedup=min_speedup)
    except KeyboardInterrupt as stop:  # before the members had their summaries
        outcomes = [stop] * len(unit)
    stop = None
    for job, outcome in zip(unit, outcomes, strict=True):
        try:
            job.finish(outcome)
        except KeyboardInterrupt as error:  # Interrupted: every member's folder is left resumable first
            stop = stop or error
    if stop is not None:
        raise stop
