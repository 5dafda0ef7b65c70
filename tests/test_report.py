"""`dnnlab report`: a run's plots and report.md, a sweep's table with seed groups, machine formats."""
from __future__ import annotations

import csv
import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dnnlab.api import train
from dnnlab.cli import main as dnnlab
from dnnlab.runs.rundir import RunDir
from helpers.configs import tiny

TINY = tiny("trainer.epochs=2")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real 2 × 2 sweep (optimizer × seed) of tiny jobs, through the CLI."""
    cwd = tmp_path_factory.mktemp("sweep")
    result = subprocess.run(
        [sys.executable, "-m", "dnnlab.cli", "train", "-m", "optimizer=sgd,adam", "seed=0,1", *TINY,
         "hydra.sweep.dir=sweep"],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "sweep"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from dnnlab.api import compose

    path = tmp_path_factory.mktemp("run") / "run"
    train(compose([*TINY, "trainer.epochs=3", "schedule=cosine"]), run_dir=path)
    return path


def report_json(capsys, *args: str) -> list[dict]:
    capsys.readouterr()
    assert dnnlab(["report", *map(str, args), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_valid_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and min(image.size) > 100


def test_run_report_writes_valid_plots_and_a_report_embedding_them(run, capsys):
    assert dnnlab(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "best_val_acc" in out and "health" in out
    pngs = sorted(p.name for p in run.glob("*.png"))
    assert pngs == ["accuracy.png", "act_std.png", "dead_frac.png", "grad_flow.png", "loss.png", "lr.png"]
    for png in run.glob("*.png"):
        assert_valid_png(png)
    text = (run / "report.md").read_text()
    assert all(f"]({name})" in text for name in pngs)
    assert "## Health" in text and "```yaml" in text and "lr: 0.001" in text


def test_out_folder_and_recomputed_verdicts_for_an_old_run(tmp_path, tiny_cfg, capsys):
    """Verdicts come from metrics.jsonl, so a summary written before they existed still gets them."""
    path = tmp_path / "dead"
    train(tiny_cfg("initializer.bias=-10"), run_dir=path)
    summary = RunDir(path).read_summary()
    del summary["health"]
    RunDir(path).write_summary(summary)
    [row] = report_json(capsys, path, "--out", tmp_path / "elsewhere")
    assert row["health"] == "dying_relu" and row["status"] == "completed"
    assert (tmp_path / "elsewhere" / "report.md").is_file() and (tmp_path / "elsewhere" / "grad_flow.png").is_file()
    assert not (path / "report.md").exists()


def test_sweep_table_has_one_row_per_run_with_the_differing_overrides_as_columns(sweep, capsys):
    rows = report_json(capsys, sweep, "--no-group")
    assert len(rows) == 4
    assert list(rows[0])[:3] == ["run", "optimizer", "seed"]  # shared overrides (data.limit, …) are not columns
    assert {(r["optimizer"], r["seed"]) for r in rows} == {(o, s) for o in ("sgd", "adam") for s in ("0", "1")}
    best = [r["best_val_acc"] for r in rows]
    assert best == sorted(best, reverse=True)
    for row in rows:
        summary = RunDir(sweep / row["run"]).read_summary()
        assert row["test_acc"] == summary["test_acc"] and row["epochs"] == 2 and row["status"] == "completed"


def test_seeds_group_into_mean_and_std(sweep, capsys):
    per_seed: dict[str, list[float]] = {"sgd": [], "adam": []}
    for r in report_json(capsys, sweep, "--no-group"):
        per_seed[r["optimizer"]].append(r["test_acc"])
    grouped = report_json(capsys, sweep, "--sort", "test_acc")
    assert len(grouped) == 2 and {r["optimizer"] for r in grouped} == {"sgd", "adam"}
    for row in grouped:
        accs = per_seed[row["optimizer"]]
        assert row["n"] == 2 and row["seed"] == "0,1"
        assert row["test_acc"] == pytest.approx(statistics.fmean(accs))
        assert row["test_acc_std"] == pytest.approx(statistics.stdev(accs))
    assert grouped[0]["test_acc"] >= grouped[1]["test_acc"]
    capsys.readouterr()
    assert dnnlab(["report", str(sweep), "--format", "md"]) == 0
    table = capsys.readouterr().out
    assert table.count("\n") == 2 + 2 and " ± " in table and "| optimizer |" in table


def test_sweep_report_md_csv_and_overlaid_curves(sweep, capsys):
    capsys.readouterr()
    assert dnnlab(["report", str(sweep), "--format", "csv", "--no-group"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4 and {"optimizer", "seed", "best_val_acc", "health"} <= set(rows[0])
    assert_valid_png(sweep / "val_curves.png")
    text = (sweep / "report.md").read_text()
    assert "![validation curves](val_curves.png)" in text and "| optimizer |" in text


def test_several_run_folders_compare_in_one_table(run, sweep, tmp_path, capsys):
    rows = report_json(capsys, run, sweep / "0", "--out", tmp_path)
    assert len(rows) == 2 and (tmp_path / "val_curves.png").is_file()


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_a_path_that_is_not_a_run_is_one_clear_line(tmp_path, capsys, make):
    assert dnnlab(["report", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(make(tmp_path)) in err
    assert "does not exist" in err or "not a run folder" in err
