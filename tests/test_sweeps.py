"""Sweeps at scale: parallel (joblib), submitit, Optuna, re-running a sweep, thread budgets."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from dnnlab.api import compose, train
from dnnlab.runs.rundir import RunDir
from dnnlab.runs.sweeps import plan_job, thread_budget
from helpers.folders import snapshot
from helpers.configs import tiny

ONE_EPOCH = tiny("data.limit=200", "model.depth=1", "model.width=8")
TINY = tiny("data.limit=200", "model.depth=1", "model.width=8", "trainer.epochs=2")


def dnnlab(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dnnlab.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def metrics(job: Path) -> list[dict]:
    timing = ("epoch_s", "samples_per_s", "diag_s")
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in timing} for r in rows]


def jobs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def test_joblib_sweep_equals_the_sequential_one(tmp_path):
    sweep = ["-m", "optimizer=sgd,adam", *TINY]
    seq = dnnlab("train", *sweep, "hydra.sweep.dir=seq", cwd=tmp_path)
    par = dnnlab("train", *sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweep.dir=par", cwd=tmp_path)
    assert seq.returncode == 0 and par.returncode == 0, par.stderr[-2000:]
    for a, b in zip(jobs(tmp_path / "seq"), jobs(tmp_path / "par"), strict=True):
        assert metrics(a) == metrics(b)
    assert len(jobs(tmp_path / "par")) == 2


def test_rerunning_a_finished_sweep_skips_every_job_and_resumes_an_interrupted_one(tmp_path):
    args = ["train", "-m", "optimizer=sgd,adam", *TINY, "hydra.sweep.dir=sw"]
    assert dnnlab(*args, cwd=tmp_path).returncode == 0
    first = [metrics(j) for j in jobs(tmp_path / "sw")]
    # Job 1 "was interrupted" after its first epoch: its folder holds epoch 1 only, and no summary.
    job1 = jobs(tmp_path / "sw")[1]
    cut = train(compose(["optimizer=adam", *ONE_EPOCH]), run_dir=tmp_path / "cut")
    assert cut["status"] == "completed"
    again = dnnlab(*args, "trainer.progress=true", "trainer.threads=1", cwd=tmp_path)  # display and threads: same jobs
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("skipped") == 2
    # Now cut job 1 back to epoch 1 with the right config, as an interruption would leave it.
    (job1 / "summary.json").unlink()
    RunDir(job1).keep_metrics_through(1)
    state_epoch1 = tmp_path / "cut" / "checkpoints" / "last.pt"
    cfg1 = OmegaConf.load(job1 / ".hydra" / "config.yaml")
    import torch
    state = torch.load(state_epoch1, weights_only=True)
    state["config"] = OmegaConf.to_yaml(cfg1, resolve=True)  # same job config, trainer.epochs=2
    torch.save(state, job1 / "checkpoints" / "last.pt")
    third = dnnlab(*args, cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    assert third.stderr.count("skipped") == 1 and "resuming" in third.stderr
    assert metrics(job1) == first[1]  # the resumed job reproduces the uninterrupted numbers


def test_plan_job_matches_by_config_and_never_clears_another_configs_run(tmp_path):
    """Changed deliberately (issue 11, item 3): another config's finished run is kept, not cleared."""
    cfg = compose(TINY)
    job = tmp_path / "sweep" / "0"
    job.mkdir(parents=True)
    assert (plan_job(job, 1, cfg).action, plan_job(job, 1, cfg).folder) == ("new", job)
    train(cfg, run_dir=job)
    plan = plan_job(job, 1, cfg)
    assert plan.action == "skip" and plan.summary["status"] == "completed" and plan.folder == job
    before = snapshot(job)
    other = compose([*TINY, "optimizer.lr=0.1"])  # an Optuna re-run may give this job number new values
    plan = plan_job(job, 1, other)
    assert plan.action == "new" and plan.folder == tmp_path / "sweep" / "0-1" and plan.folder.is_dir()
    assert snapshot(job) == before
    assert plan_job(tmp_path / "sweep" / "7", 1, cfg).folder == job  # found by config, whatever its number
    RunDir(job).write_summary({**RunDir(job).read_summary(), "status": "diverged"})  # a result, like completed
    plan = plan_job(job, 1, cfg)
    assert plan.action == "skip" and plan.summary["status"] == "diverged" and RunDir(job).holds_run()
    RunDir(job).write_summary({"status": "failed", "error": "boom"})  # the same config's failed attempt restarts
    plan = plan_job(job, 1, cfg)
    assert (plan.action, plan.folder) == ("restart", job) and not RunDir(job).holds_run()


