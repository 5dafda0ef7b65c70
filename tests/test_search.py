"""Optuna sweeps in `dnnlab report` (the study's best trial and Optuna's views, from the storage or
rebuilt from the jobs) and one study searched by two concurrent `dnnlab train -m` processes."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dnnlab.cli import main as dnnlab
from dnnlab.commands.report.folders import read_overrides
from dnnlab.commands.report.optuna import same_value
from helpers.configs import tiny

optuna = pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("report_bench", ROOT / "bench" / "report_bench.py")
report_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report_bench)
TINY = tiny("data.limit=200", "model.depth=1", "model.width=8", "trainer.diagnostics=false", without=["trainer.progress"])


def optuna_sweep(root: Path, storage: str | None = None) -> Path:
    """A synthetic sweep whose jobs recorded an Optuna sweeper (as hydra.yaml does)."""
    return report_bench.make_sweep(root, jobs=12, epochs=3, seeds=1, optuna=True, storage=storage)


def test_an_optuna_sweep_without_storage_is_rebuilt_from_its_jobs(tmp_path, capsys):
    sweep = optuna_sweep(tmp_path / "sweep", storage="sqlite:///nowhere.db")  # recorded, but not here
    assert dnnlab(["report", str(sweep), "--format", "json"]) == 0
    captured = capsys.readouterr()
    rows, err = json.loads(captured.out), captured.err
    best = max(rows, key=lambda r: r["best_val_acc"])
    assert {"optimization_history.png", "param_importances.png"} <= {p.name for p in sweep.glob("*.png")}
    assert not (tmp_path / "nowhere.db").exists()  # never creates a database
    text = (sweep / "report.md").read_text()
    assert f"best trial (Optuna): {best['best_val_acc']}" in text and "rebuilt from 12 jobs" in text
    assert f"run {sweep / best['run']}" in text
    page = (sweep / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 5 and "rebuilt from 12 jobs" in page


def test_a_plain_sweep_does_not_import_optuna(tmp_path):
    sweep = report_bench.make_sweep(tmp_path / "sweep", jobs=4, epochs=2)
    code = ("import sys; from dnnlab.commands.report import main; main([sys.argv[1]]); "
            "print(sorted(m for m in ('optuna', 'plotly', 'tensorboard') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, str(sweep)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def search(cwd: Path, sweep_dir: str, seed: int, trials: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dnnlab.cli", "train", "-m", "experiment=search", *TINY,
         f"hydra.sweeper.n_trials={trials}", "hydra.sweeper.study_name=shared", "hydra.sweeper.storage=sqlite:///search.db",
         f"hydra.sweeper.sampler.seed={seed}", f"hydra.sweep.dir={sweep_dir}"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_two_processes_search_one_study_in_one_sqlite_file(tmp_path, capsys):
    n = 3
    workers = [search(tmp_path, name, seed, n) for name, seed in (("a", 1), ("b", 2))]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / 'search.db'}")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(study.trials) == len(trials) == 2 * n  # they add up, none lost
    assert sorted(t.number for t in trials) == list(range(2 * n))
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 2 * n  # no point searched twice
    jobs = sorted((tmp_path / d / str(i) for d in "ab" for i in range(n)))
    matched = []
    for job in jobs:  # each job folder is exactly one trial, with that trial's result
        overrides = read_overrides(job)
        [trial] = [t for t in trials if all(same_value(overrides[k], v) for k, v in t.params.items())]
        assert trial.value == json.loads((job / "summary.json").read_text())["best_val_acc"]
        matched.append(trial.number)
    assert sorted(matched) == list(range(2 * n))

    capsys.readouterr()
    assert dnnlab(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--format", "json"]) == 0
    captured = capsys.readouterr()
    rows, err = json.loads(captured.out), captured.err
    assert len(rows) == 2 * n
    best = study.best_trial
    [line] = [l for l in " ".join(err.split()).split("best trial (Optuna): ")[1:]]
    assert line.startswith(f"{best.value} with") and f"trial {best.number} of {2 * n}" in line
    where = next(job for job in jobs if all(same_value(read_overrides(job)[k], v) for k, v in best.params.items()))
    assert f"run {where}" in line
    assert (tmp_path / "param_importances.png").is_file() and (tmp_path / "report.html").is_file()


def test_the_first_start_on_a_fresh_database_retries_the_schema_race(tmp_path, monkeypatch):
    """Two processes creating Optuna's tables at once: the loser gets IntegrityError and retries."""
    from sqlalchemy.exc import IntegrityError

    from dnnlab.runs.sweeps import prepare_study

    real, calls = optuna.create_study, []

    def racing(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
        return real(**kwargs)

    monkeypatch.setattr(optuna, "create_study", racing)
    prepare_study(f"sqlite:///{tmp_path / 'fresh.db'}", "s", "maximize")
    assert len(calls) == 2 and calls[1]["load_if_exists"] and calls[1]["directions"] == ["maximize"]
    assert optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'fresh.db'}").direction.name == "MAXIMIZE"


def test_a_sweep_without_storage_creates_no_study(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from dnnlab.runs.sweeps import SharedStudy

    monkeypatch.setattr(optuna, "create_study", lambda **kw: pytest.fail("created a study"))
    SharedStudy().on_multirun_start(OmegaConf.create({"hydra": {"sweeper": {"_target_": "x.OptunaSweeper", "storage": None}}}))
    SharedStudy().on_multirun_start(OmegaConf.create({"hydra": {"sweeper": {"_target_": "hydra.BasicSweeper"}}}))
