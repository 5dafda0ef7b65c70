"""Tests for the guides' presets (conf/experiment/*.yaml) and SELU's self-normalization check."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dnnlab.api import compose, train
from dnnlab.models import SELF_NORMALIZING_GROUPS, check_self_normalizing, self_normalizing_problems
from helpers.configs import tiny

EXPERIMENTS = Path(__file__).resolve().parents[1] / "dnnlab" / "conf" / "experiment"
PRESETS = ("default_dnn", "self_normalizing", "low_latency", "pretrain_autoencoder", "pretrain_auxiliary")
TINY = tiny("trainer.diagnostics=false", "data.limit=150")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs(name, tmp_path):
    summary = train(compose([f"experiment={name}", *TINY]), run_dir=tmp_path)
    assert summary["status"] == "completed" and summary["epochs"] == 1


@pytest.mark.parametrize("name", PRESETS)
def test_preset_names_its_source(name):
    lines = (EXPERIMENTS / f"{name}.yaml").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# @package _global_"
    assert "Géron" in lines[1] or "Table" in lines[1]


def targets(cfg) -> dict[str, str]:
    return {
        "initializer": cfg.initializer.weight._target_ + ":" + str(cfg.initializer.weight.get("nonlinearity")),
        "activation": cfg.activation.module._target_,
        "norm": str(cfg.normalization.layer and cfg.normalization.position),
        "regularization": ",".join(sorted(cfg.regularization)),
        "optimizer": cfg.optimizer._target_,
        "schedule": str(cfg.schedule._target_),
    }


def test_presets_encode_the_guides_tables():
    default = targets(compose(["experiment=default_dnn"]))
    assert default == {
        "initializer": "torch.nn.init.kaiming_normal_:relu", "activation": "torch.nn.ELU", "norm": "before",
        "regularization": "early_stopping,l2", "optimizer": "torch.optim.NAdam",
        "schedule": "torch.optim.lr_scheduler.OneCycleLR",
    }
    selu = compose(["experiment=self_normalizing"])
    assert targets(selu) == {
        "initializer": "torch.nn.init.kaiming_normal_:linear", "activation": "torch.nn.SELU", "norm": "None",
        "regularization": "alpha_dropout", "optimizer": "torch.optim.NAdam",
        "schedule": "torch.optim.lr_scheduler.OneCycleLR",
    }
    assert selu.data.scaling == "standardize" and selu.model._target_ == "dnnlab.models.mlp"
    fast = compose(["experiment=low_latency"])
    assert fast.activation.module._target_ == "torch.nn.LeakyReLU" and fast.normalization.position == "before"


def groups(cfg) -> dict:
    """The sub-nodes SELU's check reads."""
    return {group: cfg[group] for group in SELF_NORMALIZING_GROUPS}


def test_self_normalizing_preset_has_no_problems():
    assert self_normalizing_problems(**groups(compose(["experiment=self_normalizing"]))) == []
    assert self_normalizing_problems(**groups(compose(["activation=relu", "model=cnn"]))) == []  # not SELU: nothing to check


@pytest.mark.parametrize("override, words", [
    ("model=cnn", "model=cnn"),
    ("data.scaling=unit", "data.scaling=unit"),
    ("normalization=batchnorm", "normalization"),
    ("regularization=[dropout]", "plain dropout"),
    ("initializer=he_normal", "LeCun normal"),
])
def test_broken_selu_conditions_warn_in_one_line(override, words):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("dnnlab")
    logger.addHandler(handler)
    try:
        check_self_normalizing(**groups(compose(["experiment=self_normalizing", override])))
    finally:
        logger.removeHandler(handler)
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert words in message and "\n" not in message
