"""eval, export and resume= build from what the checkpoint recorded (issue 11, item 9).

A same-shape checkpoint of another model copied into a run folder is refused (not evaluated as
this run's model); the data is read where it lay at training time, not where DNNLAB_DATA points
today, and must match the fingerprint the checkpoint recorded.
"""
from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dnnlab.api import compose, train
from dnnlab.cli import main
from dnnlab.commands.evaluate import evaluate, load_run
from helpers.fake_data import idx_bytes, write_fake_mnist
from helpers.configs import tiny
from helpers.folders import snapshot

TINY = tiny("trainer.diagnostics=false", "data.limit=200", "trainer.epochs=2")


@pytest.fixture(scope="module")
def relu_and_tanh(tmp_path_factory):
    """Two runs whose weights have the same shapes: ReLU and Tanh."""
    root = tmp_path_factory.mktemp("record")
    for activation in ("relu", "tanh"):
        train(compose(TINY + [f"activation={activation}"]), run_dir=root / activation)
    return root / "relu", root / "tanh"


@pytest.fixture
def swapped(relu_and_tanh, tmp_path) -> Path:
    """The ReLU run with the Tanh run's checkpoints copied into its checkpoints/."""
    relu, tanh = relu_and_tanh
    run = tmp_path / "run"
    shutil.copytree(relu, run)
    for name in ("best", "last"):
        shutil.copyfile(tanh / "checkpoints" / f"{name}.pt", run / "checkpoints" / f"{name}.pt")
    return run


@pytest.mark.parametrize("command", ["eval", "export", "resume"])
def test_a_same_shape_checkpoint_of_another_model_is_refused(swapped, command, capsys):
    before = snapshot(swapped)
    argv = {"eval": ["eval", str(swapped), "--device", "cpu"],
            "export": ["export", str(swapped), "--fold-bn", "--repeats", "1"],
            "resume": ["train", f"resume={swapped}", "trainer.epochs=3"]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "activation.module._target_ is 'torch.nn.Tanh' in the checkpoint" in err
    assert "'torch.nn.ReLU' in the folder's config" in err and str(swapped / ".hydra" / "config.yaml") in err
    assert snapshot(swapped) == before


def test_resume_and_eval_after_it_accept_their_own_checkpoints(relu_and_tanh, tmp_path):
    """best.pt (from before the resume) and config.yaml (after it) differ in trainer.epochs only: that is fine."""
    run = tmp_path / "run"
    shutil.copytree(relu_and_tanh[0], run)
    assert main(["train", f"resume={run}", "trainer.epochs=3"]) == 0
    for checkpoint in ("best", "last"):
        assert evaluate(load_run(run, checkpoint, "cpu"))["n"] > 0


@pytest.mark.parametrize("override, key", [("+activation.module.inplace=true", "activation.module.inplace"),
                                           ("data.limit=100", "data.limit"), ("data.scaling=unit", "data.scaling")])
def test_resume_cannot_change_what_the_weights_mean(relu_and_tanh, tmp_path, override, key, capsys):
    run = tmp_path / "run"
    shutil.copytree(relu_and_tanh[0], run)
    before = snapshot(run)
    assert main(["train", f"resume={run}", "trainer.epochs=3", override]) == 2
    err = capsys.readouterr().err
    assert f"{key}=" in err and "cannot change" in err and snapshot(run) == before


def test_checkpoints_record_the_data_fingerprint(relu_and_tanh):
    state = torch.load(relu_and_tanh[0] / "checkpoints" / "best.pt", weights_only=True)
    record = state["hooks"]["DataFingerprint"]
    assert record["name"] == "digits" and sorted(record["sha256"]) == ["test", "train", "val"]
    assert all(len(v) == 64 for v in record["sha256"].values())


# --- data that lies elsewhere, or changed -------------------------------------------------------

def relabel_test_split(folder: Path) -> None:
    """Same images, other test labels: another data set of the same shape."""
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))


