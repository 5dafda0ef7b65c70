import subprocess
import sys

from dnnlab.config.catalog import describe, groups, main, options

DESIGN_GROUPS = {
    "initializer": {"default", "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal", "normal", "uniform", "orthogonal"},
    "activation": {"sigmoid", "tanh", "relu", "leaky_relu", "rrelu", "prelu", "elu", "selu", "gelu", "silu"},
    "normalization": {"none", "batchnorm", "batchnorm_after", "layernorm"},
    "regularization": {"l1", "l2", "dropout", "alpha_dropout", "max_norm", "early_stopping"},
    "optimizer": {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamax", "nadam", "adamw"},
    "schedule": {"none", "power", "exponential", "piecewise", "performance", "1cycle", "cosine"},
    "data": {"digits", "mnist1d", "mnist", "fashion_mnist", "cifar10", "synthetic"},
    "model": {"mlp", "cnn"},
}


def test_every_design_option_exists_with_a_description():
    for group, expected in DESIGN_GROUPS.items():
        found = options(group)
        assert expected <= set(found), (group, expected - set(found))
        assert all(len(text) > 10 for text in found.values()), group


def test_description_skips_package_header(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("# @package regularization.x\n# What it does\nk: 1\n")
    assert describe(path) == "What it does"


def test_list_prints_groups_and_rejects_unknown(capsys):
    assert main(["optimizer"]) == 0
    out = capsys.readouterr().out
    assert "nadam" in out and "Nesterov" in out
    assert "experiment" in groups()
    result = subprocess.run([sys.executable, "-m", "dnnlab.cli", "list", "optimiser"], capture_output=True, text=True)
    assert result.returncode == 2 and "valid: " in result.stderr and "optimizer" in result.stderr
