"""Per-layer diagnostics: the keys, what they measure, that the probe changes nothing, and its cost."""
from __future__ import annotations

import math

import pytest
import torch

from dnnlab.api import train
from dnnlab.observe.diagnostics import DiagnosticsHook, dead_fraction, saturated_fraction
from dnnlab.runs.rundir import RunDir

PREFIXES = ("grad_norm/", "weight_norm/", "act_mean/", "act_std/", "dead_frac/", "sat_frac/")


def diag_keys(row: dict) -> set[str]:
    return {k for k in row if k.startswith(PREFIXES)}


def test_relu_mlp_rows_hold_every_layer_statistic(tiny_cfg, tmp_path):
    summary = train(tiny_cfg("trainer.epochs=2"), run_dir=tmp_path)
    rows = RunDir(tmp_path).read_metrics()
    assert len(rows) == 2
    for row in rows:
        for layer in ("hidden1", "hidden2", "output"):
            assert row[f"grad_norm/{layer}"] > 0 and row[f"weight_norm/{layer}"] > 0
        for layer in ("hidden1", "hidden2"):
            assert row[f"act_std/{layer}"] > 0 and math.isfinite(row[f"act_mean/{layer}"])
            assert 0 <= row[f"dead_frac/{layer}"] < 1
        assert "act_std/output" not in row  # the output layer has no activation
        assert not any(k.startswith("sat_frac/") for k in row)  # ReLU cannot saturate
    assert 0 < summary["diag_s"] < sum(row["epoch_s"] for row in rows) * 10


def test_weight_norm_is_the_layers_l2_norm(tiny_cfg, tmp_path):
    cfg = tiny_cfg("initializer=normal", "initializer.weight.std=0.5")
    train(cfg, run_dir=tmp_path)
    row = RunDir(tmp_path).read_metrics()[0]
    weights = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert row["weight_norm/hidden2"] == pytest.approx(weights["hidden2.linear.weight"].norm().item(), rel=1e-5)
    assert row["weight_norm/output"] == pytest.approx(weights["output.weight"].norm().item(), rel=1e-5)


def test_saturating_activation_reports_saturation_not_death(tiny_cfg, tmp_path):
    train(tiny_cfg("activation=tanh"), run_dir=tmp_path)
    row = RunDir(tmp_path).read_metrics()[0]
    assert 0 <= row["sat_frac/hidden1"] <= 1
    assert not any(k.startswith("dead_frac/") for k in row)


def test_cnn_layers_are_its_named_blocks(tiny_cfg, tmp_path):
    train(tiny_cfg("model=cnn", "model.depth=1", "model.width=4", "model.dense=8"), run_dir=tmp_path)
    row = RunDir(tmp_path).read_metrics()[0]
    assert {k.split("/")[1] for k in row if k.startswith("grad_norm/")} == {"conv1", "hidden1", "output"}
    assert "dead_frac/conv1" in row


def test_dead_fraction_counts_units_silent_on_every_sample():
    a = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    assert dead_fraction(a).item() == pytest.approx(0.5)  # units 0 and 3 never fire
    conv = torch.zeros(2, 4, 3, 3)
    conv[1, 2, 2, 2] = 1.0  # one position of one sample keeps channel 2 alive
    assert dead_fraction(conv).item() == pytest.approx(0.75)


def test_saturated_fraction_needs_most_samples_within_one_percent_of_a_bound():
    # sigmoid outputs: unit 0 near 0 always, unit 1 near 1 on 2 of 3 samples, unit 2 near 1 once,
    # unit 3 at 0.985 (outside the 1 % band)
    a = torch.tensor([[0.001, 0.995, 0.5, 0.985], [0.009, 0.999, 0.999, 0.985], [0.002, 0.4, 0.5, 0.985]])
    assert saturated_fraction(a, 0.0, 1.0).item() == pytest.approx(0.5)
    tanh = torch.tensor([[-0.99, 0.97], [0.985, 0.5]])  # tanh's band is 0.02 wide: |y| ≥ 0.98
    assert saturated_fraction(tanh, -1.0, 1.0).item() == pytest.approx(0.5)


def test_diagnostics_off_removes_the_keys_and_on_changes_no_number(tiny_cfg, tmp_path):
    """The probe runs in eval mode and draws no random numbers: dropout and batch norm
    training is identical to the run without it."""
    extra = ("trainer.epochs=2", "regularization=[dropout]", "normalization=batchnorm")
    train(tiny_cfg(*extra), run_dir=tmp_path / "on")
    train(tiny_cfg(*extra, "trainer.diagnostics=false"), run_dir=tmp_path / "off")
    on, off = RunDir(tmp_path / "on").read_metrics(), RunDir(tmp_path / "off").read_metrics()
    assert all(diag_keys(row) for row in on)
    assert not any(diag_keys(row) for row in off)
    for a, b in zip(on, off):
        assert [a[k] for k in ("train_loss", "val_loss", "val_acc")] == [b[k] for k in ("train_loss", "val_loss", "val_acc")]


def test_probe_is_fixed_and_restores_train_mode(tiny_cfg, tmp_path):
    from dnnlab.api import build_trainer

    trainer = build_trainer(tiny_cfg(), RunDir(tmp_path))
    first, second = DiagnosticsHook("relu", seed=3), DiagnosticsHook("relu", seed=3)
    first.on_fit_start(trainer)
    second.on_fit_start(trainer)
    assert torch.equal(first.probe[0], second.probe[0])
    assert len(first.probe[1]) == 64  # 1/20 of ~200 training samples, raised to the 64 minimum
    trainer.model.train()
    rng = torch.get_rng_state()
    first.measure(trainer.model, trainer.loss_fn)
    assert trainer.model.training and torch.equal(rng, torch.get_rng_state())


@pytest.mark.slow
def test_cost_is_at_most_five_percent_of_an_epoch_on_the_20x100_mlp(tmp_path):
    from dnnlab.api import compose

    cfg = compose(["model.depth=20", "model.width=100", "trainer.epochs=6", "trainer.progress=false"])
    summary = train(cfg, run_dir=tmp_path)
    ratio = summary["diag_s"] / sum(row["epoch_s"] for row in RunDir(tmp_path).read_metrics())
    assert ratio <= 0.05, f"diagnostics cost {ratio:.1%} of an epoch"


def test_frozen_layers_report_weights_but_no_gradient(tiny_cfg, tmp_path):
    from dnnlab.api import build_trainer

    trainer = build_trainer(tiny_cfg(), RunDir(tmp_path))
    trainer.model.hidden1.linear.weight.requires_grad_(False)
    hook = DiagnosticsHook("relu")
    hook.on_fit_start(trainer)
    stats = hook.measure(trainer.model, trainer.loss_fn)
    assert "grad_norm/hidden1" not in stats and stats["weight_norm/hidden1"] > 0
    assert stats["grad_norm/hidden2"] > 0
