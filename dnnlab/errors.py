"""Errors a person can fix (bad config, data, checkpoint, run folder) and how they are shown:
one paragraph on stderr, no traceback, a non-zero exit code (`--debug` shows the traceback)."""
from __future__ import annotations

import difflib
import signal
from typing import Iterable


class UserError(Exception):
    """A problem with what was asked for, not a bug: the message says what is wrong and what is valid."""

    exit_code = 2


class ConfigError(UserError):
    """A config group option, key or value that is not valid."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read, is not safe to load, or does not fit the model."""


class RunFolderError(UserError):
    """`resume=` names no run, or another process is writing the run folder."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM; a KeyboardInterrupt so that a sweep stops too.

    Hydra's launchers record a job's `Exception` and go on with the next job; a Ctrl-C must end the sweep.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    def __reduce__(self) -> tuple:
        return type(self), (self.signum,)  # a joblib worker's job sends it back to the sweep's process


def did_you_mean(word: str, options: Iterable[str], prefix: str = "") -> str:
    """' Did you mean [prefix.]X?' for the closest option (difflib), or ''."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    if not close:
        return ""
    return f" Did you mean {prefix + '.' if prefix else ''}{close[0]}?"


def is_user_error(error: BaseException) -> bool:
    """Errors shown as a paragraph: ours, and the data module's missing/corrupt-file errors."""
    from dnnlab.data import DataError

    return isinstance(error, (UserError, DataError))


def one_line(error: BaseException) -> str:
    """The error as one line (for summaries and sweep reports)."""
    text = " ".join(str(error).split())
    return text if is_user_error(error) else f"{type(error).__name__}: {text}"
