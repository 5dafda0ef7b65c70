"""Health verdicts: what went wrong in a run, read from its metrics rows.

Each verdict is `{verdict, layer, epoch, evidence}`: `epoch` is the first epoch at which the rule
held, `layer` the layer it names (null for run-level verdicts) and `evidence` the numbers that
triggered it. One verdict per kind at most. The rules and their thresholds:

- `vanishing_gradients`: grad_norm(first hidden layer) / grad_norm(last hidden layer) < 1e-2, i.e.
  the gradient reaching the bottom of the net is two orders of magnitude below the top's
  (Glorot & Bengio 2010).
- `exploding_gradients`: that ratio > 1e2, or a layer's gradient norm is non-finite while the
  training loss is still finite.
- `dying_relu`: a hidden layer's `dead_frac` (ReLU units that output 0 on every probe sample) ≥ 0.5.
- `saturation`: a hidden layer's `sat_frac` (sigmoid/tanh units stuck within 1 % of a bound on most
  probe samples) ≥ 0.5.
- `overfitting`: the validation loss rose while the training loss fell, 3 epochs in a row.
- `divergence`: the run's status is `diverged`, or a training or validation loss is non-finite.

The per-layer rules need the diagnostics keys (`trainer.diagnostics=true`); verdicts are computed
from `metrics.jsonl` rows only (plus the status), so `dnnlab report` recomputes them for old runs.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from dnnlab.hooks import Hook
from dnnlab.rundir import RunDir

VANISHING_RATIO = 1e-2
EXPLODING_RATIO = 1e2
DEAD_FRAC = 0.5
SAT_FRAC = 0.5
OVERFIT_EPOCHS = 3

Row = dict[str, Any]
Verdict = dict[str, Any]


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def verdict(name: str, layer: str | None, epoch: int | None, evidence: str) -> Verdict:
    return {"verdict": name, "layer": layer, "epoch": epoch, "evidence": evidence}


def describe(v: Verdict) -> str:
    """`layer · epoch N: evidence`, the verdict in one line (without its name)."""
    where = [v["layer"] or "run", f"epoch {v['epoch']}" if v["epoch"] is not None else "?"]
    return f"{' · '.join(where)}: {v['evidence']}"


def layers_with(rows: list[Row], prefix: str) -> list[str]:
    """Layer names that have a `prefix/<layer>` key, in model order (the order of the keys)."""
    names: dict[str, None] = {}
    for row in rows:
        names.update((key.split("/", 1)[1], None) for key in row if key.startswith(prefix + "/"))
    return list(names)


def hidden_layers(rows: list[Row]) -> list[str]:
    return [name for name in layers_with(rows, "grad_norm") if name != "output"]


def gradient_ratio(row: Row, first: str, last: str) -> float | None:
    """grad_norm(first) / grad_norm(last), None when either is missing or the last is zero."""
    low, high = row.get(f"grad_norm/{first}"), row.get(f"grad_norm/{last}")
    if not (finite(low) and finite(high)) or high == 0:
        return None
    return low / high


def gradient_flow(rows: list[Row]) -> list[Verdict]:
    """Vanishing or exploding gradients from the first/last hidden layer's gradient norm ratio."""
    hidden = hidden_layers(rows)
    if len(hidden) < 2:
        return []
    first, last = hidden[0], hidden[-1]
    ratios = [(row, gradient_ratio(row, first, last)) for row in rows]
    vanishing = [(row, r) for row, r in ratios if r is not None and r < VANISHING_RATIO]
    exploding = [(row, r) for row, r in ratios if r is not None and r > EXPLODING_RATIO]
    found = []
    if vanishing:
        found.append(ratio_verdict("vanishing_gradients", vanishing, first, last, f"< {VANISHING_RATIO:g}", len(rows)))
    if exploding:
        found.append(ratio_verdict("exploding_gradients", exploding, first, last, f"> {EXPLODING_RATIO:g}", len(rows)))
    else:
        found.extend(non_finite_gradients(rows))
    return found


def ratio_verdict(name: str, hits: list[tuple[Row, float]], first: str, last: str, bound: str, epochs: int) -> Verdict:
    """The verdict at the first epoch in `hits`, with both gradient norms and their ratio."""
    row, ratio = hits[0]
    return verdict(
        name, first, row["epoch"],
        f"grad_norm/{first} = {row[f'grad_norm/{first}']:.3g} is {ratio:.3g} × grad_norm/{last} = "
        f"{row[f'grad_norm/{last}']:.3g} (threshold {bound}); in {len(hits)} of {epochs} epochs",
    )


