"""report.html of a run or a sweep, built from the parts of dnnlab.commands.report.page (which escapes them)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from dnnlab.commands.report.folders import Run
from dnnlab.commands.report.optuna import best_trial_text
from dnnlab.commands.report.page import Cell, Code, Image, Items, Paragraph, Row, Section, Table, write_html
from dnnlab.commands.report.tables import cell, display_columns, run_row, seed_groups, seed_key, varying_overrides
from dnnlab.observe import health
from dnnlab.runs.rundir import RunDir


def html_cells(row: dict[str, Any], columns: Sequence[str]) -> list:
    return [Cell(cell(row, c), row.get(c) if row.get(c) != "" else None) for c in columns]


def html_table(rows: list[dict[str, Any]], runs: Sequence[Run]):
    """The report's table; a seed group's row expands into its member jobs."""
    columns = display_columns(rows)
    varying = varying_overrides(runs)
    members = seed_groups([run_row(run, varying) for run in runs], varying) if any("n" in r for r in rows) else {}
    return Table(columns, [
        Row(html_cells(row, columns), [html_cells(m, columns) for m in members.get(seed_key(row, varying), [])])
        for row in rows
    ])


def health_items(verdicts: list[dict[str, Any]]):
    return Items([(v["verdict"], health.describe(v)) for v in verdicts]) if verdicts else Paragraph("No problems found.")


def image_parts(plots: Sequence[Path]) -> list:
    return [Image(p) for p in plots]


def run_sections(run: Run, rows: list[dict[str, Any]], plots: list[Path]) -> list:
    config = RunDir(run.path, create=False).config_path
    overrides = " ".join(f"{k}={v}" for k, v in run.overrides.items()) or "(none)"
    return [
        Section("Summary", [html_table(rows, [run])]),
        Section("Health", [health_items(run.health)]),
        Section("Plots", image_parts(plots)),
        Section("Config", [Paragraph(f"Overrides: {overrides}"), *([Code(config.read_text())] if config.is_file() else [])]),
    ]


def sweep_sections(runs: Sequence[Run], rows: list[dict[str, Any]], plots: list[Path], sort: str, trials: list) -> list:
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


def write_report_html(out: Path, runs: Sequence[Run], rows: list[dict[str, Any]], plots: list[Path], sort: str,
                      trials: list, single: bool) -> Path:
    if single:
        return write_html(out / "report.html", f"dnnlab report: {runs[0].path}", run_sections(runs[0], rows, plots))
    return write_html(out / "report.html", f"dnnlab report: {len(runs)} runs", sweep_sections(runs, rows, plots, sort, trials))
