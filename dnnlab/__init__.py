"""dnnlab: a lab bench for training deep neural networks with the classic techniques."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["train", "compose", "__version__"]


def train(cfg: Any, run_dir: Any = None) -> dict:
    """Run one training job from a composed config (see `compose`); returns the summary."""
    from dnnlab.api import train as _train

    return _train(cfg, run_dir)


def compose(overrides: Any = ()) -> Any:
    """The config that `dnnlab train OVERRIDES` would run."""
    from dnnlab.api import compose as _compose

    return _compose(overrides)
