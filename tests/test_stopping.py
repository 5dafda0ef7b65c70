"""A run killed or stopped at any instant: best.pt agrees with the state a resume loads, signals at the
end of a run and in sweep workers are honoured, and SIGKILLs at random moments never change the numbers."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dnnlab.api import compose, train
from dnnlab.runs.checkpoints import find_checkpoint, load_checkpoint
from dnnlab.runs.rundir import RunDir
from helpers.configs import QUIET, tiny

FAST = tiny(*QUIET, "data.limit=200", "model.depth=1", "model.width=8", without=["trainer.epochs"])
# val_loss improves, stalls, improves again: epochs with and without a new best.pt.
WAVY = [*FAST, "optimizer=sgd", "optimizer.lr=0.5", "trainer.epochs=5"]
TIMING = ("epoch_s", "samples_per_s")


class Killed(BaseException):
    """Stands for SIGKILL: no `except Exception` sees it, so nothing runs that a kill would skip."""


def numbers(run: Path) -> list[dict]:
    """metrics.jsonl without its timings."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def best_epoch_agrees(run: Path) -> int:
    """best.pt holds the best epoch recorded by the state a resume would load; returns that epoch."""
    state = load_checkpoint(find_checkpoint(run))
    recorded = state["hooks"]["RunFolderHook"]["best_epoch"]
    best = run / "checkpoints" / "best.pt"
    assert (load_checkpoint(best)["epoch"] if best.exists() else 0) == recorded
    return recorded


@pytest.fixture(scope="module")
def wavy(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    summary = train(compose(WAVY), run_dir=run)
    return run, summary


def kill_after_writes(monkeypatch, n: int) -> list:
    """Make the n-th checkpoint file operation (a save or a link) raise Killed once it is done."""
    calls = []

    def counted(method):
        def wrapper(self, *args, **kwargs):
            method(self, *args, **kwargs)
            calls.append(args)
            if len(calls) == n:
                raise Killed
        return wrapper

    monkeypatch.setattr(RunDir, "save_checkpoint", counted(RunDir.save_checkpoint))
    monkeypatch.setattr(RunDir, "copy_checkpoint", counted(RunDir.copy_checkpoint))
    return calls


@pytest.mark.parametrize("kill_after", range(1, 10))
def test_a_kill_after_any_checkpoint_write_leaves_best_pt_at_the_recorded_best_epoch(tmp_path, monkeypatch, wavy, kill_after):
    """Killed right after the n-th checkpoint file operation (a save or a link, e.g. between last.pt and
    best.pt): best.pt matches the state's best epoch, and after resume= the summary's."""
    straight, expected = wavy
    with monkeypatch.context() as patch:
        calls = kill_after_writes(patch, kill_after)
        try:
            train(compose(WAVY), run_dir=tmp_path / "run")
        except Killed:
            pass
    if len(calls) < kill_after:
        pytest.skip(f"the run makes only {len(calls)} checkpoint writes")
    best_epoch_agrees(tmp_path / "run")
    summary = train(compose([f"resume={tmp_path / 'run'}"]))
    assert summary["best_epoch"] == expected["best_epoch"] == best_epoch_agrees(tmp_path / "run")
    assert numbers(tmp_path / "run") == numbers(straight)


def test_a_resumed_run_killed_after_a_new_best_leaves_no_summary_naming_the_old_one(tmp_path, monkeypatch, wavy):
    """A finished 3-epoch run extended to 5 and killed once epoch 4 (a new best) is written: the old
    summary (best epoch 2) no longer stands beside best.pt of epoch 4."""
    train(compose([*WAVY, "trainer.epochs=3"]), run_dir=tmp_path / "run")
    with monkeypatch.context() as patch:
        kill_after_writes(patch, 3)  # the resume's last.pt, then epoch 4's best.pt and its last.pt link
        with pytest.raises(Killed):
            train(compose([f"resume={tmp_path / 'run'}", "trainer.epochs=5"]))
    assert best_epoch_agrees(tmp_path / "run") == 4
    summary = tmp_path / "run" / "summary.json"
    assert not summary.exists() or json.loads(summary.read_text())["best_epoch"] == 4
    assert train(compose([f"resume={tmp_path / 'run'}"]))["best_epoch"] == wavy[1]["best_epoch"] == 4
    assert numbers(tmp_path / "run") == numbers(wavy[0])


def test_a_diverged_run_counts_the_steps_up_to_the_non_finite_one(tmp_path):
    summary = train(compose([*FAST, "model.depth=2", "model.width=16", "trainer.epochs=3", "optimizer=sgd",
                             "optimizer.lr=1e6"]), run_dir=tmp_path)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["status"] == summary["status"] == "diverged" and saved["diverged_epoch"] == 1
    assert saved["steps"] == saved["diverged_step"] == numbers(tmp_path)[-1]["step"] < 7  # 7 batches an epoch


@pytest.mark.parametrize("extra, status", [([], "completed"),
                                           (["regularization=[early_stopping]", "regularization.early_stopping.patience=1"],
                                            "early_stopped")])
def test_sigterm_during_the_test_evaluation_exits_143_and_resume_finishes_it(tmp_path, monkeypatch, extra, status):
    from dnnlab.cli import main
    from dnnlab.engine.trainer import Trainer

    expected = train(compose([*WAVY, *extra]), run_dir=tmp_path / "straight")
    assert expected["status"] == status
    evaluate = Trainer.evaluate

    def sigterm_during_test(self, x, y):
        if x is self.data.test_x:
            os.kill(os.getpid(), signal.SIGTERM)  # fit's handler takes it
        return evaluate(self, x, y)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "evaluate", sigterm_during_test)
        assert main(["train", *WAVY, *extra, f"hydra.run.dir={tmp_path / 'run'}"]) == 143
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["test_acc"] is None and "not evaluated" in summary["stop_reason"]
    assert summary["epochs"] == expected["epochs"]
    resumed = train(compose([f"resume={tmp_path / 'run'}"]))
    for key in ("status", "epochs", "test_acc", "test_loss", "best_epoch"):
        assert resumed[key] == expected[key], key
    assert numbers(tmp_path / "run") == numbers(tmp_path / "straight")


