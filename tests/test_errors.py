"""Every bad input gets one paragraph naming what is wrong and what is valid: no traceback, a
non-zero exit, and nothing already written is lost. (`dnnlab.cli.main` in-process: no imports to pay.)"""
from __future__ import annotations


import pytest
import torch

from dnnlab.api import compose, train
from dnnlab.cli import main
from dnnlab.errors import ConfigError
from dnnlab.runs.rundir import RunDir
from helpers.configs import QUIET, tiny
from helpers.folders import snapshot

FAST = tiny(*QUIET, without=["trainer.epochs"])


def dnnlab(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, " ".join(err.split())


@pytest.mark.parametrize("overrides, words", [
    (["optimizer=adamm"], ["optimizer=adamm is not an option", "Did you mean adam?", "Valid: adagrad, adam,", "nadam"]),
    (["regularization=[l2,dropot]"], ["regularization=dropot", "Did you mean dropout?"]),
    (["trainer.epoch=3"], ["trainer.epoch is not a config key", "Did you mean trainer.epochs?", "batch_size"]),
    (["optimizer=sgd", "optimizer.momentm=0.9"], ["Did you mean optimizer.momentum?"]),
    (["optimizerr=adam"], ["optimizerr is not a config key", "Did you mean optimizer?"]),
    (["optimizer.lr=-1"], ["optimizer.lr=-1 is not valid", "a number > 0"]),
    (["trainer.epochs=abc"], ["trainer.epochs='abc' is not valid", "an integer ≥ 1"]),
    (["regularization=[dropout]", "regularization.dropout.rate=1.5"], ["regularization.dropout.rate=1.5", "[0, 1)"]),
    (["regularization.dropout.rate=0.5"], ["only when dropout is in the regularization list", "regularization=[dropout]"]),
    (["model.depth=0"], ["model.depth=0 is not valid", "an integer ≥ 1"]),
    (["model.depth=0", "optimizer.lr=0"], ["2 config values are not valid", "model.depth=0", "optimizer.lr=0"]),
    (["model.depth=[1"], ["Cannot read the override 'model.depth=[1'", "key=value"]),
    (["trainer.device=tpu"], ["trainer.device='tpu' is not valid", "auto, cpu, cuda or cuda:N"]),
])
def test_bad_config_is_one_paragraph_before_anything_is_made(capsys, tmp_path, monkeypatch, overrides, words):
    monkeypatch.chdir(tmp_path)
    code, err = dnnlab(capsys, "train", *FAST, *overrides)
    assert code == 2
    assert err.startswith("dnnlab: error: ")
    for word in words:
        assert word in err
    assert list(tmp_path.iterdir()) == []  # no run folder


def test_a_sweep_value_is_checked_before_any_job_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = dnnlab(capsys, "train", "-m", "optimizer=adam,adamm", "optimizer.lr=0.01,-1", *FAST)
    assert code == 2
    assert "optimizer=adamm is not an option" in err and "optimizer.lr=-1 is not valid" in err
    assert list(tmp_path.iterdir()) == []


def test_missing_data_file_is_named_and_leaves_no_run_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = dnnlab(capsys, "train", *FAST, "data=mnist", "data.download=false", f"data.root={tmp_path / 'data'}")
    assert code == 2
    assert "mnist" in err and "data.download" in err and "not found" in err
    assert not (tmp_path / "outputs").exists()


def test_resume_of_a_path_that_is_not_a_run(capsys, tmp_path):
    code, err = dnnlab(capsys, "train", f"resume={tmp_path / 'nope'}")
    assert code == 2 and "is not a dnnlab run" in err and "does not exist" in err


def test_corrupt_checkpoint_is_named_and_the_run_is_untouched(capsys, finished_copy):
    last = finished_copy / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    before = snapshot(finished_copy)
    code, err = dnnlab(capsys, "train", f"resume={finished_copy}", "trainer.epochs=4")
    assert code == 2 and "last.pt cannot be read" in err and "truncated" in err
    assert snapshot(finished_copy) == before


def test_mismatched_checkpoint_names_the_layers_and_the_run_is_untouched(capsys, finished_copy):
    before = snapshot(finished_copy)
    code, err = dnnlab(capsys, "train", f"resume={finished_copy}", "model.width=32")
    assert code == 2 and "does not fit the model" in err
    assert "hidden1.linear.weight is [16, 64] in the checkpoint but [32, 64] in the model" in err
    assert "output.weight" in err
    assert snapshot(finished_copy) == before


def test_checkpoint_with_code_in_it_is_refused(capsys, finished_copy):
    import os

    class MakeDir:
        def __reduce__(self):
            return (os.mkdir, (str(finished_copy / "code-ran"),))

    torch.save({"model": {}, "evil": MakeDir()}, finished_copy / "checkpoints" / "last.pt")
    code, err = dnnlab(capsys, "train", f"resume={finished_copy}")
    assert code == 2 and "weights_only=True" in err and "refuses" in err
    assert not (finished_copy / "code-ran").exists()


def test_resume_cannot_change_a_config_group(capsys, finished_copy):
    code, err = dnnlab(capsys, "train", f"resume={finished_copy}", "optimizer=sgd")
    assert code == 2 and "optimizer=sgd" in err and "not config groups" in err


def test_resume_names_a_misspelt_key(capsys, finished_copy):
    code, err = dnnlab(capsys, "train", f"resume={finished_copy}", "trainer.epoch=4")
    assert code == 2 and "Did you mean trainer.epochs?" in err


def test_a_length_planned_schedule_cannot_be_extended(capsys, tmp_path):
    train(compose([*FAST, "trainer.epochs=2", "schedule=1cycle"]), run_dir=tmp_path / "run")
    code, err = dnnlab(capsys, "train", f"resume={tmp_path / 'run'}", "trainer.epochs=4")
    assert code == 2 and "total_steps" in err and "cannot change on resume" in err


def test_a_run_folder_in_use_is_refused(capsys, finished_copy):
    before = snapshot(finished_copy)
    with RunDir(finished_copy).lock():  # another writer holds it
        code, err = dnnlab(capsys, "train", f"resume={finished_copy}", "trainer.epochs=3")
    assert code == 2 and "in use by another dnnlab process" in err
    assert snapshot(finished_copy) == before


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(ConfigError, match="optimizer.lr=-1"):
        main(["--debug", "train", "optimizer.lr=-1"])


@pytest.mark.parametrize("overrides, words", [
    (["data.val_fraction=0"], ["data.val_fraction=0 is not valid", "(0, 1)", "needs a validation split"]),
    (["schedule=piecewise", "schedule.boundaries=[15,10]"],
     ["schedule.boundaries=[15, 10] is not valid", "increasing order", "[10, 15]"]),
    (["schedule=piecewise", "schedule.boundaries=[10,10]"], ["schedule.boundaries=[10, 10] is not valid"]),
    (["data.classes=[3]"], ["data.classes=[3] is not valid for a classifier", "at least 2", "0–9", "null"]),
    (["data=synthetic", "data.n_classes=4", "data.classes=[3]"], ["data.classes=[3]", "(0–3)"]),
])
def test_settings_that_would_train_wrong_numbers_are_refused(capsys, tmp_path, monkeypatch, overrides, words):
    """Issue 11 item 10: no validation split, a boundary skipped, a one-class classifier."""
    test_bad_config_is_one_paragraph_before_anything_is_made(capsys, tmp_path, monkeypatch, overrides, words)


def test_one_class_is_fine_for_an_autoencoder(tiny_cfg):
    from dnnlab.config import schema

    schema.validate(tiny_cfg("model=autoencoder", "data.classes=[3]"))


def test_every_user_facing_error_has_one_root():
    from dnnlab.data import DataError
    from dnnlab.commands.report import ReportError
    from dnnlab.studies.spec import StudyError
    from dnnlab.tensorboard import MissingExtra
    from dnnlab.errors import ConfigError, UserError

    for cls in (DataError, ReportError, StudyError, MissingExtra, ConfigError):
        assert issubclass(cls, UserError), cls
    assert issubclass(ConfigError, ValueError)  # callers that catch a builder's ValueError still do


def test_a_bugs_value_error_during_setup_keeps_its_traceback():
    """setup_errors no longer dresses any ValueError as the user's mistake; a builder's ConfigError passes as is."""
    from hydra.errors import InstantiationException

    from dnnlab.api import setup_errors
    from dnnlab.errors import ConfigError

    with pytest.raises(ValueError) as raised, setup_errors():
        raise ValueError("a bug deep in a builder")
    assert not isinstance(raised.value, ConfigError)
    with pytest.raises(ConfigError, match="lr=-1"), setup_errors():
        try:
            raise ConfigError("optimizer.lr=-1 is not valid")
        except ConfigError as error:
            raise InstantiationException("Error in call to target") from error


def test_an_options_keys_that_do_not_fit_its_class_are_a_config_error():
    import torch

    from dnnlab.errors import ConfigError
    from dnnlab.config.schema import check_arguments

    with pytest.raises(ConfigError, match="unexpected keyword argument 'lrr'"):
        check_arguments(torch.optim.SGD, {"lrr": 0.1}, "optimizer", [])
    check_arguments(torch.optim.SGD, {"lr": 0.1}, "optimizer", [])
