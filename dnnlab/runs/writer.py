"""The background writer: checkpoint files go to disk on one thread, in the order they were asked for.

A checkpoint is serialized where it is taken (the state of that moment), then its atomic write (temp file,
fsync, rename, fsync of the folder) runs here while training goes on: the disk's latency, a quarter of a
small run's epoch bookkeeping, no longer holds up the next epoch. A kill at any moment leaves what a kill
a little earlier would have: the last checkpoint that was written whole (resume drops the metrics rows
after it). A write that fails is raised, as the StorageError it was, by that run folder's next `submit` or
`check`, never another run's; the folder's later writes are dropped until then (a `last.pt` linked to a
`best.pt` that failed would lie). `wait` returns when everything asked for is on disk: the run folder's
lock, its summary and every read of a checkpoint wait for it, and so does the interpreter's exit.
"""
from __future__ import annotations

import atexit
import os
import queue
import threading
from pathlib import Path
from typing import Callable

DEPTH = 16  # writes in flight at most (each holds its serialized checkpoint); a full queue waits for the disk


class BackgroundWriter:
    """One daemon thread that runs file writes in order; failures are kept for their run folder."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[tuple[Path, Callable[[], None]]] = queue.Queue(maxsize=DEPTH)
        self.failed: dict[Path, BaseException] = {}
        self.thread: threading.Thread | None = None
        self.starting = threading.Lock()

    def submit(self, folder: Path, write: Callable[[], None]) -> None:
        """Run `write` (a write into run folder `folder`) after those asked for before; raises its earlier failure."""
        self.check(folder)
        with self.starting:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self.run, name="dnnlab-writer", daemon=True)
                self.thread.start()
        self.jobs.put((folder, write))

    def wait(self) -> None:
        """Return once every write asked for so far is done (or failed)."""
        if self.thread is not None and self.thread.is_alive():
            self.jobs.join()

    def check(self, folder: Path) -> None:
        """Raise the failure of a write into `folder` that nobody has been told of yet."""
        error = self.take(folder)
        if error is not None:
            raise error

    def take(self, folder: Path) -> BaseException | None:
        """The failure of a write into `folder` nobody has been told of yet (now told), or None."""
        return self.failed.pop(folder, None)

    def run(self) -> None:
        while True:
            folder, write = self.jobs.get()
            try:
                if folder not in self.failed:
                    write()
            except BaseException as error:  # kept for the run's own thread to raise
                self.failed[folder] = error
            finally:
                self.jobs.task_done()

    def forget(self) -> None:
        """In a forked child: the parent's thread and queue are not this process's."""
        self.__init__()


WRITER = BackgroundWriter()
atexit.register(WRITER.wait)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WRITER.forget)
