"""A run folder written by an earlier release (tests/fixtures/run_v1) still resumes, evaluates, exports, reports."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dnnlab.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "run_v1"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A copy of the fixture: nothing a test does touches the committed folder."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "run"))


def test_old_run_folder_resumes_to_more_epochs(old_run: Path) -> None:
    assert main(["train", f"resume={old_run}", "trainer.epochs=3"]) == 0
    summary = json.loads((old_run / "summary.json").read_text())
    lines = (old_run / "metrics.jsonl").read_text().splitlines()
    assert summary["status"] == "completed" and summary["epochs"] == 3
    assert [json.loads(line)["epoch"] for line in lines if '"epoch"' in line][-1] == 3


def test_old_run_folder_evaluates_exports_and_reports(old_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["eval", str(old_run)]) == 0
    assert "0.1467" in capsys.readouterr().err  # the fixture's own test accuracy (summary.json)
    assert main(["export", str(old_run), "--repeats", "2"]) == 0
    assert (old_run / "eval.json").is_file()
    assert (old_run / "export" / "model.pt").is_file() and (old_run / "export.json").is_file()
    assert main(["report", str(old_run), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").is_file()
