"""The `dnnlab` command: `train` and `lr-find` are Hydra apps; the others take plain arguments.

A mistake the user can fix (bad config, missing data, unusable checkpoint, busy run folder) is
printed as one paragraph and exits 2; `--debug` (or HYDRA_FULL_ERROR=1) shows the traceback.
SIGINT/SIGTERM during training exit 130/143 after the run folder is left resumable.
"""
from __future__ import annotations

import importlib
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

# command → "module:function"; each function takes the remaining argv and returns an exit code.
COMMANDS = {
    "train": "dnnlab.cli:train_main",
    "list": "dnnlab.catalog:main",
    "report": "dnnlab.report:main",
    "lr-find": "dnnlab.lr_find:main",
    "eval": "dnnlab.evaluate:main",
    "export": "dnnlab.export:main",
    "study": "dnnlab.studies:main",
}

USAGE = """usage: dnnlab [--debug] COMMAND [ARGS]

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

examples:
  dnnlab train
  dnnlab train resume=outputs/2026-11-23/14-25-02 trainer.epochs=40
  dnnlab train initializer=he_normal activation=elu normalization=batchnorm optimizer=nadam schedule=1cycle
  dnnlab train -m optimizer=sgd,nadam schedule=none,1cycle
  dnnlab study activations study.seeds=5
"""


def hydra_app(task, argv: list[str], prog: str) -> int:
    """Run `task(cfg)` as a Hydra app over `argv` (overrides and Hydra flags)."""
    import hydra

    app = hydra.main(config_path="conf", config_name="config", version_base="1.3")(task)
    saved, sys.argv = sys.argv, [prog, *argv]
    try:
        app()
    finally:
        sys.argv = saved
    return 0


# A single run's user error, carried past Hydra (which would print a traceback) to `main`.
_deferred: list[Exception] = []


def train_task(cfg) -> float:
    """Hydra task: one training run; returns the best validation accuracy (for sweepers).

    In a sweep a job's error is recorded in its summary.json (`failed`) and the sweep goes on;
    a signal stops the whole sweep (`Interrupted` is a KeyboardInterrupt, which launchers pass on).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from dnnlab.api import resume_config, train
    from dnnlab.errors import is_user_error
    from dnnlab.rundir import RunDir, remove_stray
    from dnnlab.sweeps import plan_job

    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        if cfg.resume:  # a sweep over runs to continue: each continues in its own folder
            cfg = resume_config(cfg.resume, [o for o in hydra_cfg.overrides.task if not o.startswith("resume=")])
        elif sweep:
            action, previous = plan_job(RunDir(job_dir), cfg)
            if action == "skip":
                print(f"dnnlab: sweep job {job_dir} already {previous['status']}: skipped", file=sys.stderr)
                return float(previous.get("best_val_acc") or 0.0)
            if action == "resume":  # an interrupted or preempted job continues from its last.pt
                print(f"dnnlab: sweep job {job_dir} was interrupted: resuming", file=sys.stderr)
                cfg = resume_config(job_dir)
        summary = train(cfg)
    except KeyboardInterrupt:  # Ctrl-C before training began
        remove_stray(job_dir)
        raise
    except Exception as error:
        if sweep:
            record_failure(job_dir, error)
            return math.nan
        remove_stray(job_dir)  # the error came before training: Hydra's folder holds nothing
        if not is_user_error(error):
            raise
        _deferred.append(error)
        return math.nan
    if cfg.resume:
        remove_stray(job_dir)  # the run went on in its own folder
    raise_if_interrupted(summary)
    return float(summary.get("best_val_acc") or 0.0)


def raise_if_interrupted(summary: dict[str, Any]) -> None:
    """A run stopped by a signal ends the command (and a sweep) with 128 + the signal's number."""
    from dnnlab.errors import Interrupted

    if summary["status"] == "interrupted":
        raise Interrupted(signal.Signals[summary["interrupted_by"]])


