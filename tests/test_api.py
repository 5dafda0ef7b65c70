"""End-to-end through the Python API: every option trains, the default learns, seeds repeat."""
import json

import pytest

from dnnlab.api import compose, train
from dnnlab.config.catalog import options
from helpers.fake_data import write_fake_cifar, write_fake_mnist

GROUPS = ("initializer", "activation", "normalization", "regularization", "optimizer", "schedule", "model")
CASES = [(g, o) for g in GROUPS for o in options(g) if not (g == "model" and o == "autoencoder")]


@pytest.mark.parametrize("group, option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_trains_one_epoch(tiny_cfg, tmp_path, group, option):
    choice = f"[{option}]" if group == "regularization" else option
    extra = ["model.depth=1", "model.width=4", "model.dense=8"] if option == "cnn" else []
    summary = train(tiny_cfg(f"{group}={choice}", *extra), run_dir=tmp_path)
    assert summary["status"] in ("completed", "early_stopped")
    assert summary["epochs"] == 1 and 0.0 <= summary["test_acc"] <= 1.0


@pytest.mark.parametrize("name", ["digits", "mnist1d", "synthetic", "mnist", "fashion_mnist", "cifar10"])
def test_every_data_set_trains_one_epoch(tiny_cfg, tmp_path, name):
    if name in ("mnist", "fashion_mnist"):
        write_fake_mnist(tmp_path / "data" / name)
    if name == "cifar10":
        write_fake_cifar(tmp_path / "data" / "cifar10" / "cifar-10-batches-py")
    cfg = tiny_cfg(f"data={name}", f"data.root={tmp_path / 'data'}", "data.download=false")
    summary = train(cfg, run_dir=tmp_path / "run")
    assert summary["status"] == "completed"


def test_run_folder_has_every_file(tiny_cfg, tmp_path):
    summary = train(tiny_cfg("trainer.epochs=2"), run_dir=tmp_path)
    for name in (".hydra/config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt", "train.log"):
        assert (tmp_path / name).is_file(), name
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_s", "samples_per_s"):
        assert key in rows[0]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["status"] == "completed" and saved["test_acc"] == summary["test_acc"] and "test_loss" in saved
    assert rows[1]["step"] == 2 * rows[0]["step"] > 0


def test_lr_is_logged_every_epoch(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.epochs=3", "schedule=exponential", "schedule.s=5"), run_dir=tmp_path)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lrs[0] == pytest.approx(0.001) and lrs[0] > lrs[1] > lrs[2]


def test_default_run_reaches_90_percent_test_accuracy(tmp_path):
    summary = train(compose(["trainer.progress=false"]), run_dir=tmp_path)
    assert summary["status"] == "completed" and summary["test_acc"] >= 0.90


def without_timing(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    timing = ("epoch_s", "samples_per_s", "diag_s")  # wall-clock measurements differ run to run
    return [{k: v for k, v in r.items() if k not in timing} for r in rows]


def test_same_seed_gives_identical_metrics(tiny_cfg, tmp_path):
    overrides = ("trainer.epochs=2", "regularization=[dropout]", "normalization=batchnorm", "seed=7")
    train(tiny_cfg(*overrides), run_dir=tmp_path / "a")
    train(tiny_cfg(*overrides), run_dir=tmp_path / "b")
    train(tiny_cfg(*overrides[:-1], "seed=8"), run_dir=tmp_path / "c")
    a, b, c = (without_timing(tmp_path / x / "metrics.jsonl") for x in "abc")
    assert a == b
    assert a != c


def test_python_api_is_exported():
    import dnnlab

    assert callable(dnnlab.train) and dnnlab.compose(["optimizer=nadam"]).optimizer._target_ == "torch.optim.NAdam"
