"""StackedModel: K dnnlab MLPs as one batched model, and back to K solo modules exactly."""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.stacked import BATCH, CLASSES, FEATURES, assert_same_state, dataset, members, run_both
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import dnnlab.conf
from dnnlab.engine.stacked.layers import StackedDropout
from dnnlab.engine.stacked.model import CannotStack, stack_models
from dnnlab.models import cnn, mlp
from dnnlab.models import weights as solo_weights

pytestmark = pytest.mark.filterwarnings("ignore:grad and param do not obey the gradient layout contract")
K = 3
ACTIVATIONS = {p.stem: OmegaConf.load(p).module for p in sorted((Path(dnnlab.conf.CONF_DIR) / "activation").glob("*.yaml"))}
RANDOM_IN_TRAINING = {"rrelu"}


def activation(name: str):
    return lambda: instantiate(ACTIVATIONS[name])


def adam(i: int, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-2 * (i + 1))


def each_member(models: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """(K, B, C) outputs of the solo members on their own batches x[k]."""
    return torch.stack([m(x[k]) for k, m in enumerate(models)])


def test_every_dnnlab_activation_is_covered():
    assert set(ACTIVATIONS) >= {"relu", "leaky_relu", "elu", "selu", "gelu", "silu", "sigmoid", "tanh", "rrelu", "prelu"}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("norm", [None, "batchnorm", "batchnorm_after", "layernorm"])
def test_forward_equals_each_member(name, norm):
    models = members(K, activation(name), norm)
    stacked = stack_models(copy.deepcopy(models))
    x = dataset()[0][: K * BATCH].view(K, BATCH, FEATURES)
    for train in ([False] if name in RANDOM_IN_TRAINING else [True, False]):
        stacked.train(train)
        for m in models:
            m.train(train)
        torch.testing.assert_close(stacked(x), each_member(models, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(set(ACTIVATIONS) - RANDOM_IN_TRAINING))
def test_training_with_each_activation_matches_solo(name):
    pair = run_both(members(K, activation(name)), adam)
    torch.testing.assert_close(torch.stack(pair.losses), torch.stack(pair.solo_losses), rtol=1e-5, atol=1e-6)
    assert_same_state(pair.stacked, pair.models, pair.solo)


@pytest.mark.parametrize("norm", ["batchnorm", "batchnorm_after", "layernorm"])
@pytest.mark.parametrize("name", ["relu", "prelu"])
def test_training_with_normalization_matches_solo(norm, name):
    """Per-member batch statistics, running mean/var and num_batches_tracked, per-member affine parameters."""
    pair = run_both(members(K, activation(name), norm), adam)
    torch.testing.assert_close(torch.stack(pair.losses), torch.stack(pair.solo_losses), rtol=1e-5, atol=1e-6)
    assert_same_state(pair.stacked, pair.models, pair.solo)
    if norm != "layernorm":
        assert pair.models[0].hidden1.norm.num_batches_tracked.item() == 5


def test_prelu_weight_is_stacked_per_member():
    models = members(K, activation("prelu"))
    for k, m in enumerate(models):
        m.hidden1.act.weight.data.fill_(0.1 * k)
    stacked = stack_models(models)
    assert stacked.hidden1.act.weight.shape == (K, 1)
    assert stacked.hidden1.act.weight[:, 0].tolist() == pytest.approx([0.0, 0.1, 0.2])


@pytest.mark.parametrize("factories", [
    [functools.partial(nn.LeakyReLU, s) for s in (0.01, 0.1, 0.3)],
    [functools.partial(nn.ELU, a) for a in (0.5, 1.0, 2.0)],
    [functools.partial(nn.RReLU, lo, up) for lo, up in ((0.1, 0.2), (0.125, 0.333), (0.0, 0.5))],
])
def test_activation_settings_may_differ_per_member(factories):
    models = members(K, factories)
    stacked = stack_models(copy.deepcopy(models)).eval()
    x = dataset()[0][: K * BATCH].view(K, BATCH, FEATURES)
    torch.testing.assert_close(stacked(x), each_member([m.eval() for m in models], x), rtol=1e-5, atol=1e-6)


def test_rrelu_training_slopes_stay_within_each_members_bounds():
    bounds = [(0.1, 0.2), (0.3, 0.4), (0.0, 0.05)]
    layer = stack_models(members(K, [functools.partial(nn.RReLU, lo, up) for lo, up in bounds])).hidden1.act.train()
    x = -torch.rand(K, 1000, 4) - 0.1
    slopes = layer(x) / x
    for k, (lo, up) in enumerate(bounds):
        assert lo - 1e-6 <= slopes[k].min() < slopes[k].max() <= up + 1e-6


def test_shared_batch_equals_the_batch_given_to_every_member():
    stacked = stack_models(members(K, norm="batchnorm")).eval()
    x = dataset()[0][:BATCH]
    torch.testing.assert_close(stacked(x), stacked(x.expand(K, BATCH, FEATURES)), rtol=0, atol=0)
    assert stacked(x).shape == (K, BATCH, CLASSES)


@pytest.mark.parametrize("alpha", [False, True])
def test_dropout_rate_per_member(alpha):
    """Eval: the input unchanged. Training: member k keeps a fraction 1-p_k, its values exactly torch's."""
    rates = [0.0, 0.25, 0.5, 1.0]
    layer = StackedDropout(rates, alpha=alpha, like=torch.zeros(()))
    x = torch.full((len(rates), 4000, 8), 0.7)
    assert torch.equal(layer.eval()(x), x)
    out = layer.train()(x)
    reference = F.alpha_dropout if alpha else F.dropout
    for k, p in enumerate(rates):
        solo = reference(x[k], p, training=True)
        values, solo_values = out[k].unique(), solo.unique()
        if p in (0.0, 1.0):  # torch: the input itself, or zeros
            assert torch.equal(out[k], solo)
            continue
        assert torch.equal(values, solo_values)  # the dropped value and the scaled kept value, bit for bit
        kept = (out[k] != solo_values.min()).float().mean().item()
        assert abs(kept - (1 - p)) < 0.02


def test_dropout_members_in_eval_mode_equal_solo():
    models = members(K, dropout=[functools.partial(nn.Dropout, p) for p in (0.1, 0.3, 0.5)])
    stacked = stack_models(copy.deepcopy(models)).eval()
    x = dataset()[0][: K * BATCH].view(K, BATCH, FEATURES)
    torch.testing.assert_close(stacked(x), each_member([m.eval() for m in models], x), rtol=1e-5, atol=1e-6)


def test_write_back_and_read_from_round_trip():
    models = members(K, norm="batchnorm")
    stacked = stack_models(models)
    with torch.no_grad():
        stacked.flat.add_(1.0)
        stacked.hidden1.norm.running_mean.add_(2.0)
    stacked.write_back(models)
    for k, m in enumerate(models):
        assert torch.equal(m.hidden1.linear.weight, stacked.hidden1.linear.weight[k].detach())
        assert torch.equal(m.hidden1.norm.running_mean, stacked.hidden1.norm.running_mean[k])
    with torch.no_grad():
        models[1].output.bias.fill_(5.0)
        models[1].hidden2.norm.num_batches_tracked.fill_(7)
    stacked.read_from(models)
    assert torch.equal(stacked.output.bias[1].detach(), torch.full((CLASSES,), 5.0))
    assert stacked.hidden2.norm.num_batches_tracked.tolist() == [0, 7, 0]


def test_keep_shrinks_the_stack_to_the_members_left():
    models = members(4, norm="batchnorm_after")
    stacked = stack_models(copy.deepcopy(models)).eval()
    stacked.keep([3, 1])
    x = dataset()[0][: 2 * BATCH].view(2, BATCH, FEATURES)
    assert stacked.members == 2 and stacked.flat.shape[0] == 2
    torch.testing.assert_close(stacked(x), each_member([models[3].eval(), models[1].eval()], x), rtol=1e-5, atol=1e-6)
    stacked.write_back([models[0], models[2]])  # the kept members' values, into any two solo modules
    assert torch.equal(models[0].output.weight, models[3].output.weight)


def test_parameters_are_leaves_named_as_the_members():
    models = members(K, norm="layernorm")
    stacked = stack_models(models)
    assert stacked.member_names == [name for name, _ in models[0].named_parameters()]
    assert all(p.is_leaf and p.requires_grad for p in stacked.stacked_parameters())
    assert [tuple(p.shape) for p in stacked.stacked_parameters()] == [(K, *p.shape) for p in models[0].parameters()]


@pytest.mark.parametrize("hidden_only", [False, True])
def test_weight_tensors_mirror_dnnlab_models_weights(hidden_only):
    models = members(K, norm="batchnorm")
    stacked = stack_models(models)
    weights = stacked.weight_tensors(hidden_only)
    for k, m in enumerate(models):
        solo = solo_weights(m, hidden_only)
        assert len(weights) == len(solo) == (2 if hidden_only else 3)
        for w, s in zip(weights, solo):
            assert torch.equal(w[k].detach(), s.detach())


def test_cannot_stack_a_cnn_names_the_layer():
    models = [cnn((1, 8, 8), CLASSES, nn.ReLU, depth=1, width=4, dense=8) for _ in range(2)]
    with pytest.raises(CannotStack, match=r"conv1\.conv \(Conv2d\) has no stacked form yet .*model=mlp"):
        stack_models(models)


def test_cannot_stack_different_architectures_or_settings():
    wide = members(1)[0]
    wide.output = nn.Linear(16, CLASSES + 1)
    with pytest.raises(CannotStack, match="output: the members' parameter shapes differ"):
        stack_models([members(1)[0], wide])
    odd = members(2, norm="batchnorm")
    odd[1].hidden1.norm.eps = 1e-3
    with pytest.raises(CannotStack, match="hidden1.norm: the members' batch-norm eps differ"):
        stack_models(odd)
    frozen = members(2)
    frozen[0].hidden1.linear.weight.requires_grad_(False)
    with pytest.raises(CannotStack, match="frozen layers"):
        stack_models(frozen)
    cumulative = members(2, norm="batchnorm")
    for m in cumulative:
        m.hidden1.norm.momentum = None
    with pytest.raises(CannotStack, match="momentum=None"):
        stack_models(cumulative)


def width_list_members(widths: list[int], k: int = 2) -> list[nn.Sequential]:
    """K dnnlab MLPs with one hidden width per layer, member i built after manual_seed(i)."""
    models = []
    for i in range(k):
        torch.manual_seed(i)
        models.append(mlp((FEATURES,), CLASSES, nn.ReLU, depth=len(widths), width=widths))
    return models


def test_members_with_one_width_per_layer_stack_and_train_as_solo():
    pair = run_both(width_list_members([16, 8]), adam)
    assert tuple(pair.stacked.hidden2.linear.weight.shape) == (2, 8, 16)
    assert_same_state(pair.stacked, pair.models, pair.solo)


def test_members_with_different_width_lists_do_not_stack():
    with pytest.raises(CannotStack, match="hidden2.linear: the members' parameter shapes differ"):
        stack_models([*width_list_members([16, 8], 1), *width_list_members([16, 4], 1)])


def test_cannot_stack_activation_settings_without_a_per_member_form():
    with pytest.raises(CannotStack, match="hidden1.act: the members' GELU settings differ"):
        stack_models(members(2, [functools.partial(nn.GELU, approximate=a) for a in ("none", "tanh")]))


def test_gradients_replaced_by_someone_else_return_to_flat_grad():
    """A caller that sets .grad to None (torch's default zero_grad) still gets every member's gradient stepped."""
    x, y = dataset()
    idx = torch.arange(K * BATCH).view(K, BATCH)
    results = []
    for replace in (False, True):
        stacked = stack_models(members(K))
        stacked.zero_grad()
        if replace:
            for p in stacked.stacked_parameters():
                p.grad = None
        F.cross_entropy(stacked(x[idx]).flatten(0, 1), y[idx].flatten()).backward()
        stacked.attach_grads()
        results.append(stacked.flat_grad.clone())
        assert all(p.grad is view for p, view in zip(stacked.stacked_parameters(), stacked.grad_views))
    assert torch.equal(*results) and results[0].abs().sum() > 0
