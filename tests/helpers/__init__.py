"""Helpers the tests share (import as `from helpers.X import …`; tests/ is on the path)."""
