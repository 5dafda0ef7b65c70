"""Tests for dnnlab.transfer: model.pretrained / freeze / unfreeze_at / unfrozen_lr_scale."""
from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from dnnlab.api import build_trainer, compose, train
from dnnlab.errors import UserError
from dnnlab.engine.hooks import Hook
from dnnlab.runs.checkpoints import load_checkpoint
from dnnlab.runs.rundir import RunDir
from dnnlab.transfer import Unfreeze
from helpers.configs import tiny

FAST = ["trainer.progress=false", "trainer.diagnostics=false"]
NET = ["model.depth=2", "model.width=64"]
# The guides' scenario: learn digits 0–4 with all their labels, then 5–9 from 10 % of theirs.
SOURCE = ["data.classes=[0,1,2,3,4]", "trainer.epochs=20"]
TARGET = ["data.classes=[5,6,7,8,9]", "data.train_fraction=0.1", "trainer.epochs=5",
          "trainer.batch_size=8", "optimizer.lr=0.001"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """An MLP trained on digits 0–4."""
    path = tmp_path_factory.mktemp("transfer") / "source"
    summary = train(compose(FAST + NET + SOURCE), run_dir=path)
    assert summary["test_acc"] > 0.9
    return str(path)


@pytest.mark.parametrize("seed", [0, 1])
def test_transfer_beats_scratch_on_few_labels(source, tmp_path, seed):
    """Same seed, same budget, same 65 labels of digits 5–9: the reused layers win."""
    target = FAST + NET + TARGET + [f"seed={seed}"]
    scratch = train(compose(target), run_dir=tmp_path / "scratch")
    reused = train(compose(target + [f"model.pretrained={source}"]), run_dir=tmp_path / "reused")
    assert reused["test_acc"] > scratch["test_acc"] + 0.01, (scratch["test_acc"], reused["test_acc"])


def test_output_layer_reused_only_for_the_same_labels(source, tmp_path):
    weights = load_checkpoint(f"{source}/checkpoints/best.pt")["model"]
    for classes, same in (("[0,1,2,3,4]", True), ("[5,6,7,8,9]", False)):
        cfg = compose(FAST + NET + [f"data.classes={classes}", "data.limit=50", "trainer.epochs=1",
                                    f"model.pretrained={source}"])
        model = build_trainer(cfg, RunDir(tmp_path / classes[1])).model
        assert torch.equal(model.hidden1.linear.weight, weights["hidden1.linear.weight"])
        assert torch.equal(model.hidden2.linear.weight, weights["hidden2.linear.weight"])
        # Digits 5–9 have 5 classes too, so the shape fits: the new head is made because the labels differ.
        assert torch.equal(model.output.weight, weights["output.weight"]) is same
        if not same:
            assert not model.output.weight.any() and not model.output.bias.any()


class WeightLog(Hook):
    """Copies of every block's state after each epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, dict[str, torch.Tensor]]] = []

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        self.epochs.append({name: {k: v.clone() for k, v in block.state_dict().items()}
                            for name, block in trainer.model.named_children()})


def fit_with_log(overrides: list[str], path) -> WeightLog:
    log = WeightLog()
    trainer = build_trainer(compose(overrides), RunDir(path), [log])
    trainer.fit()
    return log


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_blocks_stay_bit_identical(tmp_path):
    """Weights and batch-norm statistics of frozen blocks do not move; the rest trains."""
    net = ["normalization=batchnorm", "data.limit=200"]
    train(compose(tiny(*FAST, *net, "trainer.epochs=2")), run_dir=tmp_path / "src")
    saved = load_checkpoint(tmp_path / "src" / "checkpoints" / "best.pt")["model"]
    log = fit_with_log(tiny("trainer.epochs=3", "model.freeze=1", f"model.pretrained={tmp_path / 'src'}", *net),
                       tmp_path / "dst")
    hidden1 = {k.removeprefix("hidden1."): v for k, v in saved.items() if k.startswith("hidden1.")}
    assert all(same(epoch["hidden1"], hidden1) for epoch in log.epochs)
    assert not same(log.epochs[-1]["hidden2"], {k.removeprefix("hidden2."): v for k, v in saved.items() if k.startswith("hidden2.")})


def test_unfreeze_at_trains_the_blocks_after_epoch_e(tmp_path):
    log = fit_with_log(tiny(*FAST, "trainer.epochs=4", "data.limit=200", "model.freeze=2", "model.unfreeze_at=2"), tmp_path)
    first = log.epochs[0]
    assert same(log.epochs[1]["hidden1"], first["hidden1"]) and same(log.epochs[1]["hidden2"], first["hidden2"])
    assert not same(log.epochs[2]["hidden1"], first["hidden1"])
    assert not same(log.epochs[3]["hidden2"], log.epochs[2]["hidden2"])


def test_unfrozen_lr_scale_applies_to_the_unfrozen_group_only():
    kept, unfrozen = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.SGD([{"params": [kept]}, {"params": [unfrozen]}], lr=0.1)

    class Stub:
        epoch = 0
        model = torch.nn.Sequential()
    Stub.optimizer = optimizer
    Unfreeze(blocks=0, epoch=0, lr_scale=0.25).on_epoch_start(Stub)
    kept.grad, unfrozen.grad = torch.ones(3), torch.ones(3)
    optimizer.step()
    assert torch.allclose(kept, torch.full((3,), -0.1))
    assert torch.allclose(unfrozen, torch.full((3,), -0.025))
    assert optimizer.param_groups[1]["lr"] == 0.1  # the schedule keeps seeing its own rate


@pytest.mark.parametrize("override, words", [
    (["model.freeze=3"], "model.freeze=3"),
    (["model.unfreeze_at=2"], "model.unfreeze_at=2"),
    (["model.pretrained=/no/such/run"], "model.pretrained=/no/such/run"),
])
def test_bad_settings_name_the_key(tmp_path, override, words):
    cfg = compose(tiny(*FAST, "model.width=8", "data.limit=50", *override))
    with pytest.raises(UserError, match=words.replace(".", r"\.")):
        train(cfg, run_dir=tmp_path / "run")


@pytest.fixture(scope="module")
def narrow(tmp_path_factory) -> str:
    """A tiny 2×16 MLP run."""
    path = tmp_path_factory.mktemp("narrow") / "run"
    train(compose(tiny(*FAST, "data.limit=100")), run_dir=path)
    return str(path)


def test_a_run_of_another_width_is_refused_not_loaded_as_its_bias(narrow, tmp_path):
    """Issue 11 item 10c: only output.bias fit; that is not a reuse."""
    cfg = compose(tiny(*FAST, "model.width=32", "data.limit=100", f"model.pretrained={narrow}"))
    with pytest.raises(UserError, match=r"no layer below the output fits.*hidden1\.linear: shape \(32, 64\) here, "
                                        r"\(16, 64\) there.*model\.width"):
        train(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_layers_that_do_not_fit_are_named_on_the_terminal(narrow, tmp_path, caplog):
    logger = logging.getLogger("dnnlab")
    logger.addHandler(caplog.handler)  # the dnnlab logger does not propagate
    cfg = compose(tiny(*FAST, "model.depth=3", "data.limit=100", f"model.pretrained={narrow}"))
    try:
        weights = load_checkpoint(f"{narrow}/checkpoints/best.pt")["model"]
        model = build_trainer(cfg, RunDir(tmp_path / "run")).model
        assert torch.equal(model.hidden2.linear.weight, weights["hidden2.linear.weight"])
        warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "pretrained" in r.getMessage())
        assert "reused hidden1.linear, hidden2.linear, output" in warning
        assert "not reused: hidden3.linear (not in the checkpoint)" in warning
    finally:
        logger.removeHandler(caplog.handler)


@pytest.mark.parametrize("name", ["mlp", "cnn", "autoencoder"])
def test_every_model_option_composes_the_transfer_keys_written_once_in_yaml(name):
    """model/_transfer.yaml holds the transfer keys; each model option lists it, and the architecture gets none of them."""
    from omegaconf import OmegaConf

    from dnnlab import transfer
    from dnnlab.conf import CONF_DIR

    own = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    assert list(own.defaults) == ["_transfer", "_self_"] and not set(own) & set(transfer.defaults())
    model = compose([f"model={name}"]).model
    assert {k: model[k] for k in transfer.defaults()} == {
        "pretrained": None, "freeze": 0, "unfreeze_at": None, "unfrozen_lr_scale": 1.0}
    assert set(transfer.architecture_config(model)) == set(model) - transfer.training_keys()
    assert "task" in model and "task" not in transfer.architecture_config(model)


def test_the_shared_files_are_not_offered_as_options():
    with pytest.raises(UserError) as error:
        compose(["model=mpl"])
    assert "Valid: autoencoder, cnn, mlp " in str(error.value) and "_transfer" not in str(error.value)
