"""Each set of allowed values is written once (dnnlab.config.choices) and read by both the validation rules
and the constructor that takes the value: the two accept the same values and refuse the same typo."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from dnnlab.config import choices, schema
from dnnlab.engine import acceleration
from dnnlab.errors import ConfigError
from dnnlab.models import mlp
from dnnlab.observe.diagnostics import DiagnosticsHook
from dnnlab.optim import implementation_kwargs
from dnnlab.regularization import EarlyStopping
from dnnlab.runs.checkpoints import RunFolderHook
from dnnlab.runs.rundir import RunDir
from dnnlab.schedules import build_schedule


def build(key: str, value, tmp_path):
    """The constructor that takes `key`'s value, called with `value`."""
    from omegaconf import OmegaConf

    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    return {
        "trainer.precision": lambda: acceleration.autocast(torch.device("cpu"), value),
        "trainer.monitor_mode": lambda: RunFolderHook(RunDir(tmp_path / "run"), mode=value),
        "regularization.early_stopping.mode": lambda: EarlyStopping(mode=value),
        "optimizer.implementation": lambda: implementation_kwargs(torch.optim.Adam, value),
        "schedule.interval": lambda: build_schedule(OmegaConf.create({"interval": value}), optimizer, 1, 1),
        "activation.family": lambda: DiagnosticsHook(value),
        "normalization.position": lambda: mlp((4,), 2, nn.ReLU, depth=1, width=3, norm_position=value),
    }[key]()


@pytest.mark.parametrize("key, options", [
    ("trainer.precision", choices.PRECISIONS),
    ("trainer.monitor_mode", choices.MONITOR_MODES),
    ("regularization.early_stopping.mode", choices.MONITOR_MODES),
    ("optimizer.implementation", choices.IMPLEMENTATIONS),
    ("schedule.interval", choices.INTERVALS),
    ("activation.family", choices.ACTIVATION_FAMILIES),
    ("normalization.position", choices.NORM_POSITIONS),
])
def test_the_rule_and_the_constructor_accept_the_same_values(key, options, tmp_path):
    for value in options:
        assert schema.problem(key, value) is None
        build(key, value, tmp_path)
    assert key in schema.problem(key, "bogus")
    with pytest.raises(ConfigError, match=f"{key}='bogus' is not valid"):
        build(key, "bogus", tmp_path)


def test_devices_compile_modes_and_scalings_are_read_by_both():
    from dnnlab.api import pick_device
    from dnnlab.data import load_data

    for device in ("auto", "cpu"):
        assert schema.problem("trainer.device", device) is None and pick_device(device)
    assert schema.problem("trainer.device", "cuda:1") is None and choices.is_device("cuda:12")
    with pytest.raises(ConfigError, match=choices.DEVICE_VALID):
        pick_device("tpu")
    assert choices.DEVICE_VALID in schema.problem("trainer.device", "tpu")
    for mode in choices.COMPILE_MODES:
        assert schema.problem("trainer.compile", mode) is None and acceleration.compile_mode(mode) == mode
    for scaling in choices.SCALINGS:
        assert schema.problem("data.scaling", scaling) is None
        load_data({"_target_": "dnnlab.data.load_digits", "name": "digits", "scaling": scaling, "limit": 50})
    assert "data.scaling" in schema.problem("data.scaling", "zscore")
    assert set(acceleration.DTYPES) == set(choices.PRECISIONS)


def test_choices_and_schema_import_no_torch():
    code = "import sys, dnnlab.config.choices, dnnlab.config.schema; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
