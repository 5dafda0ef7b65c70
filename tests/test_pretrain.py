"""Tests for dnnlab.pretrain: reconstruction (autoencoder, whole or greedy) and the real-vs-corrupted task."""
from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from torch import nn

from dnnlab.api import build_trainer, compose, train
from dnnlab.cli import main
from dnnlab.data import Splits
from dnnlab.models import autoencoder, mlp
from dnnlab.pretrain import RealVsCorrupted, Reconstruction
from dnnlab.runs.checkpoints import load_checkpoint
from dnnlab.runs.rundir import RunDir
from helpers.configs import tiny

FAST = tiny("trainer.diagnostics=false", without=["model.depth", "model.width", "trainer.epochs"])  # presets shape the net


def read_metrics(run) -> list[dict]:
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("pretrain") / "ae"
    summary = train(compose(FAST + ["experiment=pretrain_autoencoder", "trainer.epochs=6"]), run_dir=path)
    return path, summary


def test_autoencoder_reconstruction_loss_falls(autoencoder_run):
    path, summary = autoencoder_run
    rows = read_metrics(path)
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    # A reconstruction has no accuracy: null, not a made-up number.
    assert all(r["train_acc"] is None and r["val_acc"] is None for r in rows)
    assert summary["test_acc"] is None or math.isnan(summary["test_acc"])
    assert json.load(open(path / "summary.json"))["test_acc"] is None
    assert summary["best_val_loss"] == min(r["val_loss"] for r in rows)


def test_reconstruction_target_is_the_input_and_labels_are_unused():
    x = torch.randn(6, 1, 2, 2)
    data = Splits(x, torch.zeros(6, dtype=torch.long), x[:2], torch.zeros(2, dtype=torch.long),
                  x[:3], torch.zeros(3, dtype=torch.long), 10, (1, 2, 2), "toy")
    out = Reconstruction().prepare(data)
    assert torch.equal(out.train_y, x.flatten(1)) and torch.equal(out.test_y, x[:3].flatten(1))


def test_encoder_blocks_are_named_and_shaped_like_the_mlp():
    ae = autoencoder((1, 8, 8), 10, nn.ReLU, depth=3, width=16).state_dict()
    net = mlp((1, 8, 8), 10, nn.ReLU, depth=3, width=16).state_dict()
    hidden = [k for k in net if k.startswith("hidden")]
    assert hidden and all(k in ae and ae[k].shape == net[k].shape for k in hidden)
    assert autoencoder((1, 8, 8), 10, nn.ReLU, depth=3, width=16)(torch.randn(2, 1, 8, 8)).shape == (2, 64)


def test_mlp_reuses_the_encoder(autoencoder_run, tmp_path):
    path, _ = autoencoder_run
    saved = load_checkpoint(path / "checkpoints" / "best.pt")["model"]
    cfg = compose(FAST + ["model.depth=2", "model.width=32", f"model.pretrained={path}", "trainer.epochs=1"])
    model = build_trainer(cfg, RunDir(tmp_path)).model
    for key in ("hidden1.linear.weight", "hidden2.linear.bias"):
        assert torch.equal(model.state_dict()[key], saved[key])


def test_greedy_layerwise_trains_each_pair_then_the_stack(tmp_path):
    summary = train(compose(FAST + ["experiment=pretrain_autoencoder", "trainer.epochs=1",
                                    "model.task.greedy_epochs=3"]), run_dir=tmp_path)
    stages = summary["greedy_stages"]
    assert [s["layer"] for s in stages] == ["hidden1", "hidden2"]
    assert all(s["val_loss"] < s["first_val_loss"] for s in stages)
    # After the greedy stages the stacked autoencoder already reconstructs: better than a fresh one's first epoch.
    whole = train(compose(FAST + ["experiment=pretrain_autoencoder", "trainer.epochs=1"]), run_dir=tmp_path / "whole")
    assert summary["best_val_loss"] < whole["best_val_loss"]


def test_negative_greedy_epochs_is_an_error():
    with pytest.raises(ValueError, match="greedy_epochs=-1"):
        Reconstruction(greedy_epochs=-1)


