"""Hook order is declared once (dnnlab.engine.hooks.STAGES): each hook class names its stage and the trainer
runs them stage by stage, whatever order they were built in."""
from __future__ import annotations

import pytest

from dnnlab.api import build_trainer, train
from dnnlab.engine.hooks import STAGES, Hook, in_stage_order
from dnnlab.runs.rundir import RunDir


class Probe(Hook):
    """Notes, in `calls`, when its stage's hooks see an epoch end."""

    def __init__(self, stage: str, calls: list[str]):
        self.stage, self.calls = stage, calls

    def on_epoch_end(self, trainer, metrics) -> None:
        self.calls.append(self.stage)


def test_every_hook_build_trainer_makes_runs_in_its_stage(tiny_cfg, tmp_path):
    cfg = tiny_cfg("model=autoencoder", "model.task.greedy_epochs=1", "model.freeze=1", "model.unfreeze_at=1",
                   "regularization=[early_stopping]", "logger=tensorboard")
    extra = Probe("report", [])
    hooks = build_trainer(cfg, RunDir(tmp_path / "run"), [extra]).hooks
    names = [type(h).__name__ for h in hooks]
    assert [STAGES.index(h.stage) for h in hooks] == sorted(STAGES.index(h.stage) for h in hooks)
    order = ["NoAccuracy", "DiagnosticsHook", "HealthHook", "EarlyStopping", "GreedyLayerwise", "Unfreeze",
             "DataFingerprint", "RunFolderHook", "TensorBoardHook"]
    assert names == [*order, "Probe"] and hooks[-1] is extra


def test_the_trainer_runs_hooks_stage_by_stage_whatever_order_they_come_in(tiny_cfg, tmp_path):
    calls: list[str] = []
    scrambled = [Probe(stage, calls) for stage in ("report", "record", "steer", "measure", "steer")]
    trainer = build_trainer(tiny_cfg(), RunDir(tmp_path / "run"), scrambled)
    assert in_stage_order(scrambled)[1:3] == [scrambled[2], scrambled[4]]  # stable within a stage
    trainer.fit()
    assert calls == ["measure", "steer", "steer", "record", "report"]


def test_a_hook_with_an_unknown_stage_is_refused_where_it_is_declared():
    with pytest.raises(TypeError, match="stage='later'"):
        type("Late", (Hook,), {"stage": "later"})


def test_early_stopping_can_watch_a_per_layer_diagnostic(tiny_cfg, tmp_path):
    """Diagnostics measure before early stopping steers, so the metric the config allows is in the row it reads."""
    cfg = tiny_cfg("trainer.epochs=2", "regularization=[early_stopping]",
                   "regularization.early_stopping.monitor=grad_norm/hidden1", "regularization.early_stopping.mode=max")
    assert train(cfg, run_dir=tmp_path / "run")["status"] in ("completed", "early_stopped")
