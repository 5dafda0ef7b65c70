"""`dnnlab train` through the real command line (subprocesses, so they are few)."""
import json
import subprocess
import sys
from pathlib import Path

from helpers.configs import tiny

TINY = tiny("data.limit=200", "model.depth=1", "model.width=8", without=["trainer.progress"])  # the bar shows


def dnnlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dnnlab.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_train_leaves_a_run_folder_and_prints_a_table(tmp_path):
    result = dnnlab("train", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert "test_acc" in result.stderr and "completed" in result.stderr  # rich table on the terminal


def test_two_by_two_sweep_makes_four_run_folders(tmp_path):
    result = dnnlab("train", "-m", "optimizer=sgd,adam", "schedule=none,1cycle", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        seen.add(tuple(o for o in ("sgd", "adam", "none", "1cycle") if o in overrides))
    assert seen == {("sgd", "none"), ("sgd", "1cycle"), ("adam", "none"), ("adam", "1cycle")}


def test_a_sweep_over_width_lists_trains_each_net_and_records_its_list(tmp_path):
    """`model.width=[16,8],[12,6]`: Hydra's list values, one hidden width per layer, each job its own net."""
    from omegaconf import OmegaConf

    from dnnlab.runs.checkpoints import load_checkpoint

    jobs = tiny("data.limit=200", "model.depth=2", "model.width=[16,8],[12,6]")
    result = dnnlab("train", "-m", *jobs, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for job, widths in (("0", [16, 8]), ("1", [12, 6])):
        folder = tmp_path / "sweep" / job
        assert json.loads((folder / "summary.json").read_text())["status"] == "completed"
        assert OmegaConf.to_container(OmegaConf.load(folder / ".hydra" / "config.yaml").model.width) == widths
        weights = load_checkpoint(folder / "checkpoints" / "last.pt")["model"]
        assert tuple(weights["hidden2.linear.weight"].shape) == (widths[1], widths[0])
        assert tuple(weights["output.weight"].shape) == (10, widths[1])


def test_help_and_cfg_job_work(tmp_path):
    result = dnnlab("train", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "optimizer: " in result.stdout and "nadam" in result.stdout
    result = dnnlab("train", "--cfg", "job", "optimizer=nadam", cwd=tmp_path)
    assert result.returncode == 0 and "torch.optim.NAdam" in result.stdout
    assert not (tmp_path / "outputs").exists()
