"""Folder helpers for tests."""
from __future__ import annotations

import pathlib


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    """Every file under `folder` (but the lock file) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}
