"""Tests for dnnlab.commands.evaluate: `dnnlab eval RUN [--mc-dropout N] [--seed S]`."""
from __future__ import annotations

import json

import pytest
import torch

from dnnlab.api import compose, train
from dnnlab.cli import main
from dnnlab.errors import UserError
from dnnlab.commands.evaluate import evaluate, load_run, mc_dropout_probs, outputs
from helpers.configs import tiny

TINY = tiny("trainer.diagnostics=false", "model.width=32", "trainer.epochs=3", without=["model.depth"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run with dropout and batch norm."""
    path = tmp_path_factory.mktemp("evaluate") / "run"
    summary = train(compose(TINY + ["regularization=[dropout]", "normalization=batchnorm"]), run_dir=path)
    return path, summary


def test_deterministic_eval_reproduces_the_run_summary(run):
    path, summary = run
    result = evaluate(load_run(path, "last", "cpu"))  # the summary's test metrics are of the final weights
    assert result["deterministic"]["acc"] == pytest.approx(summary["test_acc"], abs=1e-6)
    assert result["deterministic"]["loss"] == pytest.approx(summary["test_loss"], rel=1e-5)


def test_mc_dropout_differs_from_deterministic_and_repeats_with_a_seed(run):
    loaded = load_run(run[0], device="cpu")
    x = loaded.data.test_x
    deterministic = outputs(loaded.model, x).softmax(1)
    first = mc_dropout_probs(loaded.model, x, passes=8, seed=3)
    assert torch.equal(first, mc_dropout_probs(loaded.model, x, passes=8, seed=3))
    assert not torch.allclose(first, mc_dropout_probs(loaded.model, x, passes=8, seed=4))
    assert not torch.allclose(first, deterministic, atol=1e-3)
    assert torch.allclose(first.sum(1), torch.ones(len(x)))
    # Afterwards the model is back in eval mode: deterministic again.
    assert not loaded.model.training and torch.equal(outputs(loaded.model, x).softmax(1), deterministic)


def test_mc_dropout_keeps_batch_norm_statistics_frozen(run):
    loaded = load_run(run[0], device="cpu")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    modes: dict[str, list[bool]] = {"bn": [], "dropout": []}
    for m in loaded.model.modules():
        kind = "bn" if isinstance(m, torch.nn.BatchNorm1d) else "dropout" if isinstance(m, torch.nn.Dropout) else None
        if kind:
            m.register_forward_hook(lambda mod, i, o, kind=kind: modes[kind].append(mod.training))
    mc_dropout_probs(loaded.model, loaded.data.test_x, passes=2, seed=0)
    assert modes["bn"] == [False] * 6 and modes["dropout"] == [True] * 6  # 3 blocks × 2 passes
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in before.items())


def test_cli_writes_eval_json(run, capsys):
    path, _ = run
    assert main(["eval", str(path), "--mc-dropout", "10", "--seed", "1"]) == 0
    result = json.load(open(path / "eval.json"))
    assert result["mc_dropout"]["passes"] == 10 and result["mc_dropout"]["seed"] == 1
    for method in ("deterministic", "mc_dropout"):
        assert 0 <= result[method]["acc"] <= 1 and result[method]["mean_entropy"] > 0
    assert 0 < result["mc_dropout"]["disagreement"] < 1
    assert "mc dropout" in capsys.readouterr().err


def test_mc_dropout_needs_dropout(tmp_path):
    train(compose(TINY + ["trainer.epochs=1"]), run_dir=tmp_path / "plain")
    with pytest.raises(UserError, match="no dropout layer"):
        evaluate(load_run(tmp_path / "plain", device="cpu"), mc_passes=5)
    assert main(["eval", str(tmp_path / "nothing")]) == 2
