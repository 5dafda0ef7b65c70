"""`dnnlab list [GROUP]`: every config group and option with its one-line description."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from dnnlab.conf import CONF_DIR

CONF = CONF_DIR
USER_MARK = "(yours) "
LAUNCHERS = "hydra/launcher"  # dnnlab's launcher options (slurm, stacked), listed with the technique groups


def user_configs() -> Path | None:
    """The user's config folder (`$DNNLAB_CONFIGS`, else ./configs) when it exists; Hydra searches it after dnnlab's."""
    folder = Path(os.environ.get("DNNLAB_CONFIGS") or "configs").expanduser()
    return folder.resolve() if folder.is_dir() else None


def roots() -> list[Path]:
    """The config folders: dnnlab's, then the user's."""
    return [CONF, *filter(None, [user_configs()])]


def groups() -> list[str]:
    return sorted({p.name for root in roots() for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))})


def options(group: str) -> dict[str, str]:
    """Option name → the first comment line of its YAML (the description); the user's are marked."""
    found: dict[str, str] = {}
    for root in roots():
        for path in sorted((root / group).glob("[!_]*.yaml")):  # _common.yaml: shared keys, not an option
            found.setdefault(path.stem, ("" if root == CONF else USER_MARK) + describe(path))
    return found


def describe(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#") and "@package" not in line:
            return line.lstrip("# ").strip()
    return ""


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    parser = argparse.ArgumentParser(prog="dnnlab list", description=__doc__)
    parser.add_argument("group", nargs="?", help="one config group (default: all)")
    args = parser.parse_args(argv)
    valid = [LAUNCHERS if group == "hydra" else group for group in groups()]
    if args.group and args.group not in valid:
        parser.exit(2, f"dnnlab list: no config group {args.group!r}; valid: {', '.join(valid)}\n")
    table = Table(show_header=True, header_style="bold", title="dnnlab config groups (pick one: GROUP=OPTION)")
    table.add_column("group")
    table.add_column("option")
    table.add_column("what it is")
    for group in [args.group] if args.group else valid:
        for name, text in options(group).items():
            table.add_row(group, name, escape(text))  # descriptions are plain text, not rich markup
        table.add_section()
    console = Console()
    console.print(table)
    if LAUNCHERS in ([args.group] if args.group else valid):
        from dnnlab.runs.stacks import describe

        console.print(escape(describe()))
    return 0