def test_rerunning_a_changed_sweep_keeps_every_finished_job(tmp_path, capsys, monkeypatch):
    from dnnlab.cli import main

    first = dnnlab("train", "-m", "optimizer=sgd,adam,nadam", *TINY, "hydra.sweep.dir=sw", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    kept = {j.name: snapshot(j) for j in jobs(tmp_path / "sw")}
    monkeypatch.chdir(tmp_path)  # the re-runs in-process: the same Hydra app, a few seconds cheaper
    capsys.readouterr()
    assert main(["train", "-m", "optimizer=adam,rmsprop", *TINY, "hydra.sweep.dir=sw"]) == 0
    assert {j.name: snapshot(j) for j in jobs(tmp_path / "sw")} == kept  # nothing deleted, nothing mixed
    err = " ".join(capsys.readouterr().err.split())
    assert f"sweep job {tmp_path / 'sw' / '0'} already completed in {tmp_path / 'sw' / '1'}: kept, skipped" in err
    assert f"new run in {tmp_path / 'sw' / '1-1'} ({tmp_path / 'sw' / '1'} holds another config's run: kept)" in err
    assert json.loads((tmp_path / "sw" / "1-1" / "summary.json").read_text())["status"] == "completed"
    # A changed value (trainer.epochs) is another job too.
    assert main(["train", "-m", "optimizer=sgd", *ONE_EPOCH, "hydra.sweep.dir=sw"]) == 0
    assert {j.name: snapshot(j) for j in jobs(tmp_path / "sw")} == kept
    capsys.readouterr()
    assert main(["report", "sw", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["run"] for r in rows) == ["0", "0-1", "1", "1-1", "2"]
    assert sorted(r["optimizer"] for r in rows) == ["adam", "nadam", "rmsprop", "sgd", "sgd"]


def test_thread_budget_rule(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    joblib = OmegaConf.create({"launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 4}})
    assert thread_budget(None, joblib) == 2
    assert thread_budget(3, joblib) == 3  # trainer.threads wins
    assert thread_budget(None, OmegaConf.create({"launcher": {"_target_": "x.JoblibLauncher", "n_jobs": -1}})) == 1
    assert thread_budget(None, OmegaConf.create({"launcher": {"_target_": "x.SlurmLauncher", "cpus_per_task": 6}})) == 6
    assert thread_budget(None, OmegaConf.create({"launcher": {"_target_": "x.BasicLauncher"}})) is None
    assert thread_budget(None, None) is None


def test_optuna_search_best_value_matches_the_best_run(tmp_path):
    result = dnnlab("train", "-m", "experiment=search", "hydra.sweeper.n_trials=3", *TINY, "hydra.sweep.dir=opt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    best = yaml.safe_load((tmp_path / "opt" / "optimization_results.yaml").read_text())
    values = [json.loads((j / "summary.json").read_text())["best_val_acc"] for j in jobs(tmp_path / "opt")]
    assert len(values) == 3
    assert best["best_value"] == pytest.approx(max(values))
    assert set(best["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "regularization.dropout.rate"}
    report = dnnlab("report", "opt", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "best trial (Optuna)" in report.stderr and str(best["best_value"]) in report.stderr
    best_job = max(jobs(tmp_path / "opt"), key=lambda j: json.loads((j / "summary.json").read_text())["best_val_acc"])
    assert f"run {best_job}" in " ".join(report.stderr.split())
    assert "Best trial" in (tmp_path / "opt" / "report.md").read_text()


def test_submitit_local_sweep_completes(tmp_path):
    result = dnnlab("train", "-m", "hydra/launcher=submitit_local", "optimizer=sgd,adam", *TINY, "hydra.sweep.dir=sub", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    done = jobs(tmp_path / "sub")
    assert len(done) == 2
    assert all(json.loads((j / "summary.json").read_text())["status"] == "completed" for j in done)


def test_slurm_launcher_config_has_documented_keys():
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("dnnlab.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.timeout_min > 0 and launcher.mem_gb > 0 and launcher.max_num_timeout > 0


def test_missing_plugin_names_the_extra():
    from hydra.errors import MissingConfigException

    from dnnlab.config.overrides import config_error

    error = MissingConfigException("Could not find 'hydra/sweeper/optuna'", missing_cfg_file="hydra/sweeper/optuna", options=["basic"])
    message = str(config_error(error, ["hydra/sweeper=optuna"]))
    assert "hydra-optuna-sweeper" in message and ".[sweeps]" in message and "Valid: basic" in message


def test_a_failed_jobs_record_on_a_full_disk_leaves_the_printed_error_as_its_record(tmp_path, monkeypatch, capsys):
    """record_failure is the sweep's courtesy note; a disk too full for it must not end the sweep with a traceback."""
    from dnnlab.errors import StorageError
    from dnnlab.runs import sweep_job

    def full(*args, **kwargs):
        raise StorageError("Cannot write summary.json: no space left on device.")

    monkeypatch.setattr(RunDir, "write_summary", full)
    sweep_job.record_failure(tmp_path / "job", RuntimeError("boom"), OmegaConf.create({}), OmegaConf.create({}))
    assert "boom" in capsys.readouterr().err
