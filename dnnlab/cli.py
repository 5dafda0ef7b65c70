"""The `dnnlab` command: `train` and `lr-find` are Hydra apps; the others take plain arguments.

A mistake the user can fix (bad config, missing data, unusable checkpoint, busy run folder) is
printed as one paragraph and exits 2; `--debug` (or HYDRA_FULL_ERROR=1) shows the traceback.
SIGINT/SIGTERM during training exit 130/143 after the run folder is left resumable.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

# command → "module:function"; each function takes the remaining argv and returns an exit code.
COMMANDS = {
    "train": "dnnlab.cli:train_main",
    "list": "dnnlab.config.catalog:main",
    "report": "dnnlab.commands.report:main",
    "lr-find": "dnnlab.commands.lr_find:main",
    "eval": "dnnlab.commands.evaluate:main",
    "export": "dnnlab.commands.export:main",
    "study": "dnnlab.studies:main",
}

USAGE = """usage: dnnlab [--debug] [--trust-config] COMMAND [ARGS]

commands:
  train [OVERRIDES]        train one run; -m for a sweep (Hydra multirun); --help for the config
  list [GROUP]             every config group and option with a one-line description
  report PATH...           a run or sweep folder → terminal table, report.md, PNG plots
  lr-find [OVERRIDES]      learning-rate range test: CSV + plot + suggested rate
  eval RUN [--mc-dropout N]  evaluate a run's best checkpoint on the test split
  export RUN --fold-bn     fold batch norm away for fast inference, measure latency
  study list | NAME [OVERRIDES]  the guides' claims as studies: arms × seeds, CIs and a verdict

runs:
  Ctrl-C or SIGTERM stops at the last finished epoch (exit 130/143; a second one exits at once), and
  `dnnlab train resume=RUN [trainer.epochs=N]` continues it exactly, with the run's own config.
  A NaN/inf loss stops a run as `diverged`; --debug shows the traceback behind an error message.
  A config read from a run folder or checkpoint may name only dnnlab's own options' callables;
  --trust-config lifts that for a folder you wrote yourself.

examples:
  dnnlab train
  dnnlab train resume=outputs/2026-11-23/14-25-02 trainer.epochs=40
  dnnlab train initializer=he_normal activation=elu normalization=batchnorm optimizer=nadam schedule=1cycle
  dnnlab train -m optimizer=sgd,nadam schedule=none,1cycle
  dnnlab study activations study.seeds=5
"""


def hydra_app(task, argv: list[str], prog: str) -> int:
    """Run `task(cfg)` as a Hydra app over `argv` (overrides and Hydra flags).

    A UserError from `task` is carried past Hydra (which would print a traceback) and raised here, for
    `main`'s one-paragraph report: the one place that does so.
    """
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from dnnlab.errors import UserError

    carried: list[UserError] = []

    @functools.wraps(task)
    def guarded(cfg: Any) -> Any:
        try:
            return task(cfg)
        except UserError as error:
            carried.append(error)
            return math.nan

    app = hydra.main(config_path="pkg://dnnlab.conf", config_name="config", version_base="1.3")(guarded)
    saved, sys.argv = sys.argv, [prog, *argv]
    try:
        app()
    finally:
        sys.argv = saved
        HydraConfig.instance().cfg = None  # the app is over: a later dnnlab.train() in this process is not its job
    if carried:
        raise carried[0]
    return 0


def train_task(cfg) -> float:
    """Hydra task: one training run; returns the best validation accuracy (for sweepers).

    A sweep job is matched to its sweep's folders by config (see sweeps.plan_job): re-running a
    sweep skips, resumes or restarts its jobs and never deletes a finished one (dnnlab.runs.sweep_job).
    """
    from hydra.core.hydra_config import HydraConfig

    from dnnlab.runs import sweep_job

    return sweep_job.run(cfg, HydraConfig.get())


@contextlib.contextmanager
def sweep_signals() -> Any:
    """While a sweep runs, SIGINT/SIGTERM reach joblib's worker processes too (see `forward_to_workers`)."""
    from dnnlab.runs.sweep_job import SWEEP_PID_ENV

    os.environ[SWEEP_PID_ENV] = str(os.getpid())  # inherited by the launcher's workers: they watch this process
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, forward_to_workers) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def forward_to_workers(signum: int, frame: Any) -> None:
    """The sweep's SIGINT/SIGTERM: pass it to joblib's workers, whose jobs stop at their next step and end the
    sweep as `Interrupted`; with no workers (jobs run in this process) stop here."""
    from dnnlab.errors import Interrupted

    workers = worker_processes()
    if not workers:
        raise Interrupted(signum)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def worker_processes() -> list[int]:
    """This process's joblib (loky) children, from /proc (Linux; elsewhere none: orphaned workers stop by themselves)."""
    workers = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == os.getpid() and b"loky" in (proc / "cmdline").read_bytes():
                workers.append(int(proc.name))
    return workers


