"""Issue 11, items 14–17: every bad input in this table gets ONE paragraph (no traceback), exit 2, and the
words that name what was wrong and the fix. The table is also the record of how many were tried:
`pytest tests/test_clear_errors.py -q` counts them (run it on an older dnnlab to count the unclear ones).

A case is (argv, words, setup): `{run}` in argv is a copy of a finished 2-epoch run, `{tmp}` the test's
folder (also the working directory); `setup(tmp, run, monkeypatch)` prepares the fault (a bad file, a full disk)."""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

from dnnlab.api import compose, train
from dnnlab.cli import main

FAST = ["trainer.progress=false", "trainer.diagnostics=false", "trainer.device=cpu",
        "data.limit=300", "model.depth=2", "model.width=16", "trainer.epochs=1"]
LR = ["lr-find", *FAST, "lr_find.steps=20"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("finished") / "run"
    train(compose([*FAST, "trainer.epochs=2"]), run_dir=path)
    return path


# ------------------------------------------------------------------------------------ faults
def fail_writes(code: int, where: str = "") -> Callable:
    """A setup that makes every file write under `where` (a folder name in the path; '' = anywhere) fail with `code`."""

    def setup(tmp: Path, run: Path, monkeypatch) -> None:
        real_open = os.open

        def refusing(path, flags, *args, **kwargs):
            writes = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if writes and where in str(path) and not str(path).endswith(".lock"):
                raise OSError(code, os.strerror(code), str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing)
        import builtins
        import io

        real_builtin = builtins.open

        def refusing_builtin(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and where in str(file) and isinstance(file, (str, os.PathLike)):
                raise OSError(code, os.strerror(code), str(file))
            return real_builtin(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_builtin)
        monkeypatch.setattr(io, "open", refusing_builtin)

    return setup


def write(name: str, text: str) -> Callable:
    """A setup that writes `text` to `name` inside the run copy."""

    def setup(tmp: Path, run: Path, monkeypatch) -> None:
        (run / name).write_text(text)

    return setup


def nothing_to_set_up(tmp: Path, run: Path, monkeypatch) -> None:
    pass


CASES = [
    # ---- 14: found only after training started, now before anything is written
    pytest.param(["train", *FAST, "regularization=[early_stopping]", "regularization.early_stopping.monitor=val_los"],
                 ["regularization.early_stopping.monitor='val_los' is not valid", "val_loss", "train_acc"],
                 nothing_to_set_up, id="14-early-stopping-monitor"),
    pytest.param(["train", *FAST, "trainer.monitor=val_los"],
                 ["trainer.monitor='val_los' is not valid", "val_loss, val_acc"], nothing_to_set_up, id="14-trainer-monitor"),
    pytest.param(["train", *FAST, "normalization=batchnorm", "trainer.batch_size=13"],
                 ["Batch norm", "batch of 1 sample", "300 = 23 × 13 + 1", "trainer.batch_size=12 or 14"],
                 nothing_to_set_up, id="14-batchnorm-last-batch-of-1"),
    # ---- 17: eval/export name their own flag
    pytest.param(["eval", "{run}", "--device", "tpu"], ["--device 'tpu' is not valid", "auto, cpu, cuda"],
                 nothing_to_set_up, id="17-eval-device"),
    pytest.param(["eval", "{run}", "--device", "cuda:7"], ["--device cuda:7 but", "--device cpu"],
                 nothing_to_set_up, id="17-eval-device-absent-gpu"),
    pytest.param(["export", "{run}", "--device", "tpu"], ["--device 'tpu' is not valid"], nothing_to_set_up,
                 id="17-export-device"),
]


@pytest.mark.parametrize("argv, words, setup", CASES)
def test_one_clear_paragraph(argv, words, setup, finished, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    monkeypatch.chdir(tmp_path)
    setup(tmp_path, run, monkeypatch)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main([a.format(run=run, tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert "Traceback" not in err
    paragraph = " ".join(err.split())
    assert code == 2, paragraph
    assert paragraph.count("dnnlab: error:") == 1 and paragraph.startswith("dnnlab: error:"), paragraph
    for word in words:
        assert word in paragraph
    if argv[0] in ("train", "lr-find"):
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no outputs/, no stray .hydra/
