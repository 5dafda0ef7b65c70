"""The report's PNG plots (matplotlib's object API with the Agg canvas: no pyplot, no display needed).

A run: loss, accuracy, learning rate, per-layer diagnostics; a sweep: validation curves of every run
(seed groups as a band) and which settings go with which result.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from dnnlab.commands.report.folders import Run
from dnnlab.commands.report.tables import HIGHER_IS_BETTER, seed_key, varying_overrides
from dnnlab.observe import health

LAYER_PLOTS = {  # metrics prefix → (file, title, log scale)
    "grad_norm": ("grad_flow.png", "gradient flow: ‖∂loss/∂W‖ per layer (probe batch)", True),
    "act_std": ("act_std.png", "activation std per layer", False),
    "dead_frac": ("dead_frac.png", "dead ReLU units per layer (fraction)", False),
    "sat_frac": ("sat_frac.png", "saturated units per layer (fraction)", False),
}


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
