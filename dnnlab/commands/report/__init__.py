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
  best trial and views (dnnlab.commands.report.optuna). Files go to the sweep folder (or the common parent of
  several paths) unless `--out DIR`.
- Both: `report.html`, the same report as one self-contained page (dnnlab.commands.report.html, on
  the page builder dnnlab.commands.report.page).

`--format md|csv|json` prints the table in that format to stdout instead of the rich table.

Modules: `folders` (run and sweep folders read back as `Run`s), `tables` (the table and its formats),
`plots` (PNG plots), `markdown` (report.md), `html` (report.html), `page` (the self-contained HTML
page any report builds, studies' too), `optuna` (an Optuna sweep's best trial and views).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from dnnlab.commands.report import optuna as report_optuna
from dnnlab.commands.report.folders import Run, collect
from dnnlab.commands.report.html import write_report_html
from dnnlab.commands.report.markdown import run_markdown, sweep_markdown
from dnnlab.commands.report.optuna import best_trial, best_trial_text
from dnnlab.commands.report.plots import run_plots, settings_plots, sweep_plot
from dnnlab.commands.report.tables import METRICS, build_table, csv_table, markdown_table, rich_table
from dnnlab.errors import ReportError


def optuna_views(paths: Sequence[Path], runs: Sequence[Run], out: Path) -> tuple[list[dict[str, Any]], list[Path], list[str]]:
    """For the Optuna sweeps among `paths`: each study's best trial, Optuna's own plots, and notes on
    what could not be drawn (see dnnlab.commands.report.optuna; optuna is imported only for such a sweep)."""
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
