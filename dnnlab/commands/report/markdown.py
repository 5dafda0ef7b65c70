"""report.md of a run or a sweep."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from dnnlab.commands.report.folders import Run
from dnnlab.commands.report.tables import markdown_table, varying_overrides
from dnnlab.observe import health
from dnnlab.runs.rundir import RunDir


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
