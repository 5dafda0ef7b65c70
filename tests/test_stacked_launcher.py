"""`hydra/launcher=stacked` end to end (dnnlab.cli.main in-process): one solo-format run folder per job,
the jobs without a stacked form trained alone, re-runs, failures, Optuna batches, interruption."""
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from dnnlab.cli import main
from dnnlab.runs.rundir import RunDir
from helpers.configs import tiny
from helpers.folders import snapshot

TINY = tiny("data.limit=200", "model.depth=1", "model.width=8", "trainer.diagnostics=false")
STACKED = ["train", "-m", "hydra/launcher=stacked"]
TIMING = ("epoch_s", "samples_per_s", "diag_s")


@pytest.fixture
def sweep(tmp_path, monkeypatch, capsys):
    """Run `dnnlab train -m hydra/launcher=stacked ARGS` in tmp_path; returns (exit code, stderr as one line)."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main([*STACKED, *args])
        return code, " ".join(capsys.readouterr().err.split())

    return run


def jobs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and p.name[0].isdigit()), key=lambda p: p.name)


def overrides(job: Path) -> list[str]:
    return yaml.safe_load(RunDir(job).overrides_path.read_text())


def summary(job: Path) -> dict:
    return json.loads(RunDir(job).summary_path.read_text())


def seed(job: Path) -> int:
    return OmegaConf.load(RunDir(job).config_path).seed


def metrics(job: Path) -> list[dict]:
    rows = [json.loads(line) for line in RunDir(job).metrics_path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_a_stacked_sweep_leaves_one_solo_run_folder_per_job_and_a_rerun_skips_them(sweep, tmp_path):
    args = ["seed=0,1", "optimizer.lr=1e-3,3e-3", *TINY, "hydra.sweep.dir=sw"]
    code, err = sweep(*args)
    assert code == 0, err
    assert "form a stack of 4" in err and "runs solo" not in err
    found = jobs(tmp_path / "sw")
    assert [j.name for j in found] == ["0", "1", "2", "3"]
    seen = set()
    for job in found:
        mine = overrides(job)
        cfg = OmegaConf.load(RunDir(job).config_path)
        seed, lr = (next(o.split("=")[1] for o in mine if o.startswith(k)) for k in ("seed=", "optimizer.lr="))
        assert (cfg.seed, cfg.optimizer.lr) == (int(seed), float(lr))  # its own config, its own overrides
        seen.add((cfg.seed, cfg.optimizer.lr))
        assert [row["epoch"] for row in metrics(job)] == [1]
        assert summary(job)["status"] == "completed" and summary(job)["run_dir"] == str(job)
        assert {p.name for p in RunDir(job).checkpoints_dir.iterdir()} >= {"last.pt", "best.pt"}
    assert seen == {(0, 1e-3), (0, 3e-3), (1, 1e-3), (1, 3e-3)}
    before = {job.name: snapshot(job) for job in found}
    code, err = sweep(*args)
    assert code == 0, err
    assert err.count("kept, skipped") == 4 and "stack of" not in err
    assert {job.name: snapshot(job) for job in jobs(tmp_path / "sw")} == before


def test_a_mixed_sweep_trains_the_job_without_a_stacked_form_alone_and_says_why(sweep, tmp_path):
    code, err = sweep("model=mlp,cnn", "seed=0,1", *TINY, "hydra.sweep.dir=sw")
    assert code == 0, err
    cnn = [job for job in jobs(tmp_path / "sw") if "model=cnn" in overrides(job)]
    assert len(cnn) == 2
    for job in cnn:
        assert err.count(f"sweep job {job} runs solo: model=cnn has no stacked form yet (stacks: model=mlp)") == 1
    mlp = [job.name for job in jobs(tmp_path / "sw") if job not in cnn]
    assert err.count("runs solo") == 2 and f"sweep jobs {', '.join(mlp)} form a stack of 2" in err
    assert [summary(job)["status"] for job in jobs(tmp_path / "sw")] == ["completed"] * 4


def test_a_member_that_fails_is_recorded_and_fails_the_sweep_while_the_others_complete(sweep, tmp_path):
    code, err = sweep("seed=0,1", "initializer.weight.mode=fan_in,fan_bogus", *TINY, "hydra.sweep.dir=sw")
    assert code == 1
    assert "2 of 4 sweep jobs failed" in err
    status = {tuple(overrides(job)[:2]): summary(job) for job in jobs(tmp_path / "sw")}
    for (_, mode), result in status.items():
        if mode.endswith("fan_bogus"):
            assert result["status"] == "failed" and "fan_bogus" in result["error"]
        else:
            assert result["status"] == "completed"
    code, err = sweep("seed=0,1", "initializer.weight.mode=fan_in,fan_bogus", *TINY, "hydra.sweep.dir=sw")
    assert code == 1 and err.count("kept, skipped") == 2 and err.count("failed before: starting over") == 2


def test_optuna_trials_of_one_batch_train_as_one_stack_each_with_its_own_result(sweep, tmp_path):
    optuna = pytest.importorskip("optuna")
    code, err = sweep("experiment=search", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=4", *TINY,
                      "hydra.sweeper.storage=sqlite:///search.db", "hydra.sweeper.study_name=s", "hydra.sweep.dir=opt")
    assert code == 0, err
    assert "form a stack of 4" in err
    trials = optuna.load_study(study_name="s", storage="sqlite:///search.db").trials
    assert len(trials) == 4
    for job in jobs(tmp_path / "opt"):
        given = dict(o.split("=", 1) for o in overrides(job) if o.split("=")[0] in trials[0].params)
        [trial] = [t for t in trials if all(float(given[k]) == v for k, v in t.params.items())]
        assert trial.value == summary(job)["best_val_acc"]  # each trial got its own job's result
    best = yaml.safe_load((tmp_path / "opt" / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(summary(job)["best_val_acc"] for job in jobs(tmp_path / "opt"))


def same_rows(rows: list[dict], expected: list[dict]) -> bool:
    """The same metrics rows, floats within 1e-5 relative (a resumed stack may sum in another order)."""
    return len(rows) == len(expected) and all(
        row.keys() == want.keys() and all(row[k] == (pytest.approx(v, rel=1e-5) if isinstance(v, float) else v) for k, v in want.items())
        for row, want in zip(rows, expected))


def cut_to_epoch_1(job: Path, epoch_1: Path) -> None:
    """Leave `job` as an interruption after epoch 1 would: metrics of epoch 1, no summary, epoch-1 checkpoints
    (taken from `epoch_1`, a 1-epoch run of the same config, relabelled with the job's own config)."""
    run = RunDir(job)
    run.summary_path.unlink()
    run.keep_metrics_through(1)
    config = OmegaConf.to_yaml(OmegaConf.load(run.config_path), resolve=True)
    for name in ("last", "best"):
        state = torch.load(RunDir(epoch_1).checkpoint_path(name), weights_only=True)
        state["config"] = config
        torch.save(state, run.checkpoint_path(name))


def test_an_interrupted_stack_resumes_as_a_stack_and_members_at_other_epochs_do_not_share_one(sweep, tmp_path):
    two = ["seed=0,1", *TINY, "trainer.epochs=2", "hydra.sweep.dir=sw"]
    assert sweep(*two)[0] == 0
    assert sweep("seed=0,1", *TINY, "hydra.sweep.dir=one")[0] == 0
    epoch_1 = {seed(job): job for job in jobs(tmp_path / "one")}
    first = {job.name: metrics(job) for job in jobs(tmp_path / "sw")}
    for job in jobs(tmp_path / "sw"):
        cut_to_epoch_1(job, epoch_1[seed(job)])
    code, err = sweep(*two)
    assert code == 0, err
    assert err.count("was interrupted: resuming") == 2 and "form a stack of 2" in err
    for job in jobs(tmp_path / "sw"):
        assert summary(job)["status"] == "completed"
        assert same_rows(metrics(job), first[job.name])
    # One member back at epoch 1, the other gone: they start from different epochs, so each trains alone.
    job0, job1 = jobs(tmp_path / "sw")
    cut_to_epoch_1(job0, epoch_1[seed(job0)])
    shutil.rmtree(job1)
    code, err = sweep(*two)
    assert code == 0, err
    assert "was interrupted: resuming" in err and f"new run in {job1}" in err and "stack of" not in err
    assert [summary(job)["status"] for job in (job0, job1)] == ["completed", "completed"]
    assert same_rows(metrics(job0), first[job0.name])


def test_a_stack_below_min_speedup_says_on_the_terminal_that_it_trained_one_after_another(sweep, tmp_path, capsys):
    code, err = sweep("seed=0,1", *TINY, "hydra.launcher.min_speedup=100", "hydra.sweep.dir=sw")
    assert code == 0 and "form a stack of 2" in err
    assert "these 2 runs train one after another: stacked they would train" in err and "below 100" in err
    assert [summary(j)["stack"]["trained_solo"].startswith("stacked they would") for j in jobs(tmp_path / "sw")] == [True, True]


def test_jobs_planned_into_one_folder_train_in_folders_of_their_own(sweep, tmp_path):
    """A constant hydra.sweep.subdir gives every job Hydra's one folder: each new run gets its own beside it."""
    code, err = sweep("seed=0,1,2", *TINY, "hydra.sweep.subdir=x", "hydra.sweep.dir=sw")
    assert code == 0, err
    folders = [tmp_path / "sw" / name for name in ("x", "x-1", "x-2")]
    assert sorted(seed(f) for f in folders) == [0, 1, 2] and all(summary(f)["status"] == "completed" for f in folders)
    code, err = sweep("seed=0,1,2", *TINY, "hydra.sweep.subdir=x", "hydra.sweep.dir=sw")
    assert code == 0 and err.count("kept, skipped") == 3


def test_list_and_help_show_the_stacked_launcher(capsys):
    assert main(["list", "hydra/launcher"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "stacked" in out and "slurm" in out
    assert "hydra/launcher=stacked trains as one stacked model" in out and "model=mlp" in out
    assert main(["list"]) == 0
    assert "hydra/launcher=stacked" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "stacked (the jobs that differ only in seeds" in capsys.readouterr().out


def test_max_stack_is_checked_before_any_folder_is_made(sweep, tmp_path):
    code, err = sweep("hydra.launcher.max_stack=0", "seed=0,1", *TINY, "hydra.sweep.dir=sw")
    assert code == 2 and "hydra.launcher.max_stack=0 is not valid" in err
    assert not (tmp_path / "sw").exists()
    code, err = sweep("hydra.launcher.max_stack=2", "seed=0,1,2", *TINY, "hydra.sweep.dir=sw")
    assert code == 0 and "sweep jobs 0, 1 form a stack of 2" in err and "stack of 1" not in err
    assert [summary(job)["status"] for job in jobs(tmp_path / "sw")] == ["completed"] * 3


def test_the_jobs_of_another_dnnlab_app_run_one_after_another(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["lr-find", "-m", "hydra/launcher=stacked", "seed=0,1", *TINY, "lr_find.steps=20", "hydra.sweep.dir=lf"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "runs these 2 jobs one after another: only the jobs of `dnnlab train` stack, not those of `dnnlab lr-find`" in err
    assert all((job / "lr_find.csv").is_file() for job in jobs(tmp_path / "lf"))
