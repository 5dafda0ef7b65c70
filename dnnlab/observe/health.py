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
- `not_learning`: over a run of ≥ 3 epochs, train_loss never fell 1 % below its first epoch's
  value (the weights barely move: a learning rate or clipping norm far too small), or val_acc
  stayed ≤ chance + 0.05 and ended no higher than where it began or chance, whichever is higher
  (a slow start climbs out of chance); chance is 1 / the number of classes (`chance_acc` in the
  summary; runs without it get only the loss rule). It judges the whole run: its `epoch` is the last.
- `non_finite_optimized_loss`: some step's optimized loss (data loss + penalties) was NaN/inf; the
  metrics key `optimized_loss_nonfinite_steps` counts them per epoch (written when a penalty is
  configured). train_loss is the data loss alone, so it can look fine while the optimizer sees inf.

The per-layer rules need the diagnostics keys (`trainer.diagnostics=true`); verdicts are computed
from `metrics.jsonl` rows only (plus the status), so `dnnlab report` recomputes them for old runs.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from dnnlab.engine.hooks import Hook
from dnnlab.runs.rundir import RunDir

VANISHING_RATIO = 1e-2
EXPLODING_RATIO = 1e2
DEAD_FRAC = 0.5
SAT_FRAC = 0.5
OVERFIT_EPOCHS = 3
NOT_LEARNING_EPOCHS = 3
FLAT_LOSS = 0.01  # relative fall of train_loss below the first epoch's
CHANCE_MARGIN = 0.05  # best val_acc at most this far above chance

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


def not_learning(rows: list[Row], chance: float | None) -> list[Verdict]:
    """A run whose training loss stayed flat, or whose validation accuracy stayed at chance."""
    rows = [row for row in rows if finite(row.get("train_loss"))]
    if len(rows) < NOT_LEARNING_EPOCHS:
        return []
    first, last = rows[0], rows[-1]
    lowest = min(row["train_loss"] for row in rows)
    span = f"epochs {first['epoch']}–{last['epoch']}"
    if lowest > first["train_loss"] - FLAT_LOSS * abs(first["train_loss"]):
        return [verdict(
            "not_learning", None, last["epoch"],
            f"train_loss {first['train_loss']:.4g} → {last['train_loss']:.4g} (lowest {lowest:.4g}) over {span}: "
            f"never {FLAT_LOSS:.0%} below epoch {first['epoch']}'s (threshold: a {FLAT_LOSS:.0%} fall, over ≥ "
            f"{NOT_LEARNING_EPOCHS} epochs)",
        )]
    accuracies = [row.get("val_acc") for row in rows]
    at_chance = finite(chance) and chance > 0 and all(map(finite, accuracies)) and max(accuracies) <= chance + CHANCE_MARGIN
    if at_chance and accuracies[-1] <= max(accuracies[0], chance):  # a slow start climbs out of chance
        return [verdict(
            "not_learning", None, last["epoch"],
            f"val_acc at most {max(accuracies):.3f} over {span} and not rising ({accuracies[0]:.3f} → "
            f"{accuracies[-1]:.3f}), at chance ({chance:.3f}, 1 in {round(1 / chance)} classes; threshold "
            f"≤ chance + {CHANCE_MARGIN:g} in ≥ {NOT_LEARNING_EPOCHS} epochs)",
        )]
    return []


def non_finite_optimized_loss(rows: list[Row]) -> list[Verdict]:
    """Steps whose optimized loss (data loss + penalties) was NaN/inf, as the trainer counted them."""
    for row in rows:
        count, data_loss = row.get("optimized_loss_nonfinite_steps"), row.get("train_loss")
        # With the data loss non-finite too (null in the row) the run diverged: that verdict, not this one, says so.
        if isinstance(count, int) and count > 0 and isinstance(data_loss, (int, float)) and math.isfinite(data_loss):
            return [verdict(
                "non_finite_optimized_loss", None, row["epoch"],
                f"the optimized loss (data loss + penalties) was NaN/inf in {count} steps of epoch {row['epoch']} "
                f"while train_loss (the data loss) = {data_loss:.4g}: a penalty overflows "
                f"(regularization.l1/l2.weight far too large?)",
            )]
    return []


def verdicts(rows: Iterable[Row], status: str | None = None, chance: float | None = None) -> list[Verdict]:
    """Every verdict the metrics rows (the run's status, its chance accuracy) support, in a fixed order."""
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
        *non_finite_optimized_loss(rows),
        *not_learning(rows, chance),
    ]


class HealthHook(Hook):
    """Puts the run's verdicts into the summary (`health`) before it is written."""

    stage = "measure"

    def __init__(self, run: RunDir):
        self.run = run

    def on_fit_end(self, trainer, summary: dict[str, Any]) -> None:
        rows = self.run.read_metrics()
        # For `not_learning`, here and in `dnnlab report`; a task without accuracy (reconstruction) has none.
        summary["chance_acc"] = 1 / trainer.data.n_classes if rows and finite(rows[-1].get("val_acc")) else None
        summary["health"] = verdicts(rows, summary.get("status"), summary["chance_acc"])
