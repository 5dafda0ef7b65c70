"""The report's table: one row per run (or per seed group as mean ± std), as rich, markdown, csv cells."""
from __future__ import annotations

import csv
import io
import statistics
from typing import Any, Sequence

from dnnlab.commands.report.folders import Run

METRICS = ("best_val_acc", "final_val_acc", "test_acc", "epochs", "wall_s")
HIGHER_IS_BETTER = {"best_val_acc", "final_val_acc", "test_acc"}


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
