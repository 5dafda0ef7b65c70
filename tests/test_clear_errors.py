"""Issue 11, items 14–17: every bad input in this table gets ONE paragraph (no traceback), exit 2, and the
words that name what was wrong and the fix. The table is also the record of how many were tried:
`pytest tests/test_clear_errors.py -q` counts them (run it on an older dnnlab to count the unclear ones).

A case is (argv, words, setup): `{run}` in argv is a copy of a finished 2-epoch run, `{tmp}` the test's
folder (also the working directory); `setup(tmp, run, monkeypatch)` prepares the fault (a bad file, a full disk)."""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
from pathlib import Path
from typing import Callable

import pytest

from dnnlab.api import compose
from dnnlab.cli import main
from helpers.configs import QUIET, tiny

FAST = tiny(*QUIET)
LR = ["lr-find", *FAST, "lr_find.steps=20"]


# ------------------------------------------------------------------------------------ faults
def read_only(where: str = "{run}") -> Callable:
    """A setup under which the folder `where` (and everything in it) cannot be written: EROFS, as on a read-only mount."""

    def setup(tmp: Path, run: Path, monkeypatch) -> None:
        folder = where.format(run=run, tmp=tmp)
        real_open, real_builtin, real_access = os.open, builtins.open, os.access

        def refuse(path) -> None:
            if str(Path(path).absolute()).startswith(folder):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        def os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                refuse(path)
            return real_open(path, flags, *args, **kwargs)

        def builtin_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
                refuse(file)
            return real_builtin(file, mode, *args, **kwargs)

        def access(path, mode, *args, **kwargs):
            return not (mode & os.W_OK and str(Path(path).absolute()).startswith(folder)) and real_access(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", builtin_open)
        monkeypatch.setattr(io, "open", builtin_open)
        monkeypatch.setattr(os, "access", access)

    return setup


def disk_full_after(size: int) -> Callable:
    """A setup under which a binary file (a checkpoint) fills the disk after `size` bytes: ENOSPC mid-write,
    which torch.save reports as `unexpected pos …`."""

    def setup(tmp: Path, run: Path, monkeypatch) -> None:
        real_fdopen = os.fdopen

        class Full(io.RawIOBase):
            def __init__(self, f):
                self.f, self.n = f, 0

            def writable(self) -> bool:
                return True

            def write(self, data) -> int:
                self.n += len(data)
                if self.n > size:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return self.f.write(data)

            def fileno(self) -> int:
                return self.f.fileno()

            def close(self) -> None:
                self.f.close()
                super().close()

        def fdopen(fd, mode="r", *args, **kwargs):
            f = real_fdopen(fd, mode, *args, **kwargs)
            return Full(f) if "b" in mode and "w" in mode else f

        monkeypatch.setattr(os, "fdopen", fdopen)

    return setup


def write(name: str, text: str) -> Callable:
    """A setup that writes `text` to `name` inside the run copy."""

    def setup(tmp: Path, run: Path, monkeypatch) -> None:
        (run / name).write_text(text)

    return setup


def damage_row(number: int) -> Callable:
    """A setup that replaces row `number` (1-based) of the run's metrics.jsonl with text that is not JSON."""

    def setup(tmp: Path, run: Path, monkeypatch) -> None:
        rows = (run / "metrics.jsonl").read_text().splitlines()
        rows[number - 1] = rows[number - 1][:20]
        (run / "metrics.jsonl").write_text("\n".join(rows) + "\n")

    return setup


def lock_link(tmp: Path, run: Path, monkeypatch) -> None:
    (run / ".lock").unlink(missing_ok=True)
    (run / ".lock").symlink_to(tmp / "elsewhere")


def config_dir(files: dict[str, str]) -> Callable:
    """A setup that writes a --config-dir folder `{tmp}/configs` with `files` (relative path → text)."""

    def setup(tmp: Path, run: Path, monkeypatch) -> None:
        for name, text in files.items():
            (tmp / "configs" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "configs" / name).write_text(text)

    return setup


def case(name: str, argv: list[str], words: list[str], setup: Callable | None = None, code: int = 2,
         writes: bool = False, out: tuple[str, ...] = ()):
    """One bad input: `writes` when the fault comes mid-run (a full disk) and the folder may say `failed`;
    `out`: words that must be on stdout (a result printed although it could not be saved)."""
    return pytest.param(argv, words, setup or (lambda *a: None), code, writes, out, id=name)


RUN = ["resume={run}", "trainer.epochs=3"]
CASES = [
    # ---- 14: found only after training started, now before anything is written
    case("14-early-stopping-monitor",
         ["train", *FAST, "regularization=[early_stopping]", "regularization.early_stopping.monitor=val_los"],
         ["regularization.early_stopping.monitor='val_los' is not valid", "val_loss", "train_acc"]),
    case("14-trainer-monitor", ["train", *FAST, "trainer.monitor=val_los"], ["trainer.monitor='val_los' is not valid", "val_loss, val_acc"]),
    case("14-per-layer-monitor-without-diagnostics", ["train", *FAST, "trainer.monitor=grad_norm/hidden1"],
         ["trainer.monitor='grad_norm/hidden1' is a per-layer diagnostic", "trainer.diagnostics=true"]),
    case("14-batchnorm-last-batch-of-1", ["train", *FAST, "normalization=batchnorm", "trainer.batch_size=13"],
         ["Batch norm", "batch of 1 sample", "300 = 23 × 13 + 1", "trainer.batch_size=12 or 14"]),
    case("14-stacked-launcher-key-typo", ["train", "-m", "hydra/launcher=stacked", "hydra.launcher.max_stak=3", "seed=0,1", *FAST],
         ["hydra.launcher.max_stak is not a config key", "Did you mean hydra.launcher.max_stack?", "max_stack, min_speedup",
          "prints the whole config.)"]),  # no +key advice: the launcher would refuse a key of its own
    case("14-stacked-launcher-min-speedup", ["train", "-m", "hydra/launcher=stacked", "hydra.launcher.min_speedup=fast", "seed=0,1", *FAST],
         ["hydra.launcher.min_speedup='fast' is not valid", "number ≥ 0"]),
    case("14-width-list-depth", ["train", *FAST, "model.depth=3", "model.width=[300,100]"],
         ["model.width=[300, 100] lists 2 hidden layers but model.depth=3; set model.depth=2 (or give one width for every layer)."]),
    case("14-width-list-depth-in-a-sweep", ["train", "-m", *FAST, "model.width=[16,8],[16,8,4]"],
         ["model.width=[16, 8, 4] lists 3 hidden layers but model.depth=2; set model.depth=3"]),
    case("14-width-list-value", ["train", *FAST, "model.width=[16,0]"],
         ["model.width=[16, 0] is not valid", "an integer ≥ 1, or a list of them, e.g. [300,100]"]),
    case("14-width-list-cnn", ["train", *FAST, "model=cnn", "model.width=[8,4]"],
         ["model=cnn takes one model.width", "is for model=mlp and model=autoencoder", "model.width=32"]),
    # ---- 15: tracebacks where a sentence belongs
    case("15-disk-full-checkpoint", ["train", *FAST, "hydra.run.dir=full"],
         ["Cannot write", "checkpoints/last.pt", "no space left on device", "Free space there"], disk_full_after(2000), writes=True),
    case("15-read-only-train", ["train", *FAST], ["Cannot make the run folder", "is not writable", "hydra.run.dir="],
         read_only("{tmp}")),
    case("15-run-dir-that-refuses-folders", ["train", *FAST, "hydra.run.dir=/proc/dnnlab-run"],
         ["Cannot make the run folder /proc/dnnlab-run", "refuses new folders", "hydra.run.dir="]),
    case("15-sweep-subdir-one-folder", ["train", "-m", *FAST, "seed=0,1", "hydra.sweep.dir={tmp}/s", "hydra.sweep.subdir=."],
         ["hydra.sweep.subdir='.' puts every job of the sweep into one folder", "hydra.sweep.subdir=${hydra.job.num} (the default)"]),
    case("15-read-only-resume", ["train", *RUN], ["Cannot write", ".lock", "read-only"], read_only()),
    case("15-read-only-eval", ["eval", "{run}"], ["Cannot write", "eval.json", "read-only", "printed above, not saved"],
         read_only(), out=("deterministic", "acc")),
    case("15-read-only-export", ["export", "{run}", "--fold-bn", "--repeats", "1"], ["Cannot write", "read-only"], read_only()),
    case("15-read-only-report", ["report", "{run}"], ["Cannot write", "read-only"], read_only()),
    case("15-data-root-is-a-file", ["train", *FAST, "data.root={run}/summary.json"],
         ["data.root=", "summary.json' is not valid", "a folder", "not a file"]),
    case("15-lock-symlink", ["train", *RUN], [".lock is a symbolic link", "does not follow it"], lock_link),
    case("15-metrics-bad-middle-line-report", ["report", "{run}"], ["metrics.jsonl is damaged: its line 1 is not JSON"],
         damage_row(1)),
    case("15-metrics-bad-middle-line-resume", ["train", *RUN], ["metrics.jsonl is damaged: its line 1 is not JSON"], damage_row(1)),
    case("15-garbage-summary-report", ["report", "{run}"], ["summary.json is not a dnnlab summary"], write("summary.json", "{oops")),
    case("15-summary-not-an-object-report", ["report", "{run}"], ["summary.json is not a dnnlab summary", "a JSON list"],
         write("summary.json", "[1, 2]")),
    case("15-read-only-sweep", ["train", "-m", *FAST, "seed=0,1"], ["Cannot make the run folder", "hydra.sweep.dir="],
         read_only("{tmp}")),
    case("15-sweep-dir-unknown-interpolation", ["train", "-m", *FAST, "seed=0,1", "hydra.sweep.dir=m/${{nope}}"],
         ["hydra.sweep.dir='m/${nope}' does not resolve"]),
    case("15-empty-metrics-report", ["report", "{run}"], [], write("metrics.jsonl", ""), code=0,
         out=("no_epochs", "records no epoch")),
    case("15-config-dir-yaml-error", ["train", "--config-dir", "configs", *FAST, "experiment=mine"],
         ["experiment/mine.yaml is not valid YAML", "flow sequence that begins at line 3, column 11", "expected ',' or ']'"],
         config_dir({"experiment/mine.yaml": "# @package _global_\ntrainer:\n  epochs: [3\n"})),
    case("15-config-dir-misspelt-key", ["train", "--config-dir", "configs", *FAST, "experiment=mine"],
         ["trainer.epoch is not a config key", "Did you mean trainer.epochs?"],
         config_dir({"experiment/mine.yaml": "# @package _global_\ntrainer:\n  epoch: 3\n"})),
    case("15-config-dir-value", ["train", "--config-dir", "configs", *FAST, "experiment=mine"],
         ["optimizer.lr=-1 is not valid"], config_dir({"experiment/mine.yaml": "# @package _global_\noptimizer:\n  lr: -1\n"})),
    case("15-config-dir-option-key", ["train", "--config-dir", "configs", *FAST, "optimizer=mine"],
         ["torch.optim.sgd.SGD", "unexpected keyword argument 'lrr'"],
         config_dir({"optimizer/mine.yaml": "_target_: torch.optim.SGD\nlrr: 0.1\n"})),
    case("15-config-dir-missing", ["train", "--config-dir", "nowhere", *FAST], ["--config-dir nowhere is not a folder"]),
    case("15-run-dir-unknown-interpolation", ["train", *FAST, "hydra.run.dir=out/${{x}}"],
         ["hydra.run.dir='out/${x}' does not resolve", "Interpolation key 'x' not found"]),
    case("15-run-dir-under-a-file", ["train", *FAST, "hydra.run.dir={run}/summary.json/x"], ["summary.json is a file"]),
    case("15-path-with-a-space", ["train", *FAST, "data.root=/tmp/my", "data"],
         ["Cannot read the override 'data'", "quote the whole override: 'data.root=/tmp/my data'"]),
    case("15-path-non-ascii", ["train", *FAST, "data.root=/tmp/données"],
         ["non-ASCII", "\'data.root=\"/tmp/données\"\'"]),
    # ---- 16: lr-find gets train's checks
    case("16-lr-find-width-0", [*LR, "model.width=0"], ["model.width=0 is not valid", "an integer ≥ 1"]),
    case("16-lr-find-batch-size-0", [*LR, "trainer.batch_size=0"], ["trainer.batch_size=0 is not valid"]),
    case("16-lr-find-resume", [*LR, "resume={run}"], ["lr-find does not continue a run", "Drop resume="]),
    case("16-lr-find-misspelt-key", [*LR, "trainer.epoch=3"], ["trainer.epoch is not a config key", "Did you mean trainer.epochs?"]),
    case("16-lr-find-misspelt-option", [*LR, "optimizer=adamm"], ["optimizer=adamm is not an option", "Did you mean adam?"]),
    case("16-lr-find-bad-setting", [*LR, "lr_find.factor=0.5"], ["lr_find.factor=0.5 is not valid"]),
    case("16-lr-find-batchnorm-last-batch-of-1", [*LR, "normalization=batchnorm", "trainer.batch_size=13"],
         ["Batch norm", "trainer.batch_size=12 or 14"]),
    case("16-lr-find-config-dir-misspelt-key", ["lr-find", "--config-dir", "configs", *FAST[:-1], "experiment=mine"],
         ["trainer.epoch is not a config key"], config_dir({"experiment/mine.yaml": "# @package _global_\ntrainer:\n  epoch: 3\n"})),
    case("16-lr-find-run-dir-unknown-interpolation", [*LR, "hydra.run.dir=out/${{x}}"], ["hydra.run.dir='out/${x}' does not resolve"]),
    case("16-lr-find-missing-data", [*LR, "data=mnist", "data.download=false", "data.root={tmp}/nodata"],
         ["Data set 'mnist' not found"]),
    # ---- 17: eval/export name their own flag
    case("17-eval-device", ["eval", "{run}", "--device", "tpu"], ["--device 'tpu' is not valid", "auto, cpu, cuda"]),
    case("17-eval-device-absent-gpu", ["eval", "{run}", "--device", "cuda:7"], ["--device cuda:7 but", "--device cpu"]),
    case("17-export-device", ["export", "{run}", "--device", "tpu"], ["--device 'tpu' is not valid"]),
]


@pytest.mark.parametrize("argv, words, setup, code, writes, out", CASES)
def test_one_clear_paragraph(argv, words, setup, code, writes, out, finished_copy, tmp_path, monkeypatch, capsys):
    run = finished_copy  # tmp_path/run
    monkeypatch.chdir(tmp_path)
    setup(tmp_path, run, monkeypatch)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}
    got = main([a.format(run=run, tmp=tmp_path) for a in argv])
    captured = capsys.readouterr()
    monkeypatch.undo()
    assert "Traceback" not in captured.err
    err = " ".join(captured.err.split())
    paragraph = err[err.find("dnnlab: error:"):] if code else err  # the last thing printed
    assert got == code, err
    if code:
        assert err.count("dnnlab: error:") == 1, err
    for word in words:
        assert word in paragraph
    for word in out:  # eval's result, printed although it could not be saved
        assert word in " ".join((captured.out + captured.err[:captured.err.find("dnnlab: error:")]).split())
    if not writes and (argv[0] in ("train", "lr-find")):  # refused before anything was written: no outputs/, no .hydra/
        after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}
        assert after == before


