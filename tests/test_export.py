"""Tests for dnnlab.commands.export: batch-norm folding (exact to 1e-5), latency, reduced precision, the CLI."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dnnlab.api import compose, train
from dnnlab.cli import main
from dnnlab.commands.evaluate import load_run, outputs
from dnnlab.commands.export import fold_bn
from helpers.configs import tiny

TINY = tiny("trainer.diagnostics=false", "data.limit=200", "trainer.epochs=2", without=["model.depth", "model.width"])
MODELS = {"mlp": ["model.depth=3", "model.width=16", "regularization=[dropout]"],
          "cnn": ["model=cnn", "model.width=4", "model.dense=16"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    made = {}
    for model, overrides in MODELS.items():
        for norm in ("batchnorm", "batchnorm_after"):
            made[model, norm] = root / f"{model}-{norm}"
            train(compose(TINY + overrides + [f"normalization={norm}"]), run_dir=made[model, norm])
    return made


def scramble_batch_norms(model: nn.Module) -> None:
    """Statistics and affine parameters far from the identity (negative scales too), so folding is really tested."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                sign = torch.randint(0, 2, (n,), generator=gen) * 2 - 1
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(sign * (torch.rand(n, generator=gen) + 0.5))
                m.bias.copy_(torch.randn(n, generator=gen) * 0.5)


@pytest.mark.parametrize("model, norm, kept", [
    ("mlp", "batchnorm", []), ("mlp", "batchnorm_after", []),
    ("cnn", "batchnorm", []), ("cnn", "batchnorm_after", ["conv1.norm", "conv2.norm"]),
])
def test_folded_model_matches_the_original(runs, model, norm, kept):
    loaded = load_run(runs[model, norm], device="cpu")
    scramble_batch_norms(loaded.model)
    folded, done, not_done = fold_bn(loaded.model)
    x = loaded.data.test_x
    assert (outputs(folded, x) - outputs(loaded.model, x)).abs().max().item() <= 1e-5
    assert [k["layer"] for k in not_done] == kept
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in loaded.model.modules())
    assert len(done) == n_bn - len(kept)
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules()) == len(kept)
    # batchnorm_after folds into the next layer: the last hidden block's BN lands in the output layer.
    if norm == "batchnorm_after":
        assert any(d.endswith("output (the next layer)") for d in done)


def test_cli_export_json_files_and_precision(runs, capsys):
    path = runs["mlp", "batchnorm"]
    assert main(["export", str(path), "--fold-bn", "--precision", "bf16", "--repeats", "5"]) == 0
    result = json.load(open(path / "export.json"))
    assert result["max_abs_diff"] <= 1e-5 and result["within_tolerance"] and len(result["folded"]) == 3
    for which in ("original", "exported"):
        assert set(result["latency_ms"][which]) == {"batch_1", "batch_256"}
        assert all(v > 0 for v in result["latency_ms"][which].values())
    low = result["precision"]
    assert low["dtype"] == "bfloat16" and low["acc_change"] == pytest.approx(low["test_acc"] - low["test_acc_fp32"])
    assert 0 < low["max_abs_diff"] < 1  # bf16 keeps ~3 significant digits
    program = torch.export.load(result["files"]["program"]).module()
    loaded = load_run(path, device="cpu")
    folded = fold_bn(loaded.model)[0]
    x = loaded.data.test_x[:7]
    assert torch.allclose(program(x), folded(x), atol=1e-6)
    state = torch.load(result["files"]["state_dict"], weights_only=True)
    assert "hidden1.norm.running_mean" not in state and "hidden1.linear.bias" in state
    printed = " ".join(capsys.readouterr().err.split())
    assert "(3 batch norms folded)" in printed and "max |Δ|" in printed