# ------------------------------------------------------------------ SIGKILL at random moments
# `dnnlab train` with two test-only patches: every atomic write and every best.pt → last.pt link is
# announced as a line in $EVENTS, and the $PAUSE_AT-th one of kind $PAUSE_KIND pauses (in the middle of
# the write: temp file written, not yet renamed; or between best.pt and last.pt) until the test kills it.
KILLABLE = textwrap.dedent("""
    import os, sys, time
    from dnnlab import cli
    from dnnlab.runs import rundir
    events, kind, at = open(os.environ["EVENTS"], "a"), os.environ.get("PAUSE_KIND"), int(os.environ.get("PAUSE_AT", 0))
    seen = {"write": 0, "link": 0}

    def announce(what, name):
        seen[what] += 1
        events.write(f"{what} {name}\\n")
        events.flush()
        if what == kind and seen[what] == at:
            events.write("paused\\n")
            events.flush()
            time.sleep(60)

    atomic_write, copy = rundir.atomic_write, rundir.RunDir.copy_checkpoint

    def paused_write(path, write, mode="wb"):
        def then_announce(f):
            write(f)
            f.flush()
            announce("write", path.name)
        atomic_write(path, then_announce, mode)

    def paused_copy(self, source, target):
        announce("link", f"{source}->{target}")
        copy(self, source, target)

    rundir.atomic_write, rundir.RunDir.copy_checkpoint = paused_write, paused_copy
    sys.exit(cli.main(sys.argv[1:]))
""")
# Every stateful technique: dropout (RNG), batch norm (running stats), early stopping (patience, best
# weights; it stops the run before trainer.epochs), a plateau schedule, per-layer diagnostics.
FAULTY = tiny("trainer.device=cpu", "model.width=64", "trainer.batch_size=16", "normalization=batchnorm",
              "regularization=[dropout,early_stopping]", "regularization.early_stopping.patience=4",
              "regularization.early_stopping.min_delta=0.03", "schedule=performance", "schedule.patience=0",
              "optimizer=sgd", "optimizer.lr=0.3", "trainer.epochs=30")


def killable(cwd: Path, overrides: list[str], kind: str | None, at: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EVENTS": str(cwd / "events.txt"),
           "PAUSE_KIND": kind or "", "PAUSE_AT": str(at)}
    (cwd / "events.txt").write_text("")
    with open(cwd / "terminal.txt", "w") as terminal:
        return subprocess.Popen([sys.executable, "-c", KILLABLE, "train", *overrides], cwd=cwd, env=env,
                                stdout=terminal, stderr=subprocess.STDOUT)


def events(cwd: Path) -> list[str]:
    return (cwd / "events.txt").read_text().splitlines()


