"""Metrics a study reads from a run folder: summary.json's keys, and derived ones computed from the run.

Derived metrics (name → how):
  epochs_to_target   first epoch whose val_acc ≥ study.target (not reached: trainer.epochs + 1)
  time_to_target     training seconds until then (sum of epoch_s; not reached: no value)
  grad_ratio         grad_norm of the first hidden layer ÷ the last hidden layer's, first epoch
  act_std_drift      |log10(act_std of the last hidden layer ÷ the first's)|, first epoch (0 = no drift)
  act_mean_drift     |act_mean of the last hidden layer − the first's|, first epoch
  gap                final train_acc − final val_acc (overfitting)
  diverged           1 when the run stopped as diverged, else 0 (its mean is the divergence rate)
  mc_minus_det_acc   test accuracy with MC dropout (study.mc_passes passes) − without (dnnlab eval --mc-dropout)
  mc_minus_det_nll   test NLL with MC dropout − without (negative: MC dropout is better calibrated)
  fold_speedup       latency at batch 1 before ÷ after folding batch norm (dnnlab export --fold-bn)
  fold_max_abs_diff  max |Δ| of the test outputs between the folded and the original model
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable

from dnnlab.runs.rundir import RunDir

MINIMIZED = ("loss", "epochs_to_target", "time_to_target", "act_std_drift", "act_mean_drift", "gap", "diverged",
             "mc_minus_det_nll", "fold_max_abs_diff")


def layer_series(row: dict[str, Any], prefix: str) -> list[float]:
    """The values of `prefix/hidden<i>` in layer order."""
    found = sorted((int(m.group(1)), v) for k, v in row.items() if (m := re.fullmatch(rf"{prefix}/hidden(\d+)", k)))
    return [v for _, v in found]


def first_last(rows: list[dict[str, Any]], prefix: str) -> tuple[float, float] | None:
    values = layer_series(rows[0], prefix) if rows else []
    return (values[0], values[-1]) if len(values) >= 2 and None not in (values[0], values[-1]) else None


def ratio(pair: tuple[float, float] | None) -> float:
    return pair[0] / pair[1] if pair and pair[1] else math.nan


def spread(pair: tuple[float, float] | None) -> float:
    return abs(pair[1] - pair[0]) if pair else math.nan


def log_drift(pair: tuple[float, float] | None) -> float:
    return abs(math.log10(pair[1] / pair[0])) if pair and pair[0] > 0 and pair[1] > 0 else math.nan


class RunMetrics:
    """One run folder's metrics, computed once each when asked for."""

    def __init__(self, path: Path, cfg: Any, target: float | None = None, mc_passes: int = 30):
        self.path, self.cfg, self.target, self.mc_passes = path, cfg, target, mc_passes
        run = RunDir(path)
        self.summary = run.read_summary() if run.summary_path.exists() else {"status": "missing"}
        self.rows = run.read_metrics() if run.metrics_path.exists() else []
        self._cache: dict[str, Any] = {}
        self.choices: dict[str, Any] = {}  # the run's config-group choices (.hydra/hydra.yaml), set by the report

    @property
    def status(self) -> str:
        return str(self.summary.get("status"))

    def curve(self, key: str = "val_acc") -> list[float]:
        return [r.get(key) if r.get(key) is not None else math.nan for r in self.rows]

    def get(self, name: str) -> float:
        """The metric `name` (NaN when the run does not have it)."""
        if self.status in ("failed", "missing", "interrupted"):
            return math.nan
        if name not in DERIVED:
            value = self.summary.get(name)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        return float(DERIVERS[name](self))

    def reached(self) -> int | None:
        if self.target is None:
            from dnnlab.studies.spec import StudyError

            raise StudyError("epochs_to_target and time_to_target need study.target (a validation accuracy, e.g. 0.9).")
        return next((i for i, r in enumerate(self.rows) if (r.get("val_acc") or 0) >= self.target), None)

    def cached(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def mc(self) -> dict[str, Any]:
        from dnnlab.commands.evaluate import evaluate, load_run

        return self.cached("mc", lambda: evaluate(load_run(self.path, device="cpu"), self.mc_passes, seed=0))

    def fold(self) -> dict[str, Any]:
        from dnnlab.commands.evaluate import load_run
        from dnnlab.commands.export import export

        return self.cached("fold", lambda: export(load_run(self.path, device="cpu"), fold=True, repeats=50))


def _epochs_to_target(m: RunMetrics) -> float:
    i = m.reached()
    return float(m.rows[i]["epoch"]) if i is not None else float(m.cfg.trainer.epochs + 1)


def _time_to_target(m: RunMetrics) -> float:
    i = m.reached()
    return sum(r.get("epoch_s") or 0.0 for r in m.rows[: i + 1]) if i is not None else math.nan


def _gap(m: RunMetrics) -> float:
    train, val = m.summary.get("final_train_acc"), m.summary.get("final_val_acc")
    return train - val if train is not None and val is not None else math.nan


DERIVERS: dict[str, Callable[[RunMetrics], float]] = {
    "epochs_to_target": _epochs_to_target,
    "time_to_target": _time_to_target,
    "grad_ratio": lambda m: ratio(first_last(m.rows, "grad_norm")),
    "act_std_drift": lambda m: log_drift(first_last(m.rows, "act_std")),
    "act_mean_drift": lambda m: spread(first_last(m.rows, "act_mean")),
    "gap": _gap,
    "diverged": lambda m: float(m.status == "diverged"),
    "mc_minus_det_acc": lambda m: m.mc()["mc_dropout"]["acc"] - m.mc()["deterministic"]["acc"],
    "mc_minus_det_nll": lambda m: m.mc()["mc_dropout"]["loss"] - m.mc()["deterministic"]["loss"],
    "fold_speedup": lambda m: m.fold()["speedup"]["batch_1"],
    "fold_max_abs_diff": lambda m: m.fold()["max_abs_diff"],
}


DERIVED = tuple(DERIVERS)
# summary.json's numbers a study may name as its metric (written by Trainer.finish and the run-folder hook).
SUMMARY_METRICS = ("test_acc", "test_loss", "best_val_acc", "best_val_loss", "best_epoch", "final_train_acc",
                   "final_train_loss", "final_val_acc", "final_val_loss", "epochs", "steps", "wall_s", "diag_s",
                   "n_params", "diverged_epoch", "diverged_step")


def default_mode(metric: str) -> str:
    """max for accuracies and the like, min for losses, times and the drift/gap/divergence metrics."""
    return "min" if any(metric.endswith(k) or metric == k for k in MINIMIZED) else "max"
