import pytest
import torch
from torch import nn

from dnnlab.api import build_model, compose
from dnnlab.data import load_data
from dnnlab.errors import ConfigError
from dnnlab.models import mlp


def model_for(*overrides: str) -> nn.Sequential:
    cfg = compose(["data.limit=100", "model.depth=3", "model.width=8", *overrides])
    return build_model(cfg, load_data(cfg.data))


def test_mlp_shape_and_names():
    model = model_for()
    assert [n for n, _ in model.named_children()] == ["flatten", "hidden1", "hidden2", "hidden3", "output"]
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    assert model.hidden1.linear.in_features == 64 and model.hidden3.linear.out_features == 8


def linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {name: tuple(m.weight.shape) for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_mlp_takes_one_width_per_hidden_layer():
    model = model_for("model.depth=2", "model.width=[32,16]")
    assert [n for n, _ in model.named_children()] == ["flatten", "hidden1", "hidden2", "output"]
    assert linear_shapes(model) == {"hidden1.linear": (32, 64), "hidden2.linear": (16, 32), "output": (10, 16)}
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    norms = model_for("model.depth=2", "model.width=[32,16]", "normalization=batchnorm")
    assert (norms.hidden1.norm.num_features, norms.hidden2.norm.num_features) == (32, 16)


def test_a_width_list_must_give_every_hidden_layer_one():
    with pytest.raises(ConfigError) as error:
        mlp((64,), 10, nn.ReLU, depth=3, width=[300, 100])
    assert str(error.value) == ("model.width=[300, 100] lists 2 hidden layers but model.depth=3; set model.depth=2 "
                                "(or give one width for every layer).")


def test_autoencoder_decoder_mirrors_the_width_list():
    ae = model_for("model=autoencoder", "model.depth=2", "model.width=[32,16]", "normalization=batchnorm")
    assert linear_shapes(ae) == {"hidden1.linear": (32, 64), "hidden2.linear": (16, 32),
                                 "decode2.linear": (32, 16), "decode1": (64, 32)}
    assert ae.decode2.norm.num_features == 32
    assert ae(torch.randn(3, 1, 8, 8)).shape == (3, 64)


def test_cnn_refuses_a_width_list():
    with pytest.raises(ConfigError, match=r"model=cnn takes one model.width.*got model.width=\[8, 4\].*model.width=32"):
        model_for("model=cnn", "model.depth=2", "model.width=[8,4]")


def test_batchnorm_before_activation_drops_the_bias():
    block = model_for("normalization=batchnorm").hidden2
    assert [n for n, _ in block.named_children()] == ["linear", "norm", "act"]
    assert block.linear.bias is None and isinstance(block.norm, nn.BatchNorm1d)


def test_batchnorm_after_activation_keeps_the_bias():
    block = model_for("normalization=batchnorm_after").hidden2
    assert [n for n, _ in block.named_children()] == ["linear", "act", "norm"]
    assert block.linear.bias is not None


def test_layernorm_and_none():
    assert isinstance(model_for("normalization=layernorm").hidden1.norm, nn.LayerNorm)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)) for m in model_for().modules())


@pytest.mark.parametrize("activation, cls", [("elu", nn.ELU), ("selu", nn.SELU), ("rrelu", nn.RReLU), ("prelu", nn.PReLU)])
def test_activation_is_the_pytorch_class(activation, cls):
    model = model_for(f"activation={activation}")
    acts = [blk.act for n, blk in model.named_children() if n.startswith("hidden")]
    assert all(isinstance(a, cls) for a in acts) and len({id(a) for a in acts}) == 3  # one instance per layer


def test_cnn_on_images_with_batchnorm():
    model = model_for("model=cnn", "model.depth=2", "model.width=4", "model.dense=16", "normalization=batchnorm")
    assert isinstance(model.conv1.norm, nn.BatchNorm2d) and model.conv1.conv.bias is None
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_cnn_refuses_feature_vectors():
    with pytest.raises(ValueError, match="model=mlp"):
        model_for("model=cnn", "data=synthetic")


def test_anatomy_of_each_architecture():
    from dnnlab import models

    from dnnlab.api import build_regularizers

    cfg = compose(["data.limit=100", "model.depth=3", "model.width=8", "regularization=[dropout]"])
    mlp = build_model(cfg, load_data(cfg.data), build_regularizers(cfg))
    assert list(models.blocks(mlp)) == ["hidden1", "hidden2", "hidden3", "output"]
    assert models.output(mlp) == ("output", mlp.output)
    assert [name for name, _ in models.hidden_blocks(mlp)] == ["hidden1", "hidden2", "hidden3"]
    assert len(models.weights(mlp)) == 4 and len(models.weights(mlp, hidden_only=True)) == 3
    assert len(models.dropouts(mlp)) == 3 and models.batch_norms(mlp) == []
    cnn = model_for("model=cnn", "model.depth=2", "model.width=4", "model.dense=16", "normalization=batchnorm")
    assert list(models.blocks(cnn)) == ["conv1", "conv2", "hidden1", "output"]
    assert [name for name, _ in models.batch_norms(cnn)] == ["conv1.norm", "conv2.norm", "hidden1.norm"]
    ae = model_for("model=autoencoder", "model.depth=2")
    assert models.output(ae)[0] == "decode1"
    assert [(n, e, d) for n, e, d in models.encoder_decoder_pairs(ae)] == [
        ("hidden1", ae.hidden1, ae.decode1), ("hidden2", ae.hidden2, ae.decode2)]
    assert list(models.stem(ae)) == [ae.flatten]
    assert len(models.weights(ae, hidden_only=True)) == 4  # no classifier head: every layer is constrained
    assert [type(m) for _, _, m in models.leaves(mlp)][:3] == [nn.Flatten, nn.Linear, nn.ReLU]
