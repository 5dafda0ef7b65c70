"""The run folder: atomic writes (even under SIGKILL), safe checkpoint loading, the writer lock,
and what a run leaves when it diverges or fails."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

from dnnlab.api import build_trainer, compose, train
from dnnlab.errors import CheckpointError, RunFolderError
from dnnlab.engine.hooks import Hook
from helpers.configs import QUIET, tiny
from helpers.folders import snapshot
from dnnlab.runs.checkpoints import find_checkpoint, load_checkpoint, model_mismatch, run_folder_of
from dnnlab.runs.rundir import RunDir, atomic_write, remove_stray

FAST = tiny(*QUIET, without=["trainer.epochs"])


# ------------------------------------------------------------------------------ atomic writes
def test_a_failing_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "x.json"
    atomic_write(target, lambda f: f.write("old"), mode="w")

    def half_then_crash(f):
        f.write("new, half writ")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, half_then_crash, mode="w")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a", lambda f: f.write(b"1"))
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600: collaborators can read runs


def test_sigkill_in_the_middle_of_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    """A real SIGKILL while half of the new last.pt is on disk: last.pt is still the old, whole one."""
    run = RunDir(tmp_path / "run")
    run.save_checkpoint("last", {"model": {"w": torch.zeros(1000)}, "epoch": 1})
    script = textwrap.dedent(f"""
        import time
        from dnnlab.runs.rundir import RunDir, atomic_write
        def stall_halfway(f):
            f.write(b"PK" * 50_000)
            f.flush()
            print("halfway", flush=True)
            time.sleep(60)
        atomic_write(RunDir({str(run.path)!r}).checkpoint_path("last"), stall_halfway)
    """)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout.readline().strip() == "halfway"
        proc.kill()
    state = load_checkpoint(run.checkpoint_path("last"))
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.zeros(1000))
    assert list(run.path.rglob("*.tmp"))  # the half-written temp file …
    with run.lock():
        pass
    assert not list(run.path.rglob("*.tmp"))  # … goes when the next writer takes the folder


# ------------------------------------------------------------------------------- checkpoints
class MakeDir:
    """Unpickling this would call os.mkdir: the folder would prove that code ran."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def test_a_checkpoint_with_a_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"model": {}, "payload": MakeDir(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "evil.pt")
    message = str(info.value)
    assert "weights_only=True" in message and "mkdir" in message and "refuses" in message
    assert not marker.exists()


@pytest.mark.parametrize("content, words", [
    (None, "truncated"),  # the first half of a real checkpoint
    (b"not a checkpoint at all", "cannot be read"),
])
def test_unreadable_checkpoints_are_named(tmp_path, content, words):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"model": {"w": torch.ones(10_000)}}, path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(path)


def test_a_plain_state_dict_is_not_a_dnnlab_checkpoint(tmp_path):
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="not a dnnlab checkpoint"):
        load_checkpoint(tmp_path / "weights.pt")


def test_model_mismatch_names_each_layer():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    saved = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, 3)).state_dict()
    saved["2.weight"] = torch.zeros(1)
    problems = model_mismatch(model, saved)
    assert "0.weight is [5, 4] in the checkpoint but [8, 4] in the model" in problems
    assert "1.weight is [3, 5] in the checkpoint but [3, 8] in the model" in problems
    assert any("2.weight" in p and "not in the model" in p for p in problems)
    assert model_mismatch(model, model.state_dict()) == []


def test_every_checkpoint_holds_what_an_exact_resume_needs(finished_run):
    state = load_checkpoint(finished_run / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "schedule", "epoch", "step", "rng", "hooks", "config"} <= set(state)
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda", "shuffle"}
    assert state["epoch"] == 2 and state["hooks"]["RunFolderHook"]["best_epoch"] in (1, 2)
    assert "epochs: 2" in state["config"]


# -------------------------------------------------------------------- finding a run to resume
def test_find_checkpoint_accepts_a_run_or_a_file_and_explains_anything_else(finished_run, tmp_path):
    last = finished_run / "checkpoints" / "last.pt"
    assert find_checkpoint(finished_run) == last and find_checkpoint(last) == last
    assert run_folder_of(last) == finished_run and run_folder_of(tmp_path / "loose.pt") is None
    with pytest.raises(RunFolderError, match="does not exist"):
        find_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty" / "notes.txt").parent.mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("")
    with pytest.raises(RunFolderError, match=r"no checkpoints/last.pt \(it holds: notes.txt\)"):
        find_checkpoint(tmp_path / "empty")
    with pytest.raises(RunFolderError, match=r"sweep folder; resume one of its runs, e\.g\. resume=.*run"):
        find_checkpoint(finished_run.parent)