def test_real_vs_corrupted_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, 4, 4, generator=gen)
    data = Splits(x, torch.zeros(200, dtype=torch.long), x[:20], torch.zeros(20, dtype=torch.long),
                  x[:30], torch.zeros(30, dtype=torch.long), 10, (1, 4, 4), "toy")
    out = RealVsCorrupted(corruption=0.25, seed=1).prepare(data)
    assert out.n_classes == 2 and len(out.train_y) == 400 and out.train_y.sum() == 200
    real, fake = out.train_x[out.train_y == 1].flatten(1), out.train_x[out.train_y == 0].flatten(1)
    assert {tuple(r.tolist()) for r in real} == {tuple(r.tolist()) for r in x.flatten(1)}
    # Each corrupted input differs from every real one in about a quarter of its features.
    changed = (fake[:, None, :] != x.flatten(1)[None]).float().mean(2).min(1).values
    assert 0.1 < changed.mean() < 0.3


def test_auxiliary_pretraining_learns_and_its_layers_are_reused(tmp_path):
    aux = ["experiment=pretrain_auxiliary", "trainer.epochs=10", "optimizer.lr=0.003", "model.width=32"]
    summary = train(compose(tiny("trainer.diagnostics=false", *aux, without=["data.limit", "model.depth"])),
                    run_dir=tmp_path / "aux")
    assert summary["best_val_acc"] > 0.65  # real vs corrupted is learnable (chance is 0.5)
    cfg = compose(FAST + ["model.depth=2", "model.width=32", f"model.pretrained={tmp_path / 'aux'}", "trainer.epochs=1"])
    model = build_trainer(cfg, RunDir(tmp_path / "reuse")).model
    saved = load_checkpoint(tmp_path / "aux" / "checkpoints" / "best.pt")["model"]
    assert torch.equal(model.hidden1.linear.weight, saved["hidden1.linear.weight"])
    assert model.output.weight.shape == (10, 32) and not model.output.weight.any()


# --- greedy pretraining: signals and exact resume (issue 11 item 7) -------------------------------
GREEDY = FAST + ["experiment=pretrain_autoencoder", "trainer.epochs=3", "model.task.greedy_epochs=2",
                 "trainer.device=cpu"]
TIMELESS = ("epoch_s", "samples_per_s")


def rows_without_timing(run) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMELESS} for row in read_metrics(run)]


@pytest.fixture(scope="module")
def greedy_straight(tmp_path_factory):
    """The uninterrupted greedy run that every interrupted+resumed one must reproduce."""
    path = tmp_path_factory.mktemp("greedy") / "straight"
    return path, train(compose(GREEDY), run_dir=path)


def check_resume_equals_straight(run, straight) -> None:
    path, expected = straight
    assert main(["train", f"resume={run}"]) == 0
    resumed = json.loads((run / "summary.json").read_text())
    assert rows_without_timing(run) == rows_without_timing(path)
    for key in ("status", "epochs", "steps", "test_loss", "greedy_stages"):
        assert resumed[key] == expected[key], key


def test_ctrl_c_during_greedy_pretraining_interrupts_the_run_and_resume_is_exact(tmp_path, monkeypatch, capsys,
                                                                                 greedy_straight):
    """SIGINT during the second pair's pretraining: exit 130, status interrupted, no epoch kept; resume is exact."""
    from dnnlab.pretrain import History

    calls, record = [0], History.on_epoch_end

    def ctrl_c_in_the_third_inner_epoch(self, trainer, metrics):
        record(self, trainer, metrics)
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(History, "on_epoch_end", ctrl_c_in_the_third_inner_epoch)
    monkeypatch.chdir(tmp_path)
    assert main(["train", *GREEDY, "hydra.run.dir=run"]) == 130
    err = capsys.readouterr().err
    assert "IndexError" not in err and "greedy pretraining interrupted at hidden2/2" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs"] == 0 and summary["interrupted_by"] == "SIGINT"
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 0
    calls[0] = -10**9  # no more signals
    check_resume_equals_straight(tmp_path / "run", greedy_straight)


@pytest.mark.parametrize("at_epoch", [0, 2])
def test_a_greedy_run_stopped_after_pretraining_resumes_exactly(tmp_path, monkeypatch, greedy_straight, at_epoch):
    """Stopped in epoch 1 (the resume starts from the epoch-0 checkpoint) or in epoch 3."""
    from dnnlab.pretrain import GreedyLayerwise

    start = GreedyLayerwise.on_epoch_start
    armed = [True]

    def stop_at(self, trainer):
        start(self, trainer)
        if armed[0] and trainer.epoch == at_epoch:
            trainer.interrupt(signal.SIGTERM)

    monkeypatch.setattr(GreedyLayerwise, "on_epoch_start", stop_at)
    summary = train(compose(GREEDY), run_dir=tmp_path / "run")
    assert summary["status"] == "interrupted" and summary["epochs"] == at_epoch
    armed[0] = False
    check_resume_equals_straight(tmp_path / "run", greedy_straight)
