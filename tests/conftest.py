"""Shared fixtures: the tiny config (`tiny_cfg`, from helpers.configs) and one finished run per session."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from helpers.configs import QUIET, tiny

# Two cores: one intra-op thread per test process keeps timings stable and avoids oversubscription.
torch.set_num_threads(1)
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

FINISHED = tiny(*QUIET, "trainer.epochs=2")  # what `finished_run` trained


@pytest.fixture
def tiny_cfg():
    """compose(overrides) on top of a tiny, fast run."""
    from dnnlab.api import compose

    def make(*overrides: str):
        return compose(tiny(*overrides))

    return make


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-epoch tiny run (FINISHED), trained once per session. Read it, never change it: a test that
    writes into the folder (or may) takes `finished_copy`."""
    from dnnlab.api import compose, train

    path = tmp_path_factory.mktemp("finished") / "run"
    train(compose(FINISHED), run_dir=path)
    return path


@pytest.fixture
def finished_copy(finished_run, tmp_path) -> Path:
    """A copy of `finished_run` at tmp_path/run, for a test to change."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))
