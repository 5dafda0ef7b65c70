"""`dnnlab report PATH...`: a run or sweep folder → terminal table, `report.md`, PNG plots.

- One run folder: `loss.png`, `accuracy.png` (train and validation), `lr.png`, `grad_flow.png`
  (gradient norm per layer over epochs, log scale), `act_std.png` (activation std per layer) and
  `dead_frac.png` / `sat_frac.png` when recorded, and a `report.md` embedding them with the config
  and the health verdicts (recomputed from `metrics.jsonl`, so old runs get them too).
- A sweep folder (`multirun/<date>/<time>/` with numbered job folders), or several paths: one table
  row per run with the overrides that differ between runs as columns (from each job's
  `.hydra/overrides.yaml`), best and final validation accuracy, test accuracy, epochs, wall time,
  status and verdicts, sorted by `--sort`; when `seed` is swept, runs that differ only by seed are
  grouped into mean ± std (sample std, n − 1); `val_curves.png` overlays every run's validation
  curves (a seed group as its mean and min–max band); `parallel_coordinates.png` and
  `metric_vs_value.png` show which settings go with which result; an Optuna sweep adds its study's
  best trial and views (dnnlab.commands.report_optuna). Files go to the sweep folder (or the common parent of
  several paths) unless `--out DIR`.
- Both: `report.html`, the same report as one self-contained page (dnnlab.commands.report_html).

`--format md|csv|json` prints the table in that format to stdout instead of the rich table.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from dnnlab.observe import health
from dnnlab.errors import ReportError
from dnnlab.runs.rundir import RunDir

METRICS = ("best_val_acc", "final_val_acc", "test_acc", "epochs", "wall_s")
HIGHER_IS_BETTER = {"best_val_acc", "final_val_acc", "test_acc"}
LAYER_PLOTS = {  # metrics prefix → (file, title, log scale)
    "grad_norm": ("grad_flow.png", "gradient flow: ‖∂loss/∂W‖ per layer (probe batch)", True),
    "act_std": ("act_std.png", "activation std per layer", False),
    "dead_frac": ("dead_frac.png", "dead ReLU units per layer (fraction)", False),
    "sat_frac": ("sat_frac.png", "saturated units per layer (fraction)", False),
}


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


# ---------------------------------------------------------------------------------------------
# Reading folders
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

def varying_overrides(runs: Sequence[Run]) -> list[str]:
    """Override keys whose value is not the same in every run, in first-seen order."""
    keys = dict.fromkeys(k for run in runs for k in run.overrides)
    return [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]


def run_row(run: Run, columns: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"run": run.name, **{k: run.overrides.get(k, "") for k in columns}}
    row.update({m: run.metric(m) for m in METRICS})
    row["status"] = run.status
    row["health"] = ", ".join(v["verdict"] for v in run.health)
    return row


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else 0.0


def seed_key(row: dict[str, Any], columns: Sequence[str]) -> tuple:
    """What a row's seed group is: its values in every varying column but `seed`."""
    return tuple(row[c] for c in columns if c != "seed")


