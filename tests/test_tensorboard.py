"""`logger=tensorboard`: scalars and histograms through torch.utils.tensorboard; a missing package
is one clear message naming the extra to install (tensorboard itself is not needed here)."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest

from dnnlab.api import train
from dnnlab.runs.rundir import RunDir
from dnnlab.tensorboard import MissingExtra, hparams


class RecordingWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter and records what it is given."""

    instances: list["RecordingWriter"] = []

    def __init__(self, log_dir: str):
        self.log_dir, self.scalars, self.histograms, self.closed = log_dir, [], [], False
        self.file_writer, self.summaries = self, []
        RecordingWriter.instances.append(self)

    def add_summary(self, summary):
        self.summaries.append(summary)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_histogram(self, tag, values, step):
        self.histograms.append((tag, tuple(values.shape), step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_missing_tensorboard_names_the_extra_before_training(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(MissingExtra, match=r'pip install -e "\.\[tensorboard\]"') as error:
        train(tiny_cfg("logger=tensorboard"), run_dir=tmp_path)
    assert "logger=none" in str(error.value)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_scalars_and_histograms_go_to_the_run_folder(tiny_cfg, tmp_path, monkeypatch):
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = RecordingWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    summaries = types.ModuleType("torch.utils.tensorboard.summary")
    summaries.hparams = lambda values, metrics: [("hparams", values, metrics)]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard.summary", summaries)
    RecordingWriter.instances.clear()
    train(tiny_cfg("logger=tensorboard", "trainer.epochs=2"), run_dir=tmp_path)
    [writer] = RecordingWriter.instances
    assert writer.log_dir == str(tmp_path / "tensorboard") and writer.closed
    tags = {(tag, step) for tag, _, step in writer.scalars}
    assert {("val_acc", 1), ("val_acc", 2), ("grad_norm/hidden1", 2), ("dead_frac/hidden2", 1)} <= tags
    assert ("weight/hidden1.linear", (16, 64), 2) in writer.histograms
    assert any(tag == "grad/output" for tag, _, _ in writer.histograms)
    [(_, values, metrics)] = writer.summaries  # the HParams summary, at the end, with the finished summary's metrics
    summary = RunDir(tmp_path).read_summary()
    assert metrics["final/test_acc"] == summary["test_acc"] and metrics["final/best_val_acc"] == summary["best_val_acc"]
    assert ("final/best_val_acc", summary["best_val_acc"], 2) in writer.scalars
    assert values["optimizer"] == "Adam" and values["initializer"] == "Initializer" and values["model.depth"] == 2


def test_hparams_are_the_techniques_numbers_and_swept_keys(tiny_cfg):
    cfg = tiny_cfg("regularization=[l2,dropout]", "optimizer=nesterov", "optimizer.lr=0.05", "regularization.dropout.rate=0.3")
    choices = {"optimizer": "nesterov", "initializer": "he_normal", "activation": "relu", "regularization": "[l2,dropout]"}
    values = hparams(cfg, choices, ["optimizer=nesterov", "optimizer.lr=0.05", "regularization.dropout.rate=0.3",
                                    "hydra.sweep.dir=x", "data.limit=300"])
    assert values["optimizer"] == "nesterov" and values["initializer"] == "he_normal" and values["activation"] == "relu"
    assert values["normalization"] and values["schedule"]  # no Hydra choice given: the option's class name
    assert values["regularization"] == "l2,dropout" and values["optimizer.lr"] == 0.05
    assert values["regularization.dropout.rate"] == 0.3 and values["data.limit"] == 300 and values["seed"] == 0
    assert values["trainer.batch_size"] == cfg.trainer.batch_size and values["model.width"] == 16
    assert not any(k.startswith("hydra") for k in values)
    assert all(isinstance(v, (str, int, float, bool)) for v in values.values())


def test_logger_none_writes_no_tensorboard_folder(tiny_cfg, tmp_path):
    train(tiny_cfg(), run_dir=tmp_path)
    assert not (tmp_path / "tensorboard").exists()


def read_hparams(log_dir) -> tuple[dict, set, dict]:
    """(hparams, metric tags, final scalars) of one run's event files, read back as TensorBoard does."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = event_accumulator.EventAccumulator(str(log_dir))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(raw) for tag, raw in content.items()}
    start = data["_hparams_/session_start_info"].session_start_info.hparams
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.items()}
    metrics = {m.name.tag for m in data["_hparams_/experiment"].experiment.metric_infos}
    finals = {t: events.Scalars(t)[-1].value for t in events.Tags()["scalars"] if t.startswith("final/")}
    return values, metrics, finals


def test_hparams_summary_reads_back_from_the_event_file(tiny_cfg, tmp_path):
    pytest.importorskip("tensorboard")
    summary = train(tiny_cfg("logger=tensorboard", "trainer.epochs=2", "optimizer.lr=0.01"), run_dir=tmp_path)
    values, metrics, finals = read_hparams(tmp_path / "tensorboard")
    assert values["optimizer.lr"] == pytest.approx(0.01) and values["model.width"] == 16 and values["seed"] == 0
    assert values["optimizer"] == "Adam" and values["regularization"] == "none"
    assert {"final/test_acc", "final/best_val_acc", "final/final_train_loss", "final/final_val_loss"} <= metrics == set(finals)
    assert finals["final/test_acc"] == pytest.approx(summary["test_acc"])
    assert finals["final/best_val_acc"] == pytest.approx(summary["best_val_acc"])


def test_a_width_list_is_one_text_value_in_hparams(tiny_cfg, tmp_path):
    """HParams values are scalars: model.width=[16,8] becomes the text '[16, 8]', in the values and the event file."""
    cfg = tiny_cfg("model.width=[16,8]", "logger=tensorboard")
    assert hparams(cfg, {}, ["model.width=[16,8]"])["model.width"] == "[16, 8]"
    pytest.importorskip("tensorboard")
    train(cfg, run_dir=tmp_path)
    values, _, _ = read_hparams(tmp_path / "tensorboard")
    assert values["model.width"] == "[16, 8]" and values["model.depth"] == 2


@pytest.mark.slow
def test_a_sweep_shows_its_swept_keys_and_option_names_in_hparams(tmp_path):
    """What `tensorboard --logdir multirun/DIR` reads: one run per job, the swept keys as columns."""
    pytest.importorskip("tensorboard")
    result = subprocess.run(
        [sys.executable, "-m", "dnnlab.cli", "train", "-m", "logger=tensorboard", "optimizer=sgd,nadam",
         "regularization.l2.weight=1e-4", "regularization=[l2]", "data.limit=200", "model.depth=1", "model.width=8",
         "trainer.epochs=1", "trainer.progress=false", "hydra.sweep.dir=sweep"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = {}
    for job in ("0", "1"):
        values, metrics, finals = read_hparams(tmp_path / "sweep" / job / "tensorboard")
        summary = RunDir(tmp_path / "sweep" / job).read_summary()
        assert finals["final/test_acc"] == pytest.approx(summary["test_acc"]) and "final/test_acc" in metrics
        assert values["initializer"] == "he_normal" and values["regularization"] == "l2"
        assert values["regularization.l2.weight"] == pytest.approx(1e-4)
        seen[job] = values["optimizer"]
    assert seen == {"0": "sgd", "1": "nadam"}