def non_finite_gradients(rows: list[Row]) -> list[Verdict]:
    """A layer whose gradient norm overflowed while the training loss itself was still finite."""
    for row in rows:
        if not finite(row.get("train_loss")):
            continue
        for layer in layers_with([row], "grad_norm"):
            if not finite(row[f"grad_norm/{layer}"]):
                return [verdict(
                    "exploding_gradients", layer, row["epoch"],
                    f"grad_norm/{layer} is not finite (NaN/inf) while train_loss = {row['train_loss']:.4g} is",
                )]
    return []


def unit_health(rows: list[Row], key: str, threshold: float, name: str, what: str) -> list[Verdict]:
    """The first epoch where some hidden layer's `key` fraction reaches `threshold`."""
    layers = [layer for layer in layers_with(rows, key) if layer != "output"]
    for row in rows:
        bad = {layer: row[f"{key}/{layer}"] for layer in layers if finite(row.get(f"{key}/{layer}"))
               and row[f"{key}/{layer}"] >= threshold}
        if bad:
            worst = max(bad, key=bad.get)
            return [verdict(
                name, worst, row["epoch"],
                f"{key}/{worst} = {bad[worst]:.2f} (threshold ≥ {threshold:g}): {bad[worst]:.0%} of its units "
                f"{what}; {len(bad)} of {len(layers)} hidden layers at or above the threshold",
            )]
    return []


def overfitting(rows: list[Row]) -> list[Verdict]:
    """Validation loss rising while training loss falls for OVERFIT_EPOCHS consecutive epochs."""
    streak = 0
    for i in range(1, len(rows)):
        before, row = rows[i - 1], rows[i]
        values = (before.get("val_loss"), row.get("val_loss"), before.get("train_loss"), row.get("train_loss"))
        rising = all(map(finite, values)) and values[1] > values[0] and values[3] < values[2]
        streak = streak + 1 if rising else 0
        if streak == OVERFIT_EPOCHS:
            start = rows[i - OVERFIT_EPOCHS]
            return [verdict(
                "overfitting", None, row["epoch"],
                f"val_loss rose {start['val_loss']:.4g} → {row['val_loss']:.4g} while train_loss fell "
                f"{start['train_loss']:.4g} → {row['train_loss']:.4g} over epochs {start['epoch']}–{row['epoch']} "
                f"(threshold: {OVERFIT_EPOCHS} epochs in a row)",
            )]
    return []


def divergence(rows: list[Row], status: str | None) -> list[Verdict]:
    """A non-finite training or validation loss, or the run's status says it diverged."""
    for row in rows:
        bad = [key for key in ("train_loss", "val_loss") if key in row and not finite(row[key])]
        if bad:
            return [verdict("divergence", None, row["epoch"], f"{' and '.join(bad)} not finite (NaN/inf) at epoch {row['epoch']}")]
    if status == "diverged":
        return [verdict("divergence", None, rows[-1]["epoch"] if rows else None, "the run's status is diverged")]
    return []


def verdicts(rows: Iterable[Row], status: str | None = None) -> list[Verdict]:
    """Every verdict the metrics rows (and the run's status) support, in a fixed order."""
    rows = [row for row in rows if "epoch" in row]
    if not rows:  # "no problems found" would claim a judgement that nothing supports
        return [verdict("no_epochs", None, None, "metrics.jsonl records no epoch, so there is nothing to judge "
                        "(the run stopped before its first epoch ended, or the file was emptied)")]
    return [
        *gradient_flow(rows),
        *unit_health(rows, "dead_frac", DEAD_FRAC, "dying_relu", "output 0 on every probe sample"),
        *unit_health(rows, "sat_frac", SAT_FRAC, "saturation", "sit within 1 % of a bound on most probe samples"),
        *overfitting(rows),
        *divergence(rows, status),
    ]


class HealthHook(Hook):
    """Puts the run's verdicts into the summary (`health`) before it is written."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_fit_end(self, trainer, summary: dict[str, Any]) -> None:
        summary["health"] = verdicts(self.run.read_metrics(), summary.get("status"))
