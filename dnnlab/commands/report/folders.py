"""Run and sweep folders read back: a `Run` per run folder (metrics, summary, overrides, health verdicts)."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from dnnlab.observe import health
from dnnlab.errors import ReportError
from dnnlab.runs.rundir import RunDir


@dataclass
class Run:
    """One run folder, read back."""

    path: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    overrides: dict[str, str]
    name: str = ""
    health: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.summary.get("status", "incomplete")

    def metric(self, key: str) -> float | None:
        """A summary number, or its value recomputed from the rows when the summary lacks it."""
        if self.summary.get(key) is not None:
            return self.summary[key]
        accs = [r["val_acc"] for r in self.rows if r.get("val_acc") is not None]
        fallback = {
            "best_val_acc": max(accs, default=None),
            "final_val_acc": accs[-1] if accs else None,
            "epochs": len(self.rows),
            "wall_s": sum(r.get("epoch_s") or 0.0 for r in self.rows) or None,
        }
        return fallback.get(key)


def is_run(path: Path) -> bool:
    return RunDir(path, create=False).metrics_path.is_file()


def read_overrides(path: Path) -> dict[str, str]:
    """`key=value` lines of Hydra's .hydra/overrides.yaml as a dict (empty without one)."""
    file = RunDir(path, create=False).overrides_path
    if not file.is_file():
        return {}
    pairs = (str(item).split("=", 1) for item in OmegaConf.to_container(OmegaConf.load(file)) or [])
    return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}


def load_run(path: Path) -> Run:
    run = RunDir(path)
    summary = run.read_summary() if run.summary_path.is_file() else {}
    rows = run.read_metrics()
    return Run(path, rows, summary, read_overrides(path), path.name,
               health.verdicts(rows, summary.get("status"), summary.get("chance_acc")))


def job_key(path: Path) -> tuple[int, str]:
    """Sweep job folders sort numerically (2 before 10)."""
    return (int(path.name), "") if path.name.isdigit() else (sys.maxsize, path.name)


def expand(path: Path) -> tuple[list[Path], bool]:
    """The run folders under `path` and whether it is a sweep folder."""
    if not path.exists():
        raise ReportError(f"dnnlab report: {path} does not exist")
    if is_run(path):
        return [path], False
    jobs = sorted((p for p in path.iterdir() if p.is_dir() and is_run(p)), key=job_key) if path.is_dir() else []
    if not jobs:
        raise ReportError(
            f"dnnlab report: {path} is not a run folder (no metrics.jsonl) nor a sweep folder "
            "(no job subfolders holding metrics.jsonl)"
        )
    return jobs, True


def collect(paths: Sequence[Path]) -> tuple[list[Run], bool]:
    """Every run the arguments name (sweeps expanded); True when any argument was a sweep."""
    found, any_sweep = [], False
    for path in paths:
        runs, sweep = expand(path)
        found.extend(runs)
        any_sweep |= sweep
    runs = [load_run(p) for p in dict.fromkeys(p.resolve() for p in found)]
    if len(runs) > 1:
        root = Path(os.path.commonpath([r.path for r in runs]))
        for run in runs:
            run.name = str(run.path.relative_to(root))
    return runs, any_sweep
