"""Health verdicts: the guides' failure modes are named, with the numbers that show them."""
from __future__ import annotations

import json

import pytest
from rich.console import Console

from dnnlab.api import train
from dnnlab.observe.console import results_table
from dnnlab.observe.health import VANISHING_RATIO, verdicts
from dnnlab.runs.rundir import RunDir
from helpers.configs import tiny

DEEP = ["experiment=vanishing_gradients", *tiny(without=["model.depth", "model.width"])]  # the preset's deep net


def names(found: list[dict]) -> list[str]:
    return [v["verdict"] for v in found]


def first_last_ratio(run_dir) -> float:
    row = RunDir(run_dir).read_metrics()[-1]
    return row["grad_norm/hidden1"] / row["grad_norm/hidden20"]


def test_vanishing_preset_is_diagnosed_and_he_elu_is_not(tmp_path):
    from dnnlab.api import compose

    sigmoid = train(compose(DEEP), run_dir=tmp_path / "sigmoid")
    he_elu = train(compose([*DEEP, "initializer=he_normal", "activation=elu"]), run_dir=tmp_path / "he_elu")
    assert first_last_ratio(tmp_path / "sigmoid") < VANISHING_RATIO == 1e-2
    assert first_last_ratio(tmp_path / "he_elu") > VANISHING_RATIO
    vanishing = next(v for v in sigmoid["health"] if v["verdict"] == "vanishing_gradients")
    assert vanishing["layer"] == "hidden1" and vanishing["epoch"] == 1
    assert "grad_norm/hidden1" in vanishing["evidence"] and "grad_norm/hidden20" in vanishing["evidence"]
    assert "vanishing_gradients" not in names(he_elu["health"])
    # summary.json holds the same verdicts, and the end-of-run table prints them
    assert json.loads((tmp_path / "sigmoid" / "summary.json").read_text())["health"] == sigmoid["health"]
    out = Console(record=True, width=200)
    out.print(results_table(sigmoid))
    assert "vanishing_gradients" in out.export_text()


def test_relus_driven_to_die_are_diagnosed(tiny_cfg, tmp_path):
    summary = train(tiny_cfg("initializer.bias=-10"), run_dir=tmp_path)
    dying = next(v for v in summary["health"] if v["verdict"] == "dying_relu")
    assert dying["epoch"] == 1 and "dead_frac/" in dying["evidence"] and "1.00" in dying["evidence"]
    assert RunDir(tmp_path).read_metrics()[0]["dead_frac/hidden1"] == 1.0


def test_a_healthy_run_has_no_verdicts(tiny_cfg, tmp_path):
    assert train(tiny_cfg("trainer.epochs=2"), run_dir=tmp_path)["health"] == []


def test_divergence_is_diagnosed(tiny_cfg, tmp_path):
    summary = train(tiny_cfg("optimizer=sgd", "optimizer.lr=1e6"), run_dir=tmp_path)
    assert summary["status"] == "diverged"
    assert names(summary["health"]) == ["divergence"]  # no unit statistics of NaN weights


def rows(val_loss, train_loss, **extra):
    return [{"epoch": i + 1, "val_loss": v, "train_loss": t, **extra} for i, (v, t) in enumerate(zip(val_loss, train_loss))]


def test_overfitting_needs_three_epochs_of_rising_validation_and_falling_training_loss():
    falling = [1.0, 0.8, 0.6, 0.4, 0.3]
    found = verdicts(rows([0.9, 0.7, 0.75, 0.8, 0.85], falling))
    assert names(found) == ["overfitting"]
    assert found[0]["epoch"] == 5 and "0.7 → 0.85" in found[0]["evidence"] and "epochs 2–5" in found[0]["evidence"]
    assert verdicts(rows([0.9, 0.7, 0.75, 0.8, 0.78], falling)) == []  # only two rising epochs
    assert verdicts(rows([0.9, 0.7, 0.75, 0.8, 0.85], [1.0, 0.8, 0.9, 1.0, 1.1])) == []  # both rising


def test_exploding_gradients_from_the_ratio_or_a_non_finite_norm():
    grads = {"grad_norm/hidden1": 500.0, "grad_norm/hidden2": 3.0, "grad_norm/output": 1.0}
    found = verdicts(rows([1.0], [1.0], **grads))
    assert names(found) == ["exploding_gradients"] and "167 ×" in found[0]["evidence"]
    overflow = verdicts(rows([1.0], [1.0], **{**grads, "grad_norm/hidden1": None}))
    assert names(overflow) == ["exploding_gradients"] and "not finite" in overflow[0]["evidence"]


