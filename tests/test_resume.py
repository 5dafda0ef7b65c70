"""Exact resume: extend a finished run, or continue one stopped by SIGTERM, SIGINT or SIGKILL, and
get bit-for-bit the numbers of an uninterrupted run."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dnnlab.api import compose, train
from dnnlab.cli import main
from dnnlab.runs.checkpoints import load_checkpoint
from helpers.configs import QUIET, tiny

SMALL = tiny(*QUIET, without=["trainer.epochs"])
# Every stateful technique in play: dropout (RNG), batch norm (running stats), early stopping
# (patience counter, best weights), a per-step (1cycle) or a plateau (performance) schedule.
STATEFUL = tiny(*QUIET, "model.width=32", "trainer.batch_size=16", "normalization=batchnorm",
                "regularization=[dropout,early_stopping]", without=["model.depth", "trainer.epochs"])
ONE_CYCLE = [*STATEFUL, "schedule=1cycle", "trainer.epochs=10", "regularization.early_stopping.patience=1",
             "regularization.early_stopping.min_delta=0.05"]
PLATEAU = [*STATEFUL, "schedule=performance", "schedule.patience=0", "optimizer.lr=0.05", "trainer.epochs=16",
           "regularization.early_stopping.patience=2", "regularization.early_stopping.min_delta=0.03"]
COMPARED = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc")


def rows(run: Path) -> list[tuple]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [tuple(json.loads(line)[k] for k in COMPARED) for line in lines]


def start(cwd: Path, *overrides: str) -> subprocess.Popen:
    """`dnnlab train OVERRIDES` in `cwd`/run, one thread like this test process (same arithmetic)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(cwd / "terminal.txt", "w") as terminal:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "dnnlab.cli", "train", *overrides, "hydra.run.dir=run"],
                                cwd=cwd, stdout=terminal, stderr=subprocess.STDOUT, env=env, text=True)


def wait_until(condition, proc: subprocess.Popen, cwd: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"training ended or stalled early:\n{(cwd / 'terminal.txt').read_text()[-3000:]}")
        time.sleep(0.005)


def epochs_logged(cwd: Path) -> int:
    metrics = cwd / "run" / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


@pytest.mark.parametrize("schedule", [["schedule=none"], ["schedule=power", "schedule.s=20"],
                                      ["schedule=exponential", "schedule.s=50"]])
