"""The background checkpoint writer (dnnlab.runs.writer): order, failures kept for their own run folder, exit."""
from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from dnnlab.errors import StorageError
from dnnlab.runs import rundir
from dnnlab.runs.checkpoints import load_checkpoint
from dnnlab.runs.rundir import RunDir
from dnnlab.runs.writer import WRITER


def background(path) -> RunDir:
    run = RunDir(path)
    run.background = True
    return run


def test_checkpoints_land_in_order_and_hold_the_state_of_when_they_were_asked_for(tmp_path):
    run = background(tmp_path / "run")
    weights = torch.zeros(3)
    run.save_checkpoint("best", {"model": {"w": weights}, "epoch": 1})
    run.copy_checkpoint("best", "last")  # after best.pt is on disk, not before
    weights += 1  # training goes on while the disk catches up
    run.save_checkpoint("last", {"model": {"w": weights}, "epoch": 2})
    run.finish_writes()
    assert torch.equal(load_checkpoint(run.checkpoint_path("best"))["model"]["w"], torch.zeros(3))
    assert load_checkpoint(run.checkpoint_path("last"))["epoch"] == 2


def test_a_failed_write_is_raised_to_its_own_run_only_and_its_later_writes_are_dropped(tmp_path, monkeypatch):
    full, fine = background(tmp_path / "full"), background(tmp_path / "fine")
    real = rundir.atomic_write

    def disk_full_in(folder):
        def atomic_write(path, write, mode="wb"):
            if folder in path.parents:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, write, mode)
        return atomic_write

    monkeypatch.setattr(rundir, "atomic_write", disk_full_in(full.path))
    full.save_checkpoint("best", {"model": {}, "epoch": 1})
    full.copy_checkpoint("best", "last")  # dropped: it would link a best.pt that is not there
    fine.save_checkpoint("last", {"model": {}, "epoch": 1})
    WRITER.wait()
    fine.finish_writes()  # the other run's failure is not this one's
    assert load_checkpoint(fine.checkpoint_path("last"))["epoch"] == 1
    with pytest.raises(StorageError, match=r"checkpoints/best\.pt.*keeps the last complete one"):
        full.save_checkpoint("last", {"model": {}, "epoch": 2})
    assert not full.checkpoint_path("last").exists()
    full.finish_writes()  # told once


def test_the_folder_lock_waits_for_the_writes(tmp_path, monkeypatch):
    run = background(tmp_path / "run")
    release, real = threading.Event(), rundir.atomic_write

    def slow(path, write, mode="wb"):
        release.wait(5)
        return real(path, write, mode)

    monkeypatch.setattr(rundir, "atomic_write", slow)
    with run.lock():
        run.save_checkpoint("last", {"model": {}, "epoch": 1})
        threading.Timer(0.2, release.set).start()
    assert run.checkpoint_path("last").exists()  # on disk before another process could take the folder


def test_the_interpreter_exits_only_once_the_writes_are_on_disk(tmp_path):
    script = textwrap.dedent(f"""
        import time
        from dnnlab.runs import rundir
        from dnnlab.runs.rundir import RunDir
        real = rundir.atomic_write
        def slow(path, write, mode="wb"):
            time.sleep(0.5)
            real(path, write, mode)
        rundir.atomic_write = slow
        run = RunDir({str(tmp_path / "run")!r})
        run.background = True
        run.save_checkpoint("last", {{"model": {{}}, "epoch": 7}})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 7


def test_a_run_whose_newer_best_pt_could_not_be_written_reports_the_best_on_disk(tmp_path, monkeypatch):
    from dnnlab.api import compose, train
    from helpers.configs import tiny

    real, written = rundir.atomic_write, []

    def full_after_two_bests(path, write, mode="wb"):
        if path.name == "best.pt":
            if len(written) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(path)
        return real(path, write, mode)

    monkeypatch.setattr(rundir, "atomic_write", full_after_two_bests)
    with pytest.raises(StorageError, match=r"best\.pt"):
        train(compose(tiny("trainer.epochs=8")), run_dir=tmp_path / "run")
    summary = RunDir(tmp_path / "run").read_summary()
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert summary["status"] == "failed" and "best.pt" in summary["error"]
    assert summary["best_epoch"] == best["epoch"] == 2  # not the epoch whose best.pt never reached the disk