@pytest.mark.parametrize("key, name", [("dead_frac", "dying_relu"), ("sat_frac", "saturation")])
def test_unit_verdicts_name_the_worst_layer_and_the_threshold(key, name):
    found = verdicts(rows([1.0, 1.0], [1.0, 1.0], **{f"{key}/hidden1": 0.2, f"{key}/hidden2": 0.7, f"{key}/hidden3": 0.6}))
    assert names(found) == [name]
    assert found[0]["layer"] == "hidden2" and "0.70" in found[0]["evidence"] and "2 of 3" in found[0]["evidence"]
    assert verdicts(rows([1.0], [1.0], **{f"{key}/hidden1": 0.49})) == []


# --- not learning, and a non-finite optimized loss (issue 11 item 11) ------------------------------
@pytest.mark.parametrize("stuck", ["optimizer.clip_norm=1e-12", "optimizer.lr=1e-320"])
def test_a_run_whose_weights_do_not_move_is_not_learning(tiny_cfg, tmp_path, stuck):
    summary = train(tiny_cfg("trainer.epochs=3", stuck), run_dir=tmp_path)
    assert summary["status"] == "completed"
    found = next(v for v in summary["health"] if v["verdict"] == "not_learning")
    assert found["epoch"] == 3 and "train_loss" in found["evidence"] and "1%" in found["evidence"]
    # An old run (no chance_acc, no verdicts in its summary) gets it in `dnnlab report` too.
    from dnnlab.commands.report.folders import load_run

    old = {k: v for k, v in summary.items() if k not in ("health", "chance_acc")}
    (tmp_path / "summary.json").write_text(json.dumps(old))
    assert "not_learning" in names(load_run(tmp_path).health)


def test_an_infinite_penalty_is_diagnosed_though_train_loss_is_finite(tiny_cfg, tmp_path):
    summary = train(tiny_cfg("trainer.epochs=3", "regularization=[l2]", "regularization.l2.weight=1e38"), run_dir=tmp_path)
    metrics = RunDir(tmp_path).read_metrics()
    assert all(row["train_loss"] < 10 for row in metrics)  # the data loss alone looks fine
    assert metrics[0]["optimized_loss_nonfinite_steps"] == metrics[0]["step"]  # every step's optimized loss was inf
    found = next(v for v in summary["health"] if v["verdict"] == "non_finite_optimized_loss")
    assert found["epoch"] == 1 and "data loss + penalties" in found["evidence"]
    assert "not_learning" in names(summary["health"])  # the penalty keeps it at chance
    healthy = train(tiny_cfg("trainer.epochs=3", "regularization=[l2]"), run_dir=tmp_path / "healthy")
    assert healthy["health"] == [] and RunDir(tmp_path / "healthy").read_metrics()[0]["optimized_loss_nonfinite_steps"] == 0


def test_a_diverged_run_with_a_penalty_ends_diverged(tiny_cfg, tmp_path):
    """Its rows hold null train_loss (NaN) beside the counted non-finite steps: the verdict is divergence."""
    summary = train(tiny_cfg("optimizer=sgd", "optimizer.lr=1e30", "regularization=[l2]"), run_dir=tmp_path)
    assert summary["status"] == "diverged"
    assert names(summary["health"]) == ["divergence"]


def test_not_learning_needs_three_flat_epochs_or_chance_accuracy():
    flat = [2.3, 2.29, 2.295]
    found = verdicts(rows([2.3] * 3, flat, val_acc=0.9))
    assert names(found) == ["not_learning"] and "lowest 2.29" in found[0]["evidence"]
    assert verdicts(rows([2.3] * 2, flat[:2])) == []  # two epochs say nothing
    falling, at_chance = [2.3, 2.0, 1.8], [{"val_acc": a} for a in (0.13, 0.14, 0.12)]
    chance_rows = [{**r, **a} for r, a in zip(rows([2.3] * 3, falling), at_chance)]
    found = verdicts(chance_rows, chance=0.1)
    assert names(found) == ["not_learning"] and "val_acc at most 0.140" in found[0]["evidence"]
    assert "1 in 10 classes" in found[0]["evidence"]
    assert verdicts(chance_rows) == []  # without the chance level only the loss rule applies
    for accuracies in ((0.3, 0.5, 0.7), (0.13, 0.13, 0.146)):  # learning; a slow start
        learning = [{**r, "val_acc": a} for r, a in zip(rows([2.3] * 3, falling), accuracies)]
        assert verdicts(learning, chance=0.1) == []