def test_extend_a_finished_run_equals_one_long_run(tmp_path, schedule):
    straight = train(compose([*SMALL, *schedule, "trainer.epochs=6"]), run_dir=tmp_path / "straight")
    first = train(compose([*SMALL, *schedule, "trainer.epochs=3"]), run_dir=tmp_path / "run")
    assert first["epochs"] == 3
    extended = train(compose([f"resume={tmp_path / 'run'}", "trainer.epochs=6"]))  # the run's own config + epochs
    assert extended["run_dir"] == str(tmp_path / "run")
    assert rows(tmp_path / "run") == rows(tmp_path / "straight")  # epochs 1..6, none twice, none missing
    assert [r[0] for r in rows(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]
    assert extended["test_acc"] == straight["test_acc"] and extended["test_loss"] == straight["test_loss"]
    assert "epochs: 6" in (tmp_path / "run" / ".hydra" / "config.yaml").read_text()  # a bare resume= later sees 6


def check_interrupted_then_resume(run: Path, sig: signal.Signals, after: int, overrides: list[str], straight: Path):
    """The run stopped at an epoch boundary ≥ `after`; resuming it reproduces the straight run exactly."""
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == sig.name
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == summary["epochs"] == len(rows(run)) >= after  # a boundary, and only its rows
    assert last["step"] == summary["steps"] == rows(run)[-1][1]

    expected = train(compose(overrides), run_dir=straight)
    assert expected["status"] == "early_stopped"
    resumed = train(compose([f"resume={run}"]))
    assert rows(run) == rows(straight)
    for key in ("status", "epochs", "test_acc", "test_loss", "restored_best_epoch"):
        assert resumed[key] == expected[key], key


def test_sigterm_mid_epoch_exits_143_and_resume_equals_uninterrupted_run(tmp_path):
    """A `dnnlab train` process (1cycle) gets SIGTERM while an epoch is under way."""
    proc = start(tmp_path, *ONE_CYCLE)
    wait_until(lambda: epochs_logged(tmp_path) >= 3, proc, tmp_path)
    time.sleep(random.uniform(0.0, 0.02))  # into the next epoch
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, (tmp_path / "terminal.txt").read_text()
    assert "resume=" in (tmp_path / "terminal.txt").read_text()  # how to continue
    check_interrupted_then_resume(tmp_path / "run", signal.SIGTERM, 3, ONE_CYCLE, tmp_path / "straight")


def test_ctrl_c_mid_epoch_exits_130_and_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    """SIGINT (what Ctrl-C sends) reaches this very process while `dnnlab train` (performance schedule) runs in it."""
    monkeypatch.chdir(tmp_path)
    stray = []
    previous = signal.signal(signal.SIGINT, lambda *_: stray.append("SIGINT outside training"))

    def press_ctrl_c():
        while epochs_logged(tmp_path) < 4:
            time.sleep(0.002)
        time.sleep(random.uniform(0.0, 0.02))
        os.kill(os.getpid(), signal.SIGINT)

    try:
        threading.Thread(target=press_ctrl_c, daemon=True).start()
        assert main(["train", *PLATEAU, "hydra.run.dir=run"]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not stray
    check_interrupted_then_resume(tmp_path / "run", signal.SIGINT, 4, PLATEAU, tmp_path / "straight")


def test_sigkill_or_a_second_sigterm_at_a_random_moment_leaves_a_loadable_last_checkpoint(tmp_path):
    """Killed at any instant (even mid-write) a run keeps a whole last.pt, and its stale lock does not block resume.
    A second SIGTERM right after the first ends the process at once (no cleanup), files still whole."""
    # Runs until killed; ~1 MB checkpoints, so some kills land mid-write (test_rundir kills one there for sure).
    endless = tiny(*QUIET, "model.width=128", "trainer.epochs=100000", without=["model.depth"])
    names = ["kill", "twice"]
    procs = {}
    for name in names:
        (tmp_path / name).mkdir()
        procs[name] = start(tmp_path / name, *endless)
    for name in names:
        cwd, proc = tmp_path / name, procs[name]
        wait_until(lambda: epochs_logged(cwd) >= 1, proc, cwd)
        time.sleep(random.uniform(0.0, 0.3))  # any moment must do
        if name == "twice":
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) in (143, -signal.SIGTERM)
        else:
            proc.kill()
            proc.wait()
        state = load_checkpoint(cwd / "run" / "checkpoints" / "last.pt")
        assert state["step"] == state["epoch"] * 10  # a boundary (10 batches of 32 per epoch), maybe epoch 0
    # A killed run's lock file is left behind but is not held: resume takes over and cleans up temp files.
    run = tmp_path / "kill" / "run"
    assert (run / ".lock").exists()
    epoch = load_checkpoint(run / "checkpoints" / "last.pt")["epoch"]
    summary = train(compose([f"resume={run}", f"trainer.epochs={epoch + 1}"]))
    assert summary["status"] == "completed" and summary["epochs"] == epoch + 1
    assert [r[0] for r in rows(run)] == list(range(1, epoch + 2))
    assert not list(run.rglob("*.tmp"))


def test_wall_s_after_a_resume_is_the_total_of_every_process(tmp_path, monkeypatch):
    """Issue 11 item 10e: 2 epochs kept of 0.2 s each, interrupted in the 3rd, resumed for epochs 3–4."""
    from dnnlab.engine.trainer import Trainer

    epoch = Trainer.train_epoch
    first_process = [True]

    def slow_epoch(self):
        time.sleep(0.2)
        if first_process[0] and self.epoch == 2:
            self.interrupt(signal.SIGINT)  # the third epoch is abandoned, and its time with it
        return epoch(self)

    monkeypatch.setattr(Trainer, "train_epoch", slow_epoch)
    first = train(compose([*SMALL, "trainer.epochs=4"]), run_dir=tmp_path / "run")
    assert first["status"] == "interrupted" and first["epochs"] == 2
    first_process[0] = False
    resumed = train(compose([f"resume={tmp_path / 'run'}"]))
    assert resumed["status"] == "completed"
    assert resumed["wall_s"] >= 0.8  # 4 kept epochs of ≥ 0.2 s, in two processes
    assert 0.4 <= resumed["wall_s_this_process"] <= resumed["wall_s"] - 0.4
    assert resumed["wall_s"] <= resumed["wall_s_this_process"] + first["wall_s"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["wall_s"] == resumed["wall_s"]


def test_hook_state_is_keyed_by_its_declared_name_not_its_class(tiny_cfg, tmp_path):
    """A renamed hook class still finds its state: checkpoints name hooks by `key`."""
    from dnnlab.api import build_trainer
    from dnnlab.runs.checkpoints import RunFolderHook
    from dnnlab.runs.rundir import RunDir

    class Renamed(RunFolderHook):
        pass

    trainer = build_trainer(tiny_cfg(), RunDir(tmp_path / "a"))
    state = trainer.state_dict()
    assert {"RunFolderHook", "DataFingerprint", "DiagnosticsHook"} <= set(state["hooks"])
    assert Renamed.__name__ == "Renamed" and Renamed(RunDir(tmp_path / "b"), "val_loss", "min", "").state_key == "RunFolderHook"