class SweepReport(Callback):
    """Hydra callback (hydra.callbacks in config.yaml): after a sweep, collect the jobs that did not complete.

    It reads each job's summary.json, so it works with any launcher (local, joblib, SLURM).
    """

    outcome: list[dict[str, Any]] = []

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.started = time.time() - 1  # summaries older than the sweep belong to an earlier one
        SweepReport.outcome = []

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        import json

        from dnnlab.runs.rundir import RunDir

        summary_name = RunDir(".", create=False).summary_path.name
        for path in sorted(Path(config.hydra.sweep.dir).rglob(summary_name)):
            if path.stat().st_mtime >= getattr(self, "started", 0):
                with open(path) as f:
                    SweepReport.outcome.append({**json.load(f), "job_dir": str(path.parent)})


def sweep_exit_code() -> int:
    """Print the sweep jobs that failed or diverged; 1 when any failed."""
    import yaml

    from dnnlab.runs.rundir import RunDir
    from dnnlab.runs.sweep_job import refused

    bad = [s for s in SweepReport.outcome if s.get("status") in ("failed", "diverged")]
    for summary in bad:
        overrides_file = RunDir(summary["job_dir"], create=False).overrides_path
        overrides = " ".join(yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.exists() else ""
        what = summary.get("error") or summary.get("stop_reason", "")
        print(f"  {summary['job_dir']} ({overrides}): {summary['status']}: {what}", file=sys.stderr)
    failed = sum(s.get("status") == "failed" for s in bad)
    if bad:
        diverged = f", {len(bad) - failed} diverged" if len(bad) > failed else ""
        print(f"dnnlab: {failed} of {len(SweepReport.outcome)} sweep jobs failed{diverged} (listed above).", file=sys.stderr)
    if refused:
        jobs = "1 sweep job was" if len(refused) == 1 else f"{len(refused)} sweep jobs were"
        whose = "its folder was" if len(refused) == 1 else "their folders were"
        print(f"dnnlab: {jobs} not run, as {whose} taken (listed above: {', '.join(refused)}); nothing was "
              f"written there. Re-run the sweep once the process writing it has ended.", file=sys.stderr)
    return 1 if failed or refused else 0


def preflight(args: Any) -> Any:
    """Compose and validate before Hydra makes folders: a bad option, key, value, config file or output folder
    fails here, clearly. Returns the composed config (None when only Hydra's app can read the overrides)."""
    from omegaconf import OmegaConf, open_dict

    from dnnlab.config import schema
    from dnnlab.config.overrides import first_job
    from dnnlab.api import compose, resume_override
    from dnnlab.errors import UserError
    from dnnlab.runs.stacks import check_launcher

    overrides = list(args.overrides)
    try:
        if args.multirun:
            schema.check_sweep(overrides)
            overrides = first_job(overrides)
            if resume_override(overrides):  # jobs continue runs: Hydra's settings are not part of their config
                overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
        resuming = resume_override(overrides) is not None  # each job continues a run with the run's own config
        cfg = compose(overrides, config_dir=args.config_dir, with_hydra=not resuming)
    except UserError:
        raise
    except Exception:
        return None  # something only Hydra's app understands (a plugin's sweep syntax): Hydra reports it
    if not resuming:
        if args.cfg is None:  # --cfg only prints: it makes no folder
            check_output_dir(cfg, args.multirun)
            check_launcher(OmegaConf.select(cfg, "hydra.launcher"))
        with open_dict(cfg):
            del cfg["hydra"]
    if args.cfg is None:
        schema.validate(cfg)
        if not resuming:
            schema.check_file_keys(cfg, overrides, args.config_dir)
    return cfg


def check_output_dir(cfg: Any, multirun: bool) -> None:
    """The folder Hydra will make (hydra.run.dir, or hydra.sweep.dir with -m) resolves and can be made and written."""
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    from dnnlab.errors import ConfigError, StorageError

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False).get("subdir")
    if multirun and str(Path(str(subdir or "."))) == ".":
        raise ConfigError(f"hydra.sweep.subdir={subdir!r} puts every job of the sweep into one folder, where each would "
                          f"refuse or mix with the others' runs. Give each its own, e.g. hydra.sweep.subdir=${{hydra.job.num}} "
                          f"(the default).")
    raw = OmegaConf.to_container(OmegaConf.select(cfg, key.rpartition(".")[0]), resolve=False)["dir"]
    try:
        folder = Path(str(OmegaConf.select(cfg, key))).expanduser().absolute()
    except InterpolationResolutionError as error:
        if "'hydra." in str(error):
            return  # a value Hydra sets when the job starts (hydra.job.num, …)
        raise ConfigError(
            f"{key}={raw!r} does not resolve ({str(error).splitlines()[0]}). A folder may use config keys "
            f"(${{optimizer.lr}}), Hydra's values (${{now:%Y-%m-%d}}, ${{hydra.job.override_dirname}}) or plain text."
        ) from None
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise StorageError(f"{key}={folder} cannot be made: {existing} is a file. Give another folder ({key}=…).")
    if not os.access(existing, os.W_OK):
        raise StorageError(f"Cannot make the run folder {folder}: {existing} is not writable (a read-only file system "
                           f"or not yours). Run from a writable folder, or set {key}=A_WRITABLE_FOLDER.")
    try:  # the sure test: os.access says yes to root, whom /proc still refuses; the probe folder is removed
        os.rmdir(tempfile.mkdtemp(prefix=".dnnlab-probe-", dir=existing))
    except OSError as error:
        raise StorageError(f"Cannot make the run folder {folder}: {existing} refuses new folders ({error.strerror}: "
                           f"a read-only or special file system, or not yours). Run from a writable folder, or set "
                           f"{key}=A_WRITABLE_FOLDER.") from None


