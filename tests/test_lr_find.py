"""Tests for dnnlab.commands.lr_find: the learning-rate range test, its files and its CLI."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from dnnlab.api import compose, train
from dnnlab.errors import ConfigError
from dnnlab.commands.lr_find import lr_find
from helpers.configs import tiny

TINY = tiny("trainer.diagnostics=false", without=["model.depth", "trainer.epochs"])


def read_rows(path) -> list[dict[str, float]]:
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    run = tmp_path_factory.mktemp("lr_find") / "run"
    cfg = compose(TINY + ["+lr_find=default", "lr_find.steps=200", "lr_find.start_lr=1e-6"])
    return run, lr_find(cfg, run)


def test_suggestion_lies_where_the_loss_falls(result):
    run, found = result
    rows = read_rows(run / "lr_find.csv")
    lrs = [r["lr"] for r in rows]
    assert lrs[0] == pytest.approx(1e-6) and all(b > a for a, b in zip(lrs, lrs[1:]))
    assert found["suggested_lr"] == pytest.approx(found["min_loss_lr"] / 10)
    # The rate at the suggestion: the smoothed loss has already fallen from its start and is still falling.
    at = min(range(len(rows)), key=lambda i: abs(rows[i]["lr"] - found["suggested_lr"]))
    smoothed = [r["smoothed_loss"] for r in rows]
    assert smoothed[at] < 0.95 * smoothed[0]
    assert smoothed[at] > found["min_smoothed_loss"]
    assert smoothed[min(at + 10, len(rows) - 1)] < smoothed[max(at - 10, 0)]


def test_suggested_rate_trains(result, tmp_path):
    _, found = result
    summary = train(compose(TINY + ["trainer.epochs=3", f"optimizer.lr={found['suggested_lr']}"]), run_dir=tmp_path)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"] and summary["status"] == "completed"


def test_writes_plot_and_summary_but_no_model(result):
    run, found = result
    assert (run / "lr_find.png").stat().st_size > 10_000
    assert json.load(open(run / "lr_find.json"))["suggested_lr"] == found["suggested_lr"]
    assert not (run / "checkpoints").exists()


def test_bad_setting_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"lr_find\.end_lr=1e-08"):
        lr_find(compose(TINY + ["+lr_find=default", "lr_find.end_lr=1e-8"]), tmp_path)


def test_cli(tmp_path):
    cmd = [sys.executable, "-m", "dnnlab.cli", "lr-find", *TINY, "lr_find.steps=60", "hydra.run.dir=found"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "suggested learning rate" in done.stdout + done.stderr
    assert len(read_rows(tmp_path / "found" / "lr_find.csv")) <= 60
    bad = subprocess.run([*cmd[:-2], "lr_find.factor=0.5", "hydra.run.dir=bad"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "lr_find.factor=0.5" in bad.stderr and "Traceback" not in bad.stderr