# ----------------------------------------------------------------------------------- the lock
def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.lock():
        with pytest.raises(RunFolderError, match="in use by another dnnlab process"):
            with RunDir(tmp_path / "run").lock():
                pass
    with run.lock():  # released: the next writer gets it
        pass


def test_a_metrics_row_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    run = RunDir(tmp_path)
    run.append_metrics({"epoch": 1, "val_loss": 1.0})
    run.append_metrics({"epoch": 2, "val_loss": 0.5})
    with open(run.metrics_path, "a") as f:
        f.write('{"epoch": 3, "val_lo')  # killed mid-append
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    run.keep_metrics_through(2)
    assert run.metrics_path.read_text().count("\n") == 2 and run.read_metrics()[-1]["epoch"] == 2


def test_remove_stray_takes_only_folders_that_hold_nothing(tmp_path):
    empty = tmp_path / "outputs" / "day" / "empty"
    (empty / ".hydra").mkdir(parents=True)
    (empty / ".hydra" / "config.yaml").write_text("a: 1")
    (empty / ".lock").write_text("")
    assert remove_stray(empty) and not (tmp_path / "outputs").exists()
    kept = tmp_path / "kept"
    (kept / ".hydra").mkdir(parents=True)
    (kept / "metrics.jsonl").write_text("{}\n")
    assert not remove_stray(kept) and (kept / "metrics.jsonl").exists()
    setting_up = tmp_path / "setting-up"  # another process has locked it and not written yet
    with RunDir(setting_up).lock():
        assert not remove_stray(setting_up) and (setting_up / ".lock").exists()


# ---------------------------------------------------------------- divergence and failures
def test_a_huge_learning_rate_diverges_with_status_epoch_and_step(tmp_path, capsys):
    summary = train(compose([*FAST, "trainer.epochs=3", "optimizer=sgd", "optimizer.lr=1e6"]), run_dir=tmp_path)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["status"] == summary["status"] == "diverged"
    assert saved["diverged_epoch"] == 1 and 1 <= saved["diverged_step"] <= 10
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 0  # the last good state
    terminal = capsys.readouterr().err
    assert "Diverged" in terminal and "epoch 1, step" in terminal and "optimizer.lr" in terminal