def record_failure(job_dir: Path, error: Exception) -> None:
    """Print a sweep job's error and make sure its folder says `failed` (train writes it when training had begun)."""
    from dnnlab.errors import one_line
    from dnnlab.rundir import RunDir

    report_error(error, prefix=f"sweep job {job_dir} failed: ")
    if not (job_dir / "summary.json").exists():
        RunDir(job_dir).write_summary({"status": "failed", "error": one_line(error), "run_dir": str(job_dir)})


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

        for path in sorted(Path(config.hydra.sweep.dir).rglob("summary.json")):
            if path.stat().st_mtime >= getattr(self, "started", 0):
                with open(path) as f:
                    SweepReport.outcome.append({**json.load(f), "job_dir": str(path.parent)})


def sweep_exit_code() -> int:
    """Print the sweep jobs that failed or diverged; 1 when any failed."""
    import yaml

    bad = [s for s in SweepReport.outcome if s.get("status") in ("failed", "diverged")]
    for summary in bad:
        overrides_file = Path(summary["job_dir"]) / ".hydra" / "overrides.yaml"
        overrides = " ".join(yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.exists() else ""
        what = summary.get("error") or summary.get("stop_reason", "")
        print(f"  {summary['job_dir']} ({overrides}): {summary['status']}: {what}", file=sys.stderr)
    failed = sum(s.get("status") == "failed" for s in bad)
    if bad:
        diverged = f", {len(bad) - failed} diverged" if len(bad) > failed else ""
        print(f"dnnlab: {failed} of {len(SweepReport.outcome)} sweep jobs failed{diverged} (listed above).", file=sys.stderr)
    return 1 if failed else 0


def preflight(args: Any) -> None:
    """Compose and validate before Hydra makes folders: a bad option, key or value fails here, clearly."""
    from dnnlab import schema
    from dnnlab.api import compose, resume_override
    from dnnlab.errors import UserError

    overrides = list(args.overrides)
    try:
        if args.multirun:
            schema.check_sweep(overrides)
            overrides = schema.first_job(overrides)
            if resume_override(overrides):  # jobs continue runs: Hydra's settings are not part of their config
                overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
        cfg = compose(overrides)
    except UserError:
        raise
    except Exception:
        return  # something only Hydra's app understands (a plugin's sweep syntax): Hydra reports it
    if args.cfg is None:
        schema.validate(cfg)


def train_main(argv: list[str]) -> int:
    """`dnnlab train`: a Hydra app, except `resume=RUN` (a single run), which continues in RUN's folder."""
    from hydra._internal.utils import get_args_parser  # Hydra's own flags: -m, --cfg, --help, …
    from omegaconf import OmegaConf

    from dnnlab.api import compose, resume_override, train

    args = get_args_parser().parse_args(argv)
    special = (args.help or args.hydra_help or args.info or args.shell_completion or args.experimental_rerun
               or args.config_path or args.config_name or args.config_dir)
    if not special:
        if not args.multirun and args.cfg in (None, "job") and resume_override(args.overrides):
            # The run's own config, not the defaults; no Hydra app, whose fresh output folder would stay empty.
            cfg = compose(args.overrides)
            if args.cfg == "job":
                print(OmegaConf.to_yaml(cfg, resolve=args.resolve))
                return 0
            raise_if_interrupted(train(cfg))
            return 0
        preflight(args)
    _deferred.clear()
    SweepReport.outcome = []
    hydra_app(train_task, argv, "dnnlab train")
    if _deferred:
        raise _deferred.pop()
    return sweep_exit_code() if args.multirun else 0


def report_error(error: BaseException, prefix: str = "") -> None:
    """One paragraph on stderr."""
    from dnnlab.errors import one_line

    print(f"dnnlab: error: {prefix}{one_line(error)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
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
    except KeyboardInterrupt as stop:  # Interrupted after training left last.pt; a bare one before training began
        if getattr(stop, "exit_code", None) is None:
            print("dnnlab: interrupted.", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
    except Exception as error:
        from dnnlab.errors import is_user_error

        if debug or os.environ.get("HYDRA_FULL_ERROR") == "1" or not is_user_error(error):
            raise
        report_error(error)
        return getattr(error, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
