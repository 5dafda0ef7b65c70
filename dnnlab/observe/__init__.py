"""Watching a run: per-layer diagnostics, health verdicts, and the terminal (progress bar, tables)."""
