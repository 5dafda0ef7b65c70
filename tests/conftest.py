"""Shared fixtures: tiny configs that train in well under a second."""
from __future__ import annotations

import os

import pytest
import torch

# Two cores: one intra-op thread per test process keeps timings stable and avoids oversubscription.
torch.set_num_threads(1)
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

TINY = ["data.limit=300", "model.depth=2", "model.width=16", "trainer.epochs=1", "trainer.progress=false"]


@pytest.fixture
def tiny_cfg():
    """compose(overrides) on top of a tiny, fast run."""
    from dnnlab.api import compose

    def make(*overrides: str):
        return compose([*TINY, *overrides])

    return make
