"""`logger=tensorboard`: scalars and histograms through torch.utils.tensorboard; a missing package
is one clear message naming the extra to install (tensorboard itself is not needed here)."""
from __future__ import annotations

import sys
import types

import pytest

from dnnlab.api import train
from dnnlab.tensorboard import MissingExtra


class RecordingWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter and records what it is given."""

    instances: list["RecordingWriter"] = []

    def __init__(self, log_dir: str):
        self.log_dir, self.scalars, self.histograms, self.closed = log_dir, [], [], False
        RecordingWriter.instances.append(self)

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
    RecordingWriter.instances.clear()
    train(tiny_cfg("logger=tensorboard", "trainer.epochs=2"), run_dir=tmp_path)
    [writer] = RecordingWriter.instances
    assert writer.log_dir == str(tmp_path / "tensorboard") and writer.closed
    tags = {(tag, step) for tag, _, step in writer.scalars}
    assert {("val_acc", 1), ("val_acc", 2), ("grad_norm/hidden1", 2), ("dead_frac/hidden2", 1)} <= tags
    assert ("weight/hidden1.linear", (16, 64), 2) in writer.histograms
    assert any(tag == "grad/output" for tag, _, _ in writer.histograms)


def test_logger_none_writes_no_tensorboard_folder(tiny_cfg, tmp_path):
    train(tiny_cfg(), run_dir=tmp_path)
    assert not (tmp_path / "tensorboard").exists()
