"""STAND-IN: replaced by the lead's stacked loop. While dnnlab.engine.stacked (what api.train_stack builds
on) is not in the tree, the stacked launcher's tests train a stack's members one after another with
api.train, which keeps api.train_stack's contract: each member's summary or its error, in order; a
signal stops all of them. Once the engine is there, `patch_if_missing` does nothing."""
from __future__ import annotations

import importlib.util
import signal
from typing import Any, Sequence

import pytest

from dnnlab import api
from dnnlab.errors import Interrupted


def sequential_stack(members: Sequence[api.StackMember], min_speedup: float = 0.9) -> list[dict[str, Any] | BaseException]:
    outcomes: list[dict[str, Any] | BaseException] = []
    for member in members:
        stopped = next((o for o in outcomes if isinstance(o, dict) and o["status"] == "interrupted"), None)
        if stopped is not None:  # a signal stopped the stack: the members after it do not start
            outcomes.append(Interrupted(signal.Signals[stopped["interrupted_by"]]))
            continue
        try:
            outcomes.append(api.train(member.cfg, run_dir=member.run_dir, hydra_cfg=member.hydra_cfg))
        except Exception as error:
            outcomes.append(error)
    return outcomes


def engine_present() -> bool:
    try:
        return importlib.util.find_spec("dnnlab.engine.stacked.trainer") is not None
    except ModuleNotFoundError:  # not even the package
        return False


def patch_if_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    if not engine_present():
        monkeypatch.setattr(api, "train_stack", sequential_stack)