def seed_groups(rows: list[dict[str, Any]], columns: Sequence[str]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows that differ only by seed, by `seed_key`, in first-seen order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(seed_key(row, columns), []).append(row)
    return groups


def group_by_seed(rows: list[dict[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows equal in every column but `seed` → one row of mean and `<metric>_std`, with n."""
    merged = []
    for members in seed_groups(rows, columns).values():
        row = {"run": ",".join(m["run"] for m in members), **{c: members[0][c] for c in columns if c != "seed"}}
        row["seed"] = ",".join(m["seed"] for m in members)
        row["n"] = len(members)
        for metric in METRICS:
            row[metric], row[f"{metric}_std"] = mean_std([m[metric] for m in members])
        row["status"] = "/".join(dict.fromkeys(m["status"] for m in members))
        row["health"] = ", ".join(dict.fromkeys(v for m in members for v in m["health"].split(", ") if v))
        merged.append(row)
    return merged


def build_table(runs: Sequence[Run], sort: str, group: bool = True) -> list[dict[str, Any]]:
    """One row per run (or per seed group), sorted by `sort` (best first, missing values last)."""
    columns = varying_overrides(runs)
    rows = [run_row(run, columns) for run in runs]
    if group and "seed" in columns:
        rows = group_by_seed(rows, columns)
    sign = -1 if sort in HIGHER_IS_BETTER else 1
    return sorted(rows, key=lambda r: (r[sort] is None, sign * (r[sort] or 0.0)))


def cell(row: dict[str, Any], key: str) -> str:
    """A table cell: numbers rounded, a seed group's mean shown as mean ± std."""
    value = row.get(key)
    if value is None or value == "":
        return "—"
    if not isinstance(value, float):
        return str(value)
    digits = 1 if key in ("wall_s", "epochs") else 4
    std = row.get(f"{key}_std")
    return f"{value:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def display_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The human-readable columns: everything but the `_std` companions shown as ± in cells."""
    keys = dict.fromkeys(k for row in rows for k in row)
    return [k for k in keys if not k.endswith("_std")]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = display_columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, c).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def rich_table(rows: list[dict[str, Any]], title: str):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_header=True, header_style="bold")
    for column in display_columns(rows):
        table.add_column(column, justify="right" if column in METRICS or column == "n" else "left")
    for row in rows:  # Text: override values such as [l2,dropout] are not rich markup
        table.add_row(*(Text(cell(row, c)) for c in display_columns(rows)))
    return table


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's object API with the Agg canvas: no pyplot, no display needed)
# ---------------------------------------------------------------------------------------------

def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of `key`; missing or null values become NaN so lines break there."""
    return [r["epoch"] for r in rows], [float("nan") if r.get(key) is None else r[key] for r in rows]


def save(fig, path: Path) -> Path:
    """Write `fig` as a PNG with the Agg canvas; epochs are whole numbers on every x axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path


def curve_plot(rows: list[dict[str, Any]], keys: Sequence[str], ylabel: str, path: Path, log: bool = False) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for key in keys:
        ax.plot(*series(rows, key), marker=".", label=key)
    ax.set(xlabel="epoch", ylabel=ylabel, yscale="log" if log else "linear")
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def layer_plot(rows: list[dict[str, Any]], prefix: str, path: Path, title: str, log: bool) -> Path:
    """Left: `prefix/<layer>` over epochs, one line per layer coloured by depth; right: per layer
    at the first and the last epoch (the classic gradient-flow profile)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    layers = health.layers_with(rows, prefix)
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    over_time, profile = fig.subplots(1, 2)
    for i, layer in enumerate(layers):
        over_time.plot(*series(rows, f"{prefix}/{layer}"), color=cmap(i / max(len(layers) - 1, 1)), label=layer)
    over_time.set(xlabel="epoch", ylabel=prefix, title=title)
    if len(layers) <= 12:
        over_time.legend(fontsize="small", ncol=2)
    else:
        scale = ScalarMappable(norm=Normalize(1, len(layers)), cmap=cmap)
        fig.colorbar(scale, ax=over_time, label=f"layer ({layers[0]} … {layers[-1]})", ticks=MaxNLocator(integer=True))
    for row, style in ((rows[0], "--"), (rows[-1], "-")):
        values = [float("nan") if row.get(f"{prefix}/{layer}") is None else row[f"{prefix}/{layer}"] for layer in layers]
        profile.plot(range(len(layers)), values, style, marker="o", label=f"epoch {row['epoch']}")
    profile.set_xticks(range(len(layers)), layers, rotation=90, fontsize="small")
    profile.set(xlabel="layer (input → output)", ylabel=prefix, title="per layer")
    profile.legend()
    positive = any((r.get(f"{prefix}/{layer}") or 0) > 0 for r in rows for layer in layers)
    for ax in (over_time, profile):
        ax.grid(alpha=0.3)
        if log and positive:  # all-zero gradients (every unit dead) have no log scale
            ax.set_yscale("log")
    return save(fig, path)


def run_plots(run: Run, out: Path) -> list[Path]:
    """Every plot the run's metrics support, written into `out`."""
    rows = run.rows
    lrs = [r["lr"] for r in rows if r.get("lr")]
    plots = [
        curve_plot(rows, ["train_loss", "val_loss"], "loss", out / "loss.png"),
        curve_plot(rows, ["train_acc", "val_acc"], "accuracy", out / "accuracy.png"),
        curve_plot(rows, ["lr"], "learning rate", out / "lr.png", log=bool(lrs) and max(lrs) > 10 * min(lrs)),
    ]
    for prefix, (name, title, log) in LAYER_PLOTS.items():
        if health.layers_with(rows, prefix):
            plots.append(layer_plot(rows, prefix, out / name, title, log))
    return plots


def sweep_plot(runs: Sequence[Run], out: Path, group: bool = True) -> Path:
    """`val_curves.png`: see `sweep_figure`."""
    return save(sweep_figure(runs, group), out / "val_curves.png")


def sweep_figure(runs: Sequence[Run], group: bool = True):
    """Validation loss and accuracy of every run, overlaid; runs that differ only by seed (when
    `group`) as their group's mean with a min–max band, one colour per group."""
    from matplotlib.figure import Figure

    columns = varying_overrides(runs)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    if group and "seed" in columns:
        groups = run_groups(runs, columns)
        for i, members in enumerate(groups):
            label = " ".join(f"{k}={members[0].overrides.get(k, '—')}" for k in columns if k != "seed")
            color = group_colour(i, len(groups))
            band(loss_ax, members, "val_loss", color, f"{label} (n={len(members)})")
            band(acc_ax, members, "val_acc", color, f"{label} (n={len(members)})")
        shown = len(groups)
    else:
        for run in runs:
            label = " ".join(f"{k}={run.overrides.get(k, '—')}" for k in columns) or run.name
            loss_ax.plot(*series(run.rows, "val_loss"), label=label)
            acc_ax.plot(*series(run.rows, "val_acc"), label=label)
        shown = len(runs)
    loss_ax.set(xlabel="epoch", ylabel="val_loss", title="validation loss")
    acc_ax.set(xlabel="epoch", ylabel="val_acc", title="validation accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    if shown <= 20:
        acc_ax.legend(fontsize="small")
    return fig


def run_groups(runs: Sequence[Run], columns: Sequence[str]) -> list[list[Run]]:
    """Runs that differ only by seed, grouped as the table groups them."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(seed_key({c: run.overrides.get(c, "") for c in columns}, columns), []).append(run)
    return list(groups.values())


def group_colour(i: int, n: int):
    from matplotlib import colormaps

    return colormaps["tab10" if n <= 10 else "tab20"](i % 20)


def band(ax, members: Sequence[Run], key: str, color, label: str) -> None:
    """The members' mean of `key` per epoch as a line, their min–max as a shaded band."""
    import numpy as np

    by_epoch: dict[int, list[float]] = {}
    for run in members:
        for epoch, value in zip(*series(run.rows, key)):
            by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    values = [np.asarray(by_epoch[e], dtype=float) for e in epochs]
    finite = [v[np.isfinite(v)] for v in values]
    mean = [v.mean() if v.size else np.nan for v in finite]
    low = [v.min() if v.size else np.nan for v in finite]
    high = [v.max() if v.size else np.nan for v in finite]
    ax.plot(epochs, mean, color=color, label=label)
    ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)


# ---------------------------------------------------------------------------------------------
# Which settings matter: parallel coordinates, metric against each numeric setting
# ---------------------------------------------------------------------------------------------

def setting_keys(runs: Sequence[Run]) -> list[str]:
    """The swept keys that are settings (every varying override but `seed`)."""
    return [k for k in varying_overrides(runs) if k != "seed"]


def as_numbers(values: Sequence[Any]) -> list[float] | None:
    """The values as floats when every one is a number, else None (a categorical key)."""
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def log_scaled(numbers: Sequence[float]) -> bool:
    """Positive values spanning two decades or more (learning rates, weight decays) read best on a log axis."""
    return min(numbers) > 0 and max(numbers) >= 100 * min(numbers)


def axis_layout(values: Sequence[Any]) -> tuple[list[float], list[tuple[float, str]]]:
    """Each value's position on a [0, 1] axis and the axis's (position, label) ticks.

    Numbers map linearly (or by log10, see `log_scaled`); categories to evenly spaced positions."""
    import numpy as np

    numbers = as_numbers(values)
    if numbers is None:
        categories = sorted(set(map(str, values)))
        spots = np.linspace(0, 1, len(categories)) if len(categories) > 1 else [0.5]
        where = dict(zip(categories, spots))
        return [float(where[str(v)]) for v in values], [(float(where[c]), c) for c in categories]
    log = log_scaled(numbers)
    scaled = np.log10(numbers) if log else np.asarray(numbers)
    low, high = float(scaled.min()), float(scaled.max())
    span = high - low

    def place(x: float) -> float:
        return 0.5 if span == 0 else (x - low) / span

    ticks = np.linspace(low, high, 5 if span else 1)
    return [place(x) for x in scaled], [(place(t), f"{10 ** t if log else t:.3g}") for t in ticks]


def metric_colours(scores: Sequence[float], metric: str):
    """A colour per score (viridis, yellow = better) and the mappable for the colour bar."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cmap = colormaps["viridis" if metric in HIGHER_IS_BETTER else "viridis_r"]
    mappable = ScalarMappable(norm=Normalize(min(scores), max(scores)), cmap=cmap)
    return [mappable.to_rgba(s) for s in scores], mappable


def scored_runs(runs: Sequence[Run], metric: str) -> list[tuple[Run, float]]:
    """(run, metric) for every run that has the metric, worst first (so the best lines are drawn on top)."""
    scored = [(r, r.metric(metric)) for r in runs if r.metric(metric) is not None]
    return sorted(scored, key=lambda pair: pair[1], reverse=metric not in HIGHER_IS_BETTER)


def parallel_plot(runs: Sequence[Run], metric: str, out: Path) -> Path | None:
    """One line per run across one axis per swept setting plus the metric, coloured by the metric."""
    from matplotlib.figure import Figure

    keys, scored = setting_keys(runs), scored_runs(runs, metric)
    if not keys or len(scored) < 2:
        return None
    scores = [s for _, s in scored]
    axes = [axis_layout([r.overrides.get(k, "") for r, _ in scored]) for k in keys] + [axis_layout(scores)]
    colours, mappable = metric_colours(scores, metric)
    fig = Figure(figsize=(max(6.0, 2.2 * len(axes)), 4.5), layout="constrained")
    ax = fig.add_subplot()
    for i, colour in enumerate(colours):
        ax.plot(range(len(axes)), [positions[i] for positions, _ in axes], color=colour, alpha=0.8, linewidth=1.2)
    for x, (_, ticks) in enumerate(axes):
        ax.axvline(x, color="0.4", linewidth=0.8)
        for y, label in ticks:
            ax.text(x, y, f" {label}", fontsize="x-small", va="center", ha="left")
    ax.set_xticks(range(len(axes)), [*keys, metric])
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(axes) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"which settings go with which {metric} ({len(scored)} runs)")
    fig.colorbar(mappable, ax=ax, label=metric)
    return save(fig, out / "parallel_coordinates.png")


def value_plot(runs: Sequence[Run], metric: str, out: Path) -> Path | None:
    """The metric against each numeric swept setting, one panel per setting."""
    from matplotlib.figure import Figure

    scored = scored_runs(runs, metric)
    numeric = {k: xs for k in setting_keys(runs) if (xs := as_numbers([r.overrides.get(k) for r, _ in scored]))}
    if not numeric or len(scored) < 2:
        return None
    scores = [s for _, s in scored]
    colours, _ = metric_colours(scores, metric)
    fig = Figure(figsize=(4 * len(numeric), 3.6), layout="constrained")
    for ax, (key, xs) in zip(fig.subplots(1, len(numeric), squeeze=False)[0], numeric.items()):
        ax.scatter(xs, scores, c=colours, edgecolors="0.3", linewidths=0.5)
        ax.set(xlabel=key, ylabel=metric, xscale="log" if log_scaled(xs) else "linear")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} against each numeric setting")
    return save(fig, out / "metric_vs_value.png")


def settings_plots(runs: Sequence[Run], metric: str, out: Path) -> list[Path]:
    """The sweep's "which settings matter" pictures that its swept keys allow."""
    return [p for p in (parallel_plot(runs, metric, out), value_plot(runs, metric, out)) if p]


# ---------------------------------------------------------------------------------------------
# report.md
# ---------------------------------------------------------------------------------------------

def health_markdown(verdicts: list[dict[str, Any]]) -> str:
    if not verdicts:
        return "No problems found.\n"
    return "".join(f"- **{v['verdict']}** — {health.describe(v)}\n" for v in verdicts)


def run_markdown(run: Run, rows: list[dict[str, Any]], plots: list[Path]) -> str:
    config = RunDir(run.path, create=False).config_path
    overrides = " ".join(f"{k}={v}" for k, v in run.overrides.items()) or "(none)"
    parts = [
        f"# dnnlab report: {run.path}\n",
        markdown_table(rows),
        "## Health\n",
        health_markdown(run.health),
        "## Plots\n",
        *(f"![{p.stem}]({p.name})\n" for p in plots),
        "## Config\n",
        f"Overrides: `{overrides}`\n",
    ]
    if config.is_file():
        parts.append(f"```yaml\n{config.read_text()}```\n")
    return "\n".join(parts)


def sweep_markdown(runs: Sequence[Run], rows: list[dict[str, Any]], plot: Path, sort: str) -> str:
    shared = {k: v for k, v in runs[0].overrides.items() if k not in varying_overrides(runs)
              and all(r.overrides.get(k) == v for r in runs)}
    parts = [
        f"# dnnlab report: {len(runs)} runs\n",
        f"Common overrides: `{' '.join(f'{k}={v}' for k, v in shared.items()) or '(none)'}`; sorted by {sort}.\n",
        markdown_table(rows),
        f"![validation curves]({plot.name})\n",
        "## Health\n",
    ]
    for run in runs:
        parts.append(f"### {run.name}\n\n{health_markdown(run.health)}")
    return "\n".join(parts)


def same_value(a: Any, b: Any) -> bool:
    """Override values compare as numbers when both are numbers (0.001 == 1e-3), else as text."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def best_trial(path: Path, runs: Sequence[Run]) -> dict[str, Any] | None:
    """An Optuna sweep's best trial (its optimization_results.yaml) and the run folder that holds it."""
    results = path / "optimization_results.yaml"
    if not results.is_file():
        return None
    best = OmegaConf.to_container(OmegaConf.load(results))
    params = best.get("best_params", {})
    match = next((r for r in runs if params and all(same_value(r.overrides.get(k), v) for k, v in params.items())), None)
    return {"value": best.get("best_value"), "params": params, "run": str(match.path) if match else None}


def best_trial_text(trial: dict[str, Any]) -> str:
    params = " ".join(f"{k}={v}" for k, v in trial["params"].items())
    where = f" — run {trial['run']}" if trial["run"] else ""
    study = f" (trial {trial['number']} of {trial['trials']}, {trial['source']})" if "source" in trial else ""
    return f"best trial (Optuna): {trial['value']} with {params}{where}{study}"


def optuna_views(paths: Sequence[Path], runs: Sequence[Run], out: Path) -> tuple[list[dict[str, Any]], list[Path], list[str]]:
    """For the Optuna sweeps among `paths`: each study's best trial, Optuna's own plots, and notes on
    what could not be drawn (see dnnlab.commands.report_optuna; optuna is imported only for such a sweep)."""
    from dnnlab.commands import report_optuna

    trials, plots, notes = [], [], []
    try:
        found = report_optuna.searches(paths, runs)
    except ImportError as error:
        return [], [], [f"Optuna's views need the sweeps extra (pip install -e \".[sweeps]\"): {error}"]
    for i, search in enumerate(found):
        trial = report_optuna.best(search)
        trials += [trial] if trial else []
        written, missed = report_optuna.plots(search, out, suffix=f"_{i + 1}" if len(found) > 1 else "")
        plots += written
        notes += missed
    return trials, plots, notes


# ---------------------------------------------------------------------------------------------
# report.html (dnnlab.commands.report_html builds and escapes the page)
# ---------------------------------------------------------------------------------------------

def html_cells(row: dict[str, Any], columns: Sequence[str]) -> list:
    from dnnlab.commands.report_html import Cell

    return [Cell(cell(row, c), row.get(c) if row.get(c) != "" else None) for c in columns]


def html_table(rows: list[dict[str, Any]], runs: Sequence[Run]):
    """The report's table; a seed group's row expands into its member jobs."""
    from dnnlab.commands.report_html import Row, Table

    columns = display_columns(rows)
    varying = varying_overrides(runs)
    members = seed_groups([run_row(run, varying) for run in runs], varying) if any("n" in r for r in rows) else {}
    return Table(columns, [
        Row(html_cells(row, columns), [html_cells(m, columns) for m in members.get(seed_key(row, varying), [])])
        for row in rows
    ])


def health_items(verdicts: list[dict[str, Any]]):
    from dnnlab.commands.report_html import Items, Paragraph

    return Items([(v["verdict"], health.describe(v)) for v in verdicts]) if verdicts else Paragraph("No problems found.")


def image_parts(plots: Sequence[Path]) -> list:
    from dnnlab.commands.report_html import Image

    return [Image(p) for p in plots]


def run_sections(run: Run, rows: list[dict[str, Any]], plots: list[Path]) -> list:
    from dnnlab.commands.report_html import Code, Paragraph, Section

    config = RunDir(run.path, create=False).config_path
    overrides = " ".join(f"{k}={v}" for k, v in run.overrides.items()) or "(none)"
    return [
        Section("Summary", [html_table(rows, [run])]),
        Section("Health", [health_items(run.health)]),
        Section("Plots", image_parts(plots)),
        Section("Config", [Paragraph(f"Overrides: {overrides}"), *([Code(config.read_text())] if config.is_file() else [])]),
    ]


def sweep_sections(runs: Sequence[Run], rows: list[dict[str, Any]], plots: list[Path], sort: str, trials: list) -> list:
    from dnnlab.commands.report_html import Paragraph, Section

    varying = varying_overrides(runs)
    shared = {k: v for k, v in runs[0].overrides.items() if k not in varying and all(r.overrides.get(k) == v for r in runs)}
    unit = "row per seed group (click ▸ for its jobs)" if any("n" in r for r in rows) else "row per run"
    sections = [Section("Runs", [
        Paragraph(f"Common overrides: {' '.join(f'{k}={v}' for k, v in shared.items()) or '(none)'}; "
                  f"sorted by {sort}; one {unit}; click a column to sort."),
        html_table(rows, runs),
    ])]
    if trials:
        sections.append(Section("Best trial", [Paragraph(best_trial_text(t)) for t in trials]))
    sections.append(Section("Plots", image_parts(plots)))
    flagged = [r for r in runs if r.health]
    sections.append(Section("Health", [
        *(part for r in flagged for part in (Paragraph(r.name), health_items(r.health))),
        Paragraph(f"{len(runs) - len(flagged)} of {len(runs)} runs: no problems found."),
    ]))
    return sections


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def output_folder(paths: Sequence[Path], runs: Sequence[Run], out: Path | None) -> Path:
    """--out, else the single path given, else the common parent of every run."""
    if out is not None:
        return out
    if len(paths) == 1:
        return paths[0]
    return Path(os.path.commonpath([r.path for r in runs]))


def render(rows: list[dict[str, Any]], fmt: str | None, title: str) -> None:
    """The table to stdout: rich by default, else md / csv / json for machines."""
    if fmt == "md":
        sys.stdout.write(markdown_table(rows))
    elif fmt == "csv":
        sys.stdout.write(csv_table(rows))
    elif fmt == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        print_rich(rich_table(rows, title))


def print_rich(renderable) -> None:
    """To stdout; piped or redirected output gets the table's natural width rather than 80 columns."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        natural = console.measure(renderable, options=console.options.update(max_width=1000)).maximum
        console = Console(width=max(console.width, natural))
    console.print(renderable)


def write_report_html(out: Path, runs: Sequence[Run], rows: list[dict[str, Any]], plots: list[Path], sort: str,
                      trials: list, single: bool) -> Path:
    from dnnlab.commands.report_html import write_html

    if single:
        return write_html(out / "report.html", f"dnnlab report: {runs[0].path}", run_sections(runs[0], rows, plots))
    return write_html(out / "report.html", f"dnnlab report: {len(runs)} runs", sweep_sections(runs, rows, plots, sort, trials))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dnnlab report", description="A run or sweep folder → table, report.md, report.html, PNG plots.")
    p.add_argument("paths", nargs="+", type=Path, help="run folders and/or sweep folders (multirun/<date>/<time>)")
    p.add_argument("--sort", default="best_val_acc", choices=METRICS, help="metric to sort by (default best_val_acc)")
    p.add_argument("--format", choices=("md", "csv", "json"), help="print the table in this format to stdout")
    p.add_argument("--out", type=Path, help="folder for report.md, report.html and the plots (default: the run or sweep folder)")
    p.add_argument("--no-group", action="store_true", help="one row per seed even when seed is swept")
    return p


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    args = parser().parse_args(argv)
    status = Console(stderr=True)
    if len(args.paths) == 1 and (Path(args.paths[0]) / ".study").is_dir() and args.out is None and args.format is None:
        from dnnlab.studies import report as study_report

        study_report.write(args.paths[0])  # a study's report: its verdict and comparisons, not a sweep table
        return 0
    try:
        runs, any_sweep = collect(args.paths)
    except ReportError as error:
        print(error, file=sys.stderr)
        return 2
    out = output_folder(args.paths, runs, args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = build_table(runs, args.sort, group=not args.no_group)
    single = len(runs) == 1 and not any_sweep
    if single:
        plots = run_plots(runs[0], out)
        text = run_markdown(runs[0], rows, plots)
    else:
        plots = [sweep_plot(runs, out, group=not args.no_group)]
        text = sweep_markdown(runs, rows, plots[0], args.sort)
        extra = settings_plots(runs, args.sort, out)
        searched, optuna_plots, notes = optuna_views(args.paths, runs, out)
        extra += optuna_plots
        text += "".join(f"![{p.stem}]({p.name})\n" for p in extra) + "".join(f"\n{n}\n" for n in notes)
        plots += extra
    trials = [t for t in (best_trial(p, runs) for p in args.paths) if t]
    if not single and searched:  # the studies themselves know every trial, also other machines'
        trials = searched
    text += "".join(f"\n## Best trial\n\n{best_trial_text(t)}\n" for t in trials)
    (out / "report.md").write_text(text)
    write_report_html(out, runs, rows, plots, args.sort, trials, single)
    if single and args.format is None:
        from dnnlab.observe.console import results_table

        print_rich(results_table({**runs[0].summary, "health": runs[0].health}))
    else:
        render(rows, args.format, f"dnnlab report: {len(runs)} runs, sorted by {args.sort}")
    for trial in trials:
        status.print(best_trial_text(trial), markup=False, highlight=False)
    status.print(f"wrote report.md, report.html and {len(plots)} plot(s) to {out}")
    return 0
