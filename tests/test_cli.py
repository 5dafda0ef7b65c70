"""`dnnlab train` sweeps and resumes through the command line (in-process: Hydra runs the same way)."""
from __future__ import annotations

import json

import pytest
import yaml
from omegaconf import OmegaConf

from dnnlab.api import compose, train
from dnnlab.cli import main
from dnnlab.runs.rundir import RunDir
from helpers.folders import snapshot
from helpers.configs import QUIET, tiny

FAST = tiny(*QUIET, "trainer.epochs=2")


def summary(folder):
    return json.loads((folder / "summary.json").read_text())


def test_a_sweep_goes_on_past_a_failing_and_a_diverging_job_then_exits_1(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "-m", "data=mnist,digits", "optimizer=sgd", "optimizer.lr=0.01,1e6", *FAST,
                 "data.download=false", f"data.root={tmp_path / 'no-data'}", "hydra.sweep.dir=sweep"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1
    statuses = {n: summary(tmp_path / "sweep" / n)["status"] for n in ("0", "1", "2", "3")}
    assert sorted(statuses.values()) == ["completed", "diverged", "failed", "failed"]
    failed = [n for n, s in statuses.items() if s == "failed"]
    for n in failed:
        assert "mnist" in summary(tmp_path / "sweep" / n)["error"] and "data.download=false" in summary(tmp_path / "sweep" / n)["error"]
    assert "2 of 4 sweep jobs failed, 1 diverged" in err
    assert all(f"sweep/{n} (" in err for n in failed)  # which jobs, with their overrides
    assert "Traceback" not in err


def test_resume_through_the_cli_continues_in_the_run_folder_and_leaves_no_other(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *FAST, "hydra.run.dir=first"]) == 0
    # The run's own config (width 16; the default 100 would not fit its checkpoint), 3 epochs.
    assert main(["train", "resume=first", "trainer.epochs=3"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first"]  # no fresh outputs/… folder
    rows = [json.loads(line) for line in (tmp_path / "first" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert summary(tmp_path / "first")["epochs"] == 3
    assert "epochs: 3" in (tmp_path / "first" / ".hydra" / "config.yaml").read_text()
    # A sweep over runs to continue (here one): each job continues in its run's folder.
    assert main(["train", "-m", "resume=first", "trainer.epochs=4", "hydra.sweep.dir=sweep"]) == 0
    assert len((tmp_path / "first" / "metrics.jsonl").read_text().splitlines()) == 4
    assert [p.name for p in (tmp_path / "sweep").iterdir()] == ["multirun.yaml"]  # no empty job folder


def test_a_second_train_into_the_same_run_dir_is_refused_in_one_paragraph(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *FAST, "hydra.run.dir=first"]) == 0
    rows = (tmp_path / "first" / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(["train", *FAST, "optimizer=sgd", "hydra.run.dir=first"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "resume=" in err and "trainer.overwrite=true" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (tmp_path / "first" / "metrics.jsonl").read_text() == rows
    assert "torch.optim.Adam" in (tmp_path / "first" / ".hydra" / "config.yaml").read_text()  # not sgd's


@pytest.mark.parametrize("state", ["setting up", "training"])
def test_a_refused_second_writer_changes_nothing_in_the_folder(capsys, tmp_path, monkeypatch, state):
    """Another process holds the folder (here: this test holds its lock) while it sets up or trains."""
    monkeypatch.chdir(tmp_path)
    live = tmp_path / "live"
    if state == "training":
        train(compose([*FAST, "trainer.epochs=1"]), run_dir=live)
    with RunDir(live).lock():
        before = snapshot(live)
        assert main(["train", *FAST, "activation=tanh", "hydra.run.dir=live"]) == 2
        assert snapshot(live) == before and (live / ".lock").exists()
    err = capsys.readouterr().err
    assert ("in use by another dnnlab process" if state == "setting up" else "already holds a run") in err


def test_dnnlab_writes_hydras_files_itself_and_old_run_folders_still_work(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *FAST, "optimizer=sgd", "hydra.run.dir=new"]) == 0
    hydra = tmp_path / "new" / ".hydra"
    assert "${" not in (hydra / "config.yaml").read_text()  # resolved: what ran, not what the variables say today
    assert "optimizer=sgd" in yaml.safe_load((hydra / "overrides.yaml").read_text())
    assert yaml.safe_load((hydra / "hydra.yaml").read_text())["hydra"]["job"]["name"] == "train"
    # A folder written before dnnlab wrote .hydra/ itself: Hydra's unresolved config.yaml.
    old = tmp_path / "old"
    cfg = compose([*FAST, "optimizer=adam"])
    train(cfg, run_dir=old)
    (old / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (old / ".hydra" / "overrides.yaml").write_text("- optimizer=adam\n")
    assert "${" in (old / ".hydra" / "config.yaml").read_text()
    assert main(["train", "resume=old", "trainer.epochs=3"]) == 0
    assert summary(old)["epochs"] == 3
    assert main(["eval", "old"]) == 0
    assert main(["report", "old", "new", "--format", "json"]) == 0
    assert {row["optimizer"] for row in json.loads(capsys.readouterr().out)} == {"sgd", "adam"}


def test_a_duplicate_sweep_launch_leaves_a_job_another_process_trains_alone(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = ["train", "-m", "optimizer=sgd,adam", *FAST, "hydra.sweep.dir=sweep"]
    assert main(sweep) == 0
    live = tmp_path / "sweep" / "1"
    (live / "summary.json").unlink()  # as while another process still trains it: last.pt, no summary
    with RunDir(live).lock():
        before = snapshot(live)
        capsys.readouterr()
        assert main(sweep) == 1
        assert snapshot(live) == before  # no `failed`, nothing
    err = " ".join(capsys.readouterr().err.split())
    assert "in use by another dnnlab process" in err and "1 sweep job was not run" in err and "failed" not in err
    assert main(sweep) == 0  # once that process is gone, the job continues from its last.pt
    assert summary(live)["status"] == "completed" and (live / "checkpoints" / "last.pt").is_file()


def test_a_run_started_with_overwrite_resumes(tmp_path):
    """trainer.overwrite says how the folder was claimed; continuing the run claims nothing, so it may differ."""
    run = tmp_path / "run"
    assert main(["train", *FAST, f"hydra.run.dir={run}", "trainer.overwrite=true"]) == 0
    assert main(["train", f"resume={run}", "trainer.epochs=3"]) == 0
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
