"""The stacked loop (dnnlab.engine.stacked.trainer) against solo runs of the same configs: each member's
folder is its solo run's, within the issue's rule (epoch-1 train_loss within 1e-5 relative, test accuracy
within 0.5 points), per-member stopping, interruption and resume."""
from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest

from dnnlab.api import StackMember, compose, train, train_stack
from dnnlab.engine.hooks import Hook

# Full digits (360 test samples: 0.5 points is under 2 samples), a small MLP, a few epochs.
SMALL = ["model.depth=2", "model.width=32", "trainer.epochs=3", "trainer.progress=false"]


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def solo_and_stacked(tmp_path: Path, jobs: list[list[str]], **kwargs) -> list[tuple[Path, Path]]:
    """Train each job solo and all of them as one stack; (solo folder, member folder) per job."""
    cfgs = [compose([*SMALL, *job]) for job in jobs]
    pairs = [(tmp_path / f"solo{k}", tmp_path / f"stack{k}") for k in range(len(jobs))]
    for cfg, (solo, _) in zip(cfgs, pairs):
        train(cfg, run_dir=solo)
    results = train_stack([StackMember(cfg, member) for cfg, (_, member) in zip(cfgs, pairs)], min_speedup=0, **kwargs)
    assert all(isinstance(r, dict) for r in results), results
    return pairs


def assert_faithful(solo: Path, member: Path) -> None:
    a, b = rows(solo), rows(member)
    assert len(a) == len(b)
    assert b[0]["train_loss"] == pytest.approx(a[0]["train_loss"], rel=1e-5)
    assert set(a[0]) == set(b[0])  # every diagnostics key
    s, m = summary(solo), summary(member)
    assert m["status"] == s["status"]
    if s["test_acc"] is not None:
        assert abs(m["test_acc"] - s["test_acc"]) <= 0.005


@pytest.mark.parametrize("jobs", [
    pytest.param([["seed=0"], ["seed=1"], ["seed=2"]], id="adam-seeds"),
    pytest.param([["optimizer=momentum", f"optimizer.lr={lr}"] for lr in (0.01, 0.03, 0.1)], id="sgd-momentum-lrs"),
    pytest.param([["normalization=batchnorm", f"seed={s}"] for s in (0, 1)], id="batchnorm"),
    pytest.param([["regularization=[l2,max_norm]", f"regularization.l2.weight={w}", f"regularization.max_norm.r={r}"]
                  for w, r in ((1e-4, 1.0), (1e-3, 2.0))], id="l2-max-norm"),
    pytest.param([["schedule=1cycle", f"optimizer.lr={lr}"] for lr in (1e-3, 3e-3)], id="1cycle"),
    pytest.param([["optimizer=adamw", f"optimizer.weight_decay={wd}"] for wd in (0.01, 0.1)], id="adamw"),
])
def test_member_is_its_solo_run(tmp_path, jobs):
    for solo, member in solo_and_stacked(tmp_path, jobs):
        assert_faithful(solo, member)


def test_members_with_one_width_per_layer_train_as_one_stack(tmp_path):
    """train_stack of two 64-16-8-10 members: one stack of 2, each member its solo run."""
    jobs = [["model.width=[16,8]", f"seed={k}"] for k in (0, 1)]
    for solo, member in solo_and_stacked(tmp_path, jobs):
        assert_faithful(solo, member)
        assert summary(member)["stack"]["size"] == 2
        assert "width:\n  - 16\n  - 8\n" in (member / ".hydra" / "config.yaml").read_text()


@pytest.mark.parametrize("job", [["normalization=batchnorm"], ["activation=tanh"], ["regularization=[dropout]"]],
                         ids=["batchnorm", "tanh-saturation", "dropout"])