def loads(run: Path) -> None:
    """What someone opening the killed run does: report reads it, eval scores its checkpoint."""
    from dnnlab.commands import evaluate
    from dnnlab.commands.report.folders import collect
    from dnnlab.commands.report.tables import build_table

    runs, _ = collect([run])
    assert build_table(runs, "best_val_acc")
    name = "best" if (run / "checkpoints" / "best.pt").exists() else "last"
    assert 0 <= evaluate.evaluate(evaluate.load_run(run, name, device="cpu"))["deterministic"]["acc"] <= 1


@pytest.mark.slow
def test_sigkill_at_random_moments_never_changes_the_numbers(tmp_path):
    """Up to 14 SIGKILLs (seeded): at a random instant, in the middle of a checkpoint, config or metrics write,
    or between best.pt and last.pt. After each the folder loads and best.pt agrees with the state; resume=
    continues, and the finished run's metrics.jsonl equals an uninterrupted run's, bit for bit."""
    straight = train(compose(FAULTY), run_dir=tmp_path / "straight")
    assert straight["status"] == "early_stopped"
    rng = random.Random(11)
    run, survived, plan = tmp_path / "run", 0, []
    command = [*FAULTY, f"hydra.run.dir={run}"]
    while survived < 14:
        # About one epoch of progress per attempt: a resume writes config.yaml, metrics.jsonl and last.pt first.
        kind = rng.choice(["time", "write", "write", "link"])
        at = {"time": rng.randint(3, 5), "write": rng.randint(2 if survived == 0 else 1, 5), "link": rng.randint(1, 2)}[kind]
        proc = killable(tmp_path, command, None if kind == "time" else kind, at)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            lines = events(tmp_path)
            if (kind == "time" and len(lines) >= at) or "paused" in lines:
                break
            time.sleep(0.002)
        if kind == "time":
            time.sleep(rng.uniform(0, 0.05))  # then any instant: mid-epoch, mid-append, mid-write
        if proc.poll() is not None:  # the run ended before that moment came
            assert proc.returncode == 0, (tmp_path / "terminal.txt").read_text()[-3000:]
            break
        proc.kill()
        proc.wait()
        survived += 1
        plan.append(f"{kind}:{events(tmp_path)[-2 if kind != 'time' else -1] if events(tmp_path) else '-'}")
        loads(run)
        best_epoch_agrees(run)
        command = [f"resume={run}"]
    assert survived >= 10, plan
    finished = train(compose([f"resume={run}"]))
    assert numbers(run) == numbers(tmp_path / "straight"), plan
    for key in ("status", "epochs", "steps", "best_epoch", "test_acc", "test_loss", "restored_best_epoch"):
        assert finished[key] == straight[key], key
    assert best_epoch_agrees(run) == straight["best_epoch"]
    print(f"{survived} kills survived: {plan}")


# ------------------------------------------------------------------ a killed joblib sweep
def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process parents from /proc")
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)])
def test_a_signal_to_a_joblib_sweep_stops_its_workers_and_leaves_the_jobs_resumable(tmp_path, sig, code):
    """SIGTERM/SIGINT (to the sweep's process only, not its group) reach the workers; a SIGKILLed sweep's
    workers notice it is gone. Either way each job stops at a step as `interrupted`, and no worker trains on."""
    endless = [*FAST, "trainer.epochs=100000", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "terminal.txt", "w") as terminal:
        proc = subprocess.Popen([sys.executable, "-m", "dnnlab.cli", "train", "-m", *endless, "hydra.sweep.dir=sweep"],
                                cwd=tmp_path, env=env, stdout=terminal, stderr=subprocess.STDOUT)
    jobs = [tmp_path / "sweep" / n for n in ("0", "1")]
    deadline = time.monotonic() + 120
    while not all((job / "metrics.jsonl").exists() for job in jobs):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "terminal.txt").read_text()[-3000:]
        time.sleep(0.05)
    workers = children(proc.pid)
    proc.send_signal(sig)
    try:
        assert proc.wait(timeout=60) == code, (tmp_path / "terminal.txt").read_text()[-3000:]
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if alive(pid)], "workers still running after the sweep was stopped"
    finally:  # leave nothing running, whatever happened
        for pid in [proc.pid, *workers]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "interrupted"
        assert load_checkpoint(job / "checkpoints" / "last.pt")["epoch"] == summary["epochs"] == len(numbers(job))