class Poison(Hook):
    """Sets a weight to NaN when `epoch` starts."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_start(self, trainer):
        if trainer.epoch + 1 == self.epoch:
            with torch.no_grad():
                next(trainer.model.parameters())[0, 0] = float("nan")


def test_nan_in_epoch_3_keeps_epoch_2_checkpoints_and_names_the_step(tmp_path):
    run = RunDir(tmp_path)
    trainer = build_trainer(compose([*FAST, "trainer.epochs=5"]), run, [Poison(3)])
    summary = trainer.fit()
    assert summary["status"] == "diverged" and summary["diverged_epoch"] == 3
    assert summary["diverged_step"] == 2 * trainer.steps_per_epoch + 1  # the first step of epoch 3
    assert load_checkpoint(run.checkpoint_path("last"))["epoch"] == 2
    assert load_checkpoint(run.checkpoint_path("best"))["epoch"] <= 2
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3] and run.read_metrics()[2]["train_loss"] is None
    assert run.read_summary()["status"] == "diverged"


class Explode(Hook):
    def on_epoch_end(self, trainer, metrics):
        if metrics["epoch"] == 2:
            raise RuntimeError("boom in a hook")


def test_an_error_during_training_writes_status_failed_then_raises(tmp_path):
    run = RunDir(tmp_path)
    trainer = build_trainer(compose([*FAST, "trainer.epochs=4"]), run, [Explode()])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    summary = run.read_summary()
    assert summary["status"] == "failed" and "boom in a hook" in summary["error"]
    assert load_checkpoint(run.checkpoint_path("last"))["epoch"] == 2  # written before the hook raised


def test_best_is_a_snapshot_that_survives_later_writes_of_last(tmp_path):
    import torch

    from dnnlab.runs.rundir import RunDir

    run = RunDir(tmp_path)
    run.save_checkpoint("last", {"epoch": 1})
    run.copy_checkpoint("last", "best")
    run.save_checkpoint("last", {"epoch": 2})
    assert torch.load(run.checkpoint_path("best"), weights_only=True)["epoch"] == 1
    assert torch.load(run.checkpoint_path("last"), weights_only=True)["epoch"] == 2
    assert not [p for p in run.checkpoint_path("last").parent.iterdir() if p.name.startswith(".")]


def test_taking_the_lock_removes_only_dnnlabs_own_temp_files(tmp_path):
    """`hydra.run.dir=.` in a user's folder: their hidden *.tmp files are theirs, not a killed writer's."""
    run = RunDir(tmp_path)
    own = [tmp_path / ".summary.json.k2j4x_9a.tmp", tmp_path / "checkpoints" / ".last.pt.abcd1234.tmp",
           tmp_path / "checkpoints" / ".best.pt.4242.link.tmp", tmp_path / ".hydra" / ".config.yaml.zz11yy22.tmp"]
    theirs = [tmp_path / ".notes.tmp", tmp_path / "sub" / ".x.tmp", tmp_path / "sub" / ".summary.json.k2j4x_9a.tmp",
              tmp_path / ".hydra" / ".mine.tmp"]
    for path in own + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    with run.lock():
        pass
    assert [p for p in own if p.exists()] == []
    assert [p for p in theirs if not p.exists()] == []


# ------------------------------------------------------- a folder that already holds a run
def test_training_into_a_folder_that_holds_a_run_is_refused_and_changes_nothing(finished_run):
    before = snapshot(finished_run)
    with pytest.raises(RunFolderError) as info:
        train(compose([*FAST, "trainer.epochs=1"]), run_dir=finished_run)
    message = str(info.value)
    assert "already holds a run" in message and f"resume={finished_run}" in message
    assert "trainer.overwrite=true" in message and "\n" not in message
    assert snapshot(finished_run) == before


def test_overwrite_moves_the_old_run_aside_and_says_where(finished_copy, tmp_path):
    run = finished_copy  # tmp_path/run, a finished 2-epoch run of FAST
    old = snapshot(run)
    train(compose([*FAST, "trainer.epochs=1", "trainer.overwrite=true"]), run_dir=run)
    assert snapshot(tmp_path / "run.old-1") == old  # the old run, whole, untouched
    assert [r["epoch"] for r in RunDir(run).read_metrics()] == [1]  # never mixed
    assert f"is now in {tmp_path / 'run.old-1'}" in (run / "train.log").read_text()
    train(compose([*FAST, "trainer.epochs=1", "trainer.overwrite=true"]), run_dir=run)
    assert (tmp_path / "run.old-2" / "metrics.jsonl").is_file() and snapshot(tmp_path / "run.old-1") == old


def test_overwrite_never_moves_or_mixes_a_users_own_files(finished_copy):
    (finished_copy / "notes.txt").write_text("mine")
    before = snapshot(finished_copy)
    with pytest.raises(RunFolderError, match=r"did not write \(notes\.txt\)"):
        train(compose([*FAST, "trainer.epochs=1", "trainer.overwrite=true"]), run_dir=finished_copy)
    assert snapshot(finished_copy) == before and not (finished_copy.parent / "run.old-1").exists()


def test_run_folder_names_are_spelt_only_in_rundir():
    """RunDir owns every run-folder path: no other module spells one out (docstrings and messages aside),
    dnnlab.runs.checkpoints (finding and reading checkpoints) included."""
    import re

    from pathlib import Path

    import dnnlab

    names = re.compile(r'"(metrics\.jsonl|summary\.json|checkpoints|last\.pt|best\.pt|\.hydra|overrides\.yaml|'
                       r'hydra\.yaml|eval\.json|export\.json)"')
    root = Path(dnnlab.__file__).parent
    found = [f"{path.relative_to(root)}: {line.strip()}" for path in root.rglob("*.py") if path != root / "runs" / "rundir.py"
             for line in path.read_text().splitlines() if names.search(line)]
    assert found == []


def test_a_read_only_run_dir_makes_no_folder(tmp_path):
    run = RunDir(tmp_path / "elsewhere", create=False)
    assert run.config_path == tmp_path / "elsewhere" / ".hydra" / "config.yaml" and not run.path.exists()
