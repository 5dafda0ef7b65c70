"""`dnnlab train` sweeps and resumes through the command line (in-process: Hydra runs the same way)."""
from __future__ import annotations

import json

from dnnlab.cli import main

FAST = ["trainer.progress=false", "trainer.diagnostics=false", "trainer.device=cpu",
        "data.limit=300", "model.depth=2", "model.width=16", "trainer.epochs=2"]


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
