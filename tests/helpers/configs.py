"""The one source of tiny run configs: `TINY` trains in well under a second on digits; a test states only
what it changes, with `tiny(...)`."""
from __future__ import annotations

from typing import Iterable

TINY = ("data.limit=300", "model.depth=2", "model.width=16", "trainer.epochs=1", "trainer.progress=false")
QUIET = ("trainer.diagnostics=false", "trainer.device=cpu")  # no per-layer probe; the CPU even on a GPU machine


def key(override: str) -> str:
    """The config key an override sets (`+a.b=1`, `~a.b` → `a.b`)."""
    return override.split("=", 1)[0].lstrip("+~")


def tiny(*changes: str, without: Iterable[str] = ()) -> list[str]:
    """TINY with `changes` (a change to one of its keys replaces that entry; the others are added after it) and
    without the keys in `without` (those keep the config's own default)."""
    dropped = {*map(key, changes), *without}
    return [o for o in TINY if key(o) not in dropped] + list(changes)
