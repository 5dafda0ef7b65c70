"""What a person sees in the terminal: a rich progress bar with live metrics and a results table."""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from dnnlab.engine.hooks import Hook

console = Console(stderr=True)


def attach_console(logger: logging.Logger) -> logging.Handler:
    """Warnings and errors to the terminal (the progress bar shows the per-epoch numbers)."""
    from rich.logging import RichHandler

    handler = RichHandler(console=console, level=logging.WARNING, show_path=False, show_time=False)
    logger.addHandler(handler)
    logger.propagate = False  # Hydra's root handler would print every line a second time
    return handler


def epoch_progress(out: Console = console, label: str = "epoch") -> Progress:
    """A bar over epochs whose text is its task's description."""
    return Progress(TextColumn(f"[bold]{label}"), MofNCompleteColumn(), BarColumn(bar_width=20), TimeElapsedColumn(),
                    TextColumn("{task.description}"), console=out, transient=False)


class ProgressBar(Hook):
    """One bar over epochs; its text shows the last epoch's losses and accuracies."""

    stage = "report"

    def __init__(self, epochs: int, out: Console = console):
        self.epochs, self.out = epochs, out
        self.progress: Progress | None = None

    def on_fit_start(self, trainer) -> None:
        self.progress = epoch_progress(self.out)
        self.progress.start()
        self.task = self.progress.add_task("", total=self.epochs, completed=trainer.epoch)

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        shown = {"loss": "train_loss", "acc": "train_acc", "val_loss": "val_loss", "val_acc": "val_acc"}
        text = " ".join(f"{label} {metrics[key]:.3f}" for label, key in shown.items()
                        if isinstance(metrics.get(key), float) and math.isfinite(metrics[key]))
        self.progress.update(self.task, advance=1, description=text)

    def on_train_end(self, trainer) -> None:
        if self.progress is not None:
            self.progress.stop()


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "—" if value is None else str(value)


def results_table(summary: dict[str, Any]) -> Table:
    """The small table printed at the end of a run."""
    table = Table(title="dnnlab run", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("status", "epochs", "best_epoch", "best_val_acc", "best_val_loss", "test_acc", "test_loss", "wall_s", "device", "run_dir"):
        if key in summary:
            table.add_row(key, fmt(summary[key]))
    for option, state in summary.get("fast_path", {}).items():
        table.add_row(option.removeprefix("trainer."), Text(state, style="yellow" if state.startswith("off") else ""))
    if "health" in summary:
        add_health(table, summary["health"])
    return table


def stack_table(results: Sequence[Any], folders: dict[int, str]) -> Table:
    """One row per member of a stack: its folder, status and numbers (or the error it failed with, under its folder)."""
    from dnnlab.errors import RunFolderTaken

    solo = any(isinstance(r, dict) and "trained_solo" in (r.get("stack") or {}) for r in results)
    title = f"dnnlab: {len(results)} runs, trained one after another" if solo else f"dnnlab stack of {len(results)}"
    table = Table(title=title, show_header=True, header_style="bold")
    for column in ("run_dir", "status", "epochs", "best_val_acc", "test_acc", "wall_s"):
        table.add_column(column, justify="left" if column in ("run_dir", "status") else "right")
    for k, result in enumerate(results):
        if isinstance(result, dict):
            table.add_row(folders[k], *(fmt(result.get(key)) for key in ("status", "epochs", "best_val_acc", "test_acc", "wall_s")))
        else:  # a folder another process holds was not run: not this member's failure
            status = "not run" if isinstance(result, RunFolderTaken) else "failed"
            cell = Text(folders[k])
            cell.append(f"\n{str(result)[:200]}", style="red")
            table.add_row(cell, Text(status, style="bold red"), "", "", "", "")
    return table


def add_health(table: Table, verdicts: list[dict[str, Any]]) -> None:
    """The health verdicts (dnnlab.observe.health) as a section of a two-column table."""
    from dnnlab.observe.health import describe

    table.add_section()
    if not verdicts:
        table.add_row(Text("health", style="bold green"), "no problems found")
    for v in verdicts:
        table.add_row(Text(v["verdict"], style="bold yellow"), Text(describe(v), justify="left"))
