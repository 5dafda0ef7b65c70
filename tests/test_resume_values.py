"""`resume=` with new values: a value the restored state would override (or that would make the folder
record something that never ran) is refused by name, and a refused resume changes nothing in the folder."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dnnlab.api import compose, train
from dnnlab.cli import main
from helpers.configs import QUIET, tiny
from helpers.folders import snapshot

FAST = tiny(*QUIET, "data.limit=200", "model.depth=1", "model.width=8", "trainer.epochs=2")
RUNS = {
    "sgd": [*FAST, "optimizer=momentum", "schedule=performance"],
    "adam": [*FAST, "optimizer=adam", "schedule=power", "regularization=[dropout]"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    for name, overrides in RUNS.items():
        train(compose(overrides), run_dir=folder / name)
    return folder


def resume(capsys, run: Path, *overrides: str) -> tuple[int, str]:
    code = main(["train", f"resume={run}", *overrides])
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize("run, override, ran", [
    ("sgd", "optimizer.lr=0.05", "0.01"),
    ("sgd", "optimizer.weight_decay=0.1", "0.0"),
    ("sgd", "optimizer.momentum=0.5", "0.9"),
    ("sgd", "schedule.patience=1", "3"),
    ("sgd", "schedule.factor=0.1", "0.5"),
    ("sgd", "optimizer.clip_norm=1.0", "None"),
    ("adam", "optimizer.betas=[0.8,0.99]", "[0.9, 0.999]"),
    ("adam", "schedule.s=10", "1000"),
    ("adam", "regularization.dropout.rate=0.5", "0.2"),
    ("adam", "seed=1", "0"),
    ("adam", "trainer.batch_size=64", "32"),
])
def test_a_value_the_run_did_not_train_with_is_refused_by_name_and_changes_nothing(capsys, runs, tmp_path, run, override, ran):
    folder = shutil.copytree(runs / run, tmp_path / run)
    before = snapshot(folder)
    code, err = resume(capsys, folder, override, "trainer.epochs=4")
    key = override.split("=")[0]
    assert code == 2, err
    assert "cannot change" in err and f"{key}=" in err and f"trained with {ran}" in err
    assert "trainer.epochs" in err and "model.pretrained=" in err  # what may change, and how to train on otherwise
    assert snapshot(folder) == before


def test_fewer_epochs_than_done_are_refused_and_change_nothing(capsys, runs, tmp_path):
    folder = shutil.copytree(runs / "sgd", tmp_path / "sgd")
    before = snapshot(folder)
    code, err = resume(capsys, folder, "trainer.epochs=1")
    assert code == 2 and "trainer.epochs=1 is fewer than the 2 epochs" in err and "trainer.epochs=2 or more" in err
    assert snapshot(folder) == before


def test_settings_that_do_not_change_the_numbers_may_change(capsys, runs, tmp_path):
    folder = shutil.copytree(runs / "adam", tmp_path / "adam")
    code, err = resume(capsys, folder, "trainer.epochs=3", "trainer.eval_batch_size=64", "optimizer.implementation=loop")
    assert code == 0, err
    text = (folder / ".hydra" / "config.yaml").read_text()
    assert "epochs: 3" in text and "eval_batch_size: 64" in text