def test_lr_find_warns_when_the_loss_is_lowest_at_the_first_rate(tmp_path, monkeypatch, capsys):
    """A range that starts too high: the suggestion comes with a warning on the terminal and in lr_find.json."""
    monkeypatch.chdir(tmp_path)
    assert main([*LR, "lr_find.start_lr=5", "lr_find.end_lr=1000", "hydra.run.dir=found"]) == 0
    captured = capsys.readouterr()
    shown = " ".join((captured.out + captured.err).split())
    saved = json.loads((tmp_path / "found" / "lr_find.json").read_text())
    assert "lowest at the first rate tried" in saved["warning"] and "lr_find.start_lr=" in saved["warning"]
    assert "warning: the loss was lowest at the first rate tried" in shown


def test_no_packaged_experiment_sets_a_key_that_nothing_reads():
    """The misspelt-key check of config files (item 15) must not refuse dnnlab's own presets."""
    from dnnlab.config.catalog import options
    from dnnlab.config.schema import check_file_keys

    for name in options("experiment"):
        check_file_keys(compose([f"experiment={name}"]), [f"experiment={name}"])
    check_file_keys(compose(["+lr_find=default", "+tag=mine"]), ["+lr_find=default", "+tag=mine"])  # added on purpose


def test_lr_find_takes_hydra_flags_before_the_overrides(tmp_path, monkeypatch, capsys):
    """`+lr_find=default` goes among the overrides: `lr-find --cfg job KEY=VALUE` is no argparse error."""
    monkeypatch.chdir(tmp_path)
    assert main(["lr-find", "--cfg", "job", "data.limit=300", "lr_find.steps=7"]) == 0
    assert "steps: 7" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
