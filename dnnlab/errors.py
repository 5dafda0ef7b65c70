"""Errors a person can fix (bad config, data, checkpoint, run folder) and how they are shown:
one paragraph on stderr, no traceback, a non-zero exit code (`--debug` shows the traceback)."""
from __future__ import annotations

import contextlib
import difflib
import errno
import signal
import sys
from pathlib import Path
from typing import Iterable, Iterator


class UserError(Exception):
    """A problem with what was asked for, not a bug: the message says what is wrong and what is valid."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A config group option, key or value that is not valid (raised by the builder that finds it)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read, is not safe to load, or does not fit the model."""


class RunFolderError(UserError):
    """`resume=` names no run, or another process is writing the run folder."""


class RunFolderTaken(RunFolderError):
    """The folder is not this run's to write (another process holds its lock, or it holds another run);
    the refused process wrote nothing there."""


class UnsafeConfigError(UserError):
    """A config read from disk names a callable or resolver outside dnnlab's allow-list (see safe_config)."""


class StorageError(UserError):
    """A file dnnlab must write cannot be written: no space left, a read-only folder, no permission."""


class DataError(UserError):
    """A data set is missing, corrupt, or could not be downloaded (importable as dnnlab.data.DataError too)."""


class ReportError(UserError):
    """A path that cannot be reported on (importable as dnnlab.commands.report.ReportError too)."""


# errno → (what happened, what to do): the OS errors that are the machine's state, not a bug.
STORAGE_ERRNOS = {
    errno.ENOSPC: ("no space left on device", "free space there or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free space there or write elsewhere"),
    errno.EROFS: ("the file system is read-only", "give a writable folder or make this one writable"),
    errno.EACCES: ("permission denied", "give a writable folder or make this one writable"),
    errno.EPERM: ("operation not permitted", "give a writable folder or make this one writable"),
}


def storage_cause(error: BaseException) -> OSError | None:
    """The OSError of a full or read-only disk behind `error` (torch.save hides it behind `unexpected pos …`)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def storage_error(error: BaseException, target: object = None, after: str = "") -> StorageError | None:
    """A StorageError naming the file when `error` comes from a full or read-only disk, else None."""
    cause = storage_cause(error)
    if cause is None:
        return None
    what, fix = STORAGE_ERRNOS[cause.errno]
    # Without a `target` the error was met somewhere (cli.main): a permission error may have been a read.
    verb = "write" if target is not None or cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "use"
    target = target if target is not None else cause.filename or "a file"
    # The file that failed when it is not `target` or its temp file beside it (e.g. a folder above it).
    where = f" ({cause.filename})" if cause.filename and Path(cause.filename).parent != Path(str(target)).parent else ""
    return StorageError(f"Cannot {verb} {target}{where}: {what}. {fix[0].upper()}{fix[1:]}.{' ' + after if after else ''}")


@contextlib.contextmanager
def writing(target: object, after: str = "") -> Iterator[None]:
    """Raise a full or read-only disk met while writing `target` as a StorageError naming it."""
    try:
        yield
    except StorageError as error:
        if not after:
            raise
        raise StorageError(f"{error} {after}") from error
    except Exception as error:
        storage = storage_error(error, target, after)
        if storage is None:
            raise
        raise storage from error


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
    """Errors shown as a paragraph: every UserError."""
    return isinstance(error, UserError)


def one_line(error: BaseException) -> str:
    """The error as one line (for summaries and sweep reports)."""
    text = " ".join(str(error).split())
    return text if is_user_error(error) else f"{type(error).__name__}: {text}"


def report_error(error: BaseException, prefix: str = "") -> None:
    """One paragraph on stderr."""
    print(f"dnnlab: error: {prefix}{one_line(error)}", file=sys.stderr)