def special_flags(args: Any) -> bool:
    """Hydra flags that print or replace the config instead of running it (--help, --info, --config-name, …)."""
    return bool(args.help or args.hydra_help or args.info or args.shell_completion or args.experimental_rerun
                or args.config_path or args.config_name)


def train_main(argv: list[str]) -> int:
    """`dnnlab train`: a Hydra app, except `resume=RUN` (a single run), which continues in RUN's folder."""
    from hydra._internal.utils import get_args_parser  # Hydra's own flags: -m, --cfg, --help, …
    from omegaconf import OmegaConf

    from dnnlab.api import compose, resume_override, train
    from dnnlab.runs.sweep_job import raise_if_interrupted, refused

    args = get_args_parser().parse_args(argv)
    if not special_flags(args):
        if not args.multirun and args.cfg in (None, "job") and resume_override(args.overrides):
            # The run's own config, not the defaults; no Hydra app, whose fresh output folder would stay empty.
            cfg = compose(args.overrides)
            if args.cfg == "job":
                print(OmegaConf.to_yaml(cfg, resolve=args.resolve))
                return 0
            raise_if_interrupted(train(cfg))
            return 0
        preflight(args)
    refused.clear()
    SweepReport.outcome = []
    with sweep_signals() if args.multirun else contextlib.nullcontext():
        hydra_app(train_task, argv, "dnnlab train")
    return sweep_exit_code() if args.multirun else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if "--trust-config" in argv:  # configs read from disk may name any callable (see dnnlab.runs.safe_config)
        from dnnlab.runs.safe_config import TRUST_ENV

        os.environ[TRUST_ENV] = "1"
    argv = [a for a in argv if a not in ("--debug", "--trust-config")]
    if debug:
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's own errors with their full traceback too
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"dnnlab: unknown command {command!r}; valid: {', '.join(COMMANDS)}\n", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    module, func = COMMANDS[command].split(":")
    try:
        return getattr(importlib.import_module(module), func)(rest) or 0
    except BrokenPipeError:  # `dnnlab … | head`: the reader has gone; stop quietly, as other commands do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt as stop:  # Interrupted after training left last.pt; a bare one before training began
        if getattr(stop, "exit_code", None) is None:
            print("dnnlab: interrupted.", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
    except Exception as error:
        from dnnlab.errors import is_user_error, report_error, storage_error

        if not is_user_error(error):  # a full or read-only disk, wherever it was met, is a paragraph too
            error = storage_error(error) or error
        if debug or os.environ.get("HYDRA_FULL_ERROR") == "1" or not is_user_error(error):
            raise
        report_error(error)
        return getattr(error, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