def test_the_stack_measures_every_members_diagnostics_in_one_pass(tmp_path, monkeypatch, job):
    """The stacked probe gives each member what its own DiagnosticsHook would measure on its written-back model."""
    from dnnlab.observe.diagnostics import DiagnosticsHook

    checked = []
    solo_epoch_end = DiagnosticsHook.on_epoch_end

    def checking(self, trainer, metrics):
        assert self.given is not None, "a member of the stack was not measured by the stacked probe"
        own = self.measure(trainer.model, trainer.loss_fn)
        assert set(own) == set(self.given[0])
        for key, value in own.items():
            assert self.given[0][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        checked.append(key)
        solo_epoch_end(self, trainer, metrics)

    monkeypatch.setattr(DiagnosticsHook, "on_epoch_end", checking)
    cfgs = [compose([*SMALL, *job, f"seed={k}"]) for k in range(3)]
    results = train_stack([StackMember(cfg, tmp_path / f"m{k}") for k, cfg in enumerate(cfgs)], min_speedup=0)
    assert all(r["status"] == "completed" and r["diag_s"] > 0 for r in results)
    assert len(checked) == 3 * 3  # every member, every epoch
    if job == ["activation=tanh"]:
        assert "sat_frac/hidden1" in rows(tmp_path / "m0")[0]


def test_a_stack_that_cannot_be_built_trains_one_after_another_and_says_why(tmp_path, monkeypatch):
    from dnnlab.engine.stacked import trainer as stacked_trainer

    def broken_probe(trainers):
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(stacked_trainer, "measure_speedup", broken_probe)
    cfgs = [compose([*SMALL, f"seed={k}"]) for k in range(2)]
    results = train_stack([StackMember(cfg, tmp_path / f"m{k}") for k, cfg in enumerate(cfgs)])
    assert [r["status"] for r in results] == ["completed", "completed"]
    assert "building the stack failed (RuntimeError: probe exploded)" in results[0]["stack"]["trained_solo"]


def test_member_folder_is_a_solo_folder(tmp_path):
    (solo, member), _ = solo_and_stacked(tmp_path, [["seed=0"], ["seed=1"]])
    s = summary(member)
    assert s["stack"] == {"size": 2, "index": 0}
    assert "health" in s and s["run_dir"] == str(member)
    assert (member / "checkpoints" / "last.pt").exists() and (member / "checkpoints" / "best.pt").exists()
    assert (member / ".hydra" / "config.yaml").exists()
    log = (member / "train.log").read_text()
    assert str(member) in log and str(tmp_path / "stack1") not in log  # only its own lines


def test_members_stop_on_their_own(tmp_path):
    """Early stopping and divergence act per member: the others go on to complete."""
    jobs = [["optimizer.lr=0.01"], ["optimizer.lr=1e8"],
            ["regularization=[early_stopping]", "regularization.early_stopping.patience=1",
             "regularization.early_stopping.min_delta=10"]]
    cfgs = [compose([*SMALL, "optimizer=momentum", "trainer.epochs=4", *job]) for job in jobs]
    folders = [tmp_path / f"m{k}" for k in range(3)]
    results = train_stack([StackMember(c, f) for c, f in zip(cfgs, folders)], min_speedup=0)
    statuses = [r["status"] for r in results]
    assert statuses == ["completed", "diverged", "early_stopped"]
    assert [len(rows(f)) for f in folders] == [4, 1, 2]
    assert results[0]["test_acc"] > 0.8 and results[1]["test_acc"] is None


class StopAfter(Hook):
    """Sends SIGINT to this process at the end of epoch `epoch` of one member."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, trainer, metrics) -> None:
        if metrics["epoch"] == self.epoch:
            signal.raise_signal(signal.SIGINT)


def test_interrupted_stack_resumes_as_a_stack_exactly(tmp_path, monkeypatch):
    cfgs = [compose([*SMALL, f"seed={s}", "trainer.epochs=4"]) for s in (0, 1)]
    straight = [tmp_path / f"straight{k}" for k in range(2)]
    train_stack([StackMember(c, f) for c, f in zip(cfgs, straight)], min_speedup=0)

    from dnnlab import api

    built, made = api.build_trainer, []

    def build_first_with_a_signal(*args, **kwargs):  # one member sends SIGINT once (a second would kill the process)
        trainer = built(*args, **kwargs)
        if not made:
            trainer.hooks.append(StopAfter(2))
        made.append(trainer)
        return trainer

    monkeypatch.setattr(api, "build_trainer", build_first_with_a_signal)
    folders = [tmp_path / f"m{k}" for k in range(2)]
    results = train_stack([StackMember(c, f) for c, f in zip(cfgs, folders)], min_speedup=0)
    assert [r["status"] for r in results] == ["interrupted", "interrupted"]
    monkeypatch.setattr(api, "build_trainer", built)

    resumed = [api.resume_config(f) for f in folders]
    results = train_stack([StackMember(c, f) for c, f in zip(resumed, folders)], min_speedup=0)
    assert [r["status"] for r in results] == ["completed", "completed"]
    for a, b in zip(straight, folders):
        drop = ("epoch_s", "samples_per_s")
        assert [{k: v for k, v in r.items() if k not in drop} for r in rows(a)] == \
               [{k: v for k, v in r.items() if k not in drop} for r in rows(b)]


def test_a_member_resumes_solo_and_evaluates(tmp_path):
    from dnnlab.commands.evaluate import main as eval_main

    cfgs = [compose([*SMALL, f"seed={s}", "trainer.epochs=2"]) for s in (0, 1)]
    folders = [tmp_path / f"m{k}" for k in range(2)]
    train_stack([StackMember(c, f) for c, f in zip(cfgs, folders)], min_speedup=0)
    from dnnlab import api

    resumed = train(api.resume_config(folders[1], ["trainer.epochs=3"]))
    assert resumed["status"] == "completed" and resumed["epochs"] == 3
    assert len(rows(folders[1])) == 3
    assert eval_main([str(folders[0])]) == 0


def test_too_slow_a_stack_trains_one_after_another(tmp_path, caplog):
    cfgs = [compose([*SMALL, f"seed={s}", "trainer.epochs=1"]) for s in (0, 1)]
    folders = [tmp_path / f"m{k}" for k in range(2)]
    results = train_stack([StackMember(c, f) for c, f in zip(cfgs, folders)], min_speedup=math.inf)
    assert [r["status"] for r in results] == ["completed", "completed"]
    assert "one after another" in results[0]["stack"]["trained_solo"]
    solo = tmp_path / "solo"
    train(cfgs[1], run_dir=solo)
    assert rows(folders[1])[0]["train_loss"] == rows(solo)[0]["train_loss"]  # solo path: bit for bit


def test_with_dropout_the_members_match_the_solo_runs_on_average(tmp_path):
    """Dropout masks differ from the solo runs' (they come from the stack's one random stream), so the rule is
    statistical: over 8 seeds the members' mean test accuracy is within one standard deviation of the solo runs'."""
    import statistics

    jobs = [["regularization=[dropout]", "regularization.dropout.rate=0.3", f"seed={s}", "trainer.epochs=2",
             "trainer.diagnostics=false"] for s in range(8)]
    pairs = solo_and_stacked(tmp_path, jobs)
    solo = [summary(s)["test_acc"] for s, _ in pairs]
    stacked = [summary(m)["test_acc"] for _, m in pairs]
    assert abs(statistics.mean(stacked) - statistics.mean(solo)) <= statistics.stdev(solo)


def test_a_stack_too_big_for_memory_trains_in_parts(tmp_path, monkeypatch):
    from dnnlab.engine.stacked import trainer as stacked

    monkeypatch.setattr(stacked, "members_that_fit", lambda trainers: 2)
    pairs = solo_and_stacked(tmp_path, [[f"seed={s}", "trainer.epochs=1"] for s in range(3)])
    for solo, member in pairs:
        assert_faithful(solo, member)
    places = [summary(m)["stack"] for _, m in pairs]
    assert [(p["size"], p["index"]) for p in places] == [(2, 0), (2, 1), (1, 0)]
    assert places[2]["trained_solo"] == "a stack of one" and "trained_solo" not in places[0]


def test_members_that_differ_in_what_a_stack_shares_are_refused_before_anything_is_written(tmp_path):
    from dnnlab.errors import ConfigError

    cfgs = [compose([*SMALL, "trainer.batch_size=32"]), compose([*SMALL, "trainer.batch_size=64"])]
    with pytest.raises(ConfigError, match="share one trainer.batch_size"):
        train_stack([StackMember(c, tmp_path / f"m{k}") for k, c in enumerate(cfgs)])
    assert list(tmp_path.iterdir()) == []