@pytest.fixture
def mnist_run(tmp_path, monkeypatch):
    """A run on (fake) MNIST found through DNNLAB_DATA=A; B holds other data of the same shape."""
    a, b = tmp_path / "A", tmp_path / "B"
    write_fake_mnist(a / "mnist")
    write_fake_mnist(b / "mnist")
    relabel_test_split(b / "mnist")
    monkeypatch.setenv("DNNLAB_DATA", str(a))
    run = tmp_path / "run"
    assert main(["train", *TINY, "data=mnist", "data.download=false", "trainer.epochs=1", f"hydra.run.dir={run}"]) == 0
    config = run / ".hydra" / "config.yaml"
    assert f"root: {a}\n" in config.read_text()  # dnnlab records the resolved path
    # Folders of the previous release hold Hydra's unresolved config, ${oc.env:DNNLAB_DATA,…}: make this one so.
    config.write_text(config.read_text().replace(f"root: {a}\n", "root: ${oc.env:DNNLAB_DATA,'~/.cache/dnnlab'}\n"))
    return run, json.loads((run / "summary.json").read_text()), a, b


def test_eval_reads_the_data_of_training_time_not_todays_env(mnist_run, monkeypatch):
    run, summary, a, b = mnist_run
    monkeypatch.setenv("DNNLAB_DATA", str(b))
    result = evaluate(load_run(run, "last", "cpu"))
    assert result["deterministic"]["loss"] == pytest.approx(summary["test_loss"], rel=1e-5)


def test_eval_and_resume_refuse_data_that_changed(mnist_run, capsys):
    run, summary, a, b = mnist_run
    relabel_test_split(a / "mnist")
    before = snapshot(run)
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "is not the data" in err and "test split differs" in err and f"data.root={a}" in err
    assert snapshot(run) == before
    assert main(["train", f"resume={run}", "trainer.epochs=2"]) == 2
    assert "test split differs" in capsys.readouterr().err
    after = snapshot(run)  # train.log gains the data's MD5 warnings: train attaches it before building (not ours)
    assert {k: v for k, v in after.items() if k != "train.log"} == {k: v for k, v in before.items() if k != "train.log"}
    assert b"INFO" not in after["train.log"][len(before["train.log"]):]


def test_data_root_points_at_a_copy_elsewhere(mnist_run, tmp_path, capsys):
    run, summary, a, b = mnist_run
    shutil.copytree(a, tmp_path / "C")
    shutil.rmtree(a)
    assert main(["eval", str(run), "--device", "cpu", "--data-root", str(tmp_path / "C")]) == 0
    assert json.loads((run / "eval.json").read_text())["deterministic"]["loss"] == pytest.approx(summary["test_loss"], rel=1e-5)
    assert main(["eval", str(run), "--device", "cpu", "--data-root", str(b)]) == 2  # other data: refused
    assert "test split differs" in capsys.readouterr().err
    assert main(["train", f"resume={run}", "trainer.epochs=2", f"data.root={tmp_path / 'C'}"]) == 0


def test_a_local_file_that_is_not_the_published_one_warns(tmp_path, caplog):
    from dnnlab.data import load_data

    write_fake_mnist(tmp_path / "mnist")
    logger = logging.getLogger("dnnlab")  # the console handler stops propagation to the root logger
    logger.addHandler(caplog.handler)
    try:
        load_data({"_target_": "dnnlab.data.load_mnist", "root": str(tmp_path), "download": False})
    finally:
        logger.removeHandler(caplog.handler)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 4 and all("is not the published file (MD5" in w for w in warned)
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in " ".join(warned)


def test_the_fingerprint_of_a_loaded_data_set_is_hashed_once(monkeypatch):
    """The members of a stack share one loaded data set: hashing it once is enough; other data is hashed anew."""
    from dnnlab.data import Splits
    from dnnlab.runs import record

    def splits(offset: float) -> Splits:
        x, y = torch.arange(12.0).view(6, 2) + offset, torch.arange(6) % 2
        return Splits(x, y, x, y, x, y, n_classes=2, input_shape=(2,), name="toy")

    data, hashed = splits(0.0), []
    real = record.hashlib.sha256
    monkeypatch.setattr(record.hashlib, "sha256", lambda: hashed.append(1) or real())
    first = record.fingerprint(data)
    assert record.fingerprint(data) == first and len(hashed) == 3  # one digest per split, once
    assert record.fingerprint(splits(1.0)) != first and len(hashed) == 6
