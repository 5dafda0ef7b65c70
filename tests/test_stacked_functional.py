"""Per-member loss, score, penalties, max-norm and clipping equal dnnlab's solo ones member by member."""
from __future__ import annotations

import copy

import pytest
import torch
from helpers.stacked import BATCH, CLASSES, assert_same_state, members, run_both
from torch import nn

from dnnlab.engine.stacked.functional import (
    stacked_clip_, stacked_correct, stacked_cross_entropy, stacked_l1, stacked_l2, stacked_max_norm_,
)
from dnnlab.engine.stacked.model import stack_models
from dnnlab.engine.trainer import count_correct
from dnnlab.optim import GradClipper
from dnnlab.models import weights
from dnnlab.regularization import L1, L2, MaxNorm

pytestmark = pytest.mark.filterwarnings("ignore:grad and param do not obey the gradient layout contract")
K = 3
INF = float("inf")


def test_loss_and_score_per_member():
    logits = torch.randn(K, BATCH, CLASSES)
    y = torch.randint(0, CLASSES, (K, BATCH))
    losses = stacked_cross_entropy(logits, y)
    assert losses.shape == (K,)
    for k in range(K):
        torch.testing.assert_close(losses[k], nn.CrossEntropyLoss()(logits[k], y[k]))
        assert stacked_correct(logits, y)[k] == count_correct(logits[k], y[k])
    shared = y[0]  # one label vector for all members (a shared validation batch)
    torch.testing.assert_close(stacked_cross_entropy(logits, shared), stacked_cross_entropy(logits, shared.expand(K, BATCH)))
    assert torch.equal(stacked_correct(logits, shared), stacked_correct(logits, shared.expand(K, BATCH)))


@pytest.mark.parametrize("stacked_penalty, solo", [(stacked_l1, L1), (stacked_l2, L2)])
def test_penalties_per_member(stacked_penalty, solo):
    models = members(K)
    stacked = stack_models(models)
    lam = torch.tensor([1e-3, 0.0, 0.5])
    values = stacked_penalty(stacked.weight_tensors(), lam)
    for k, m in enumerate(models):
        expected = solo(lam[k].item()).penalty(weights(m)) if lam[k] else torch.tensor(0.0)
        torch.testing.assert_close(values[k], expected, rtol=1e-6, atol=0)


def test_max_norm_per_member_is_torch_renorm():
    models = members(K)
    with torch.no_grad():
        for m in models:
            m.hidden1.linear.weight.mul_(5)  # some rows above the limit
    solo = copy.deepcopy(models)
    stacked = stack_models(models)
    r = torch.tensor([0.5, INF, 2.0])
    stacked_max_norm_(stacked.weight_tensors(hidden_only=True), r)
    for k, m in enumerate(solo):
        if r[k] != INF:
            MaxNorm(r[k].item()).constrain(m)
    stacked.write_back(models)
    for mine, ref in zip(models, solo):
        for a, b in zip(mine.parameters(), ref.parameters()):
            assert torch.equal(a, b)
    assert torch.linalg.vector_norm(models[0].hidden1.linear.weight, dim=1).max() <= 0.5 + 1e-6


@pytest.mark.parametrize("clip_value, clip_norm", [
    ([0.01, None, 0.05], None), (None, [0.1, 1.0, None]), ([0.02, 0.5, None], [0.05, None, 0.2]), (None, None),
])
def test_clipping_per_member_is_torch_clipping(clip_value, clip_norm):
    models = members(K)
    solo = copy.deepcopy(models)
    stacked = stack_models(models)
    gen = torch.Generator().manual_seed(0)
    stacked.flat_grad.copy_(torch.randn(stacked.flat_grad.shape, generator=gen))
    for k, m in enumerate(solo):
        for p, sp in zip(m.parameters(), stacked.stacked_parameters()):
            p.grad = sp.grad[k].clone()
        GradClipper(list(m.parameters()), clip_value and clip_value[k], clip_norm and clip_norm[k])()

    def strengths(values):
        return None if values is None else torch.tensor([INF if v is None else v for v in values])

    stacked_clip_(stacked.stacked_parameters(), strengths(clip_value), strengths(clip_norm))
    for k, m in enumerate(solo):
        for p, sp in zip(m.parameters(), stacked.stacked_parameters()):
            torch.testing.assert_close(sp.grad[k], p.grad, rtol=1e-6, atol=1e-9)


SETTINGS = {
    "l1": [dict(l1=1e-3), dict(), dict(l1=1e-2)],
    "l2": [dict(l2=1e-2), dict(l2=1e-3), dict()],
    "max_norm": [dict(max_norm=0.5), dict(max_norm=2.0), dict()],
    "l2+max_norm": [dict(l2=1e-3, max_norm=1.0), dict(max_norm=0.3), dict(l2=1e-2)],
    "clip_value": [dict(clip_value=0.01), dict(), dict(clip_value=0.1)],
    "clip_norm": [dict(clip_norm=0.05), dict(clip_norm=1.0), dict()],
    "all": [dict(l1=1e-4, l2=1e-3, max_norm=1.0, clip_value=0.05, clip_norm=0.1), dict(), dict(clip_norm=0.2, l1=1e-3)],
}


@pytest.mark.parametrize("name", SETTINGS)
def test_training_with_per_member_regularization_matches_solo(name):
    """Each member with its own (or no) penalty, max-norm and clipping trains as dnnlab's Trainer.update trains it."""
    def momentum(i, model):
        return torch.optim.SGD(model.parameters(), lr=0.1 * (i + 1), momentum=0.9)

    pair = run_both(members(K), momentum, settings=SETTINGS[name])
    torch.testing.assert_close(torch.stack(pair.losses), torch.stack(pair.solo_losses), rtol=1e-5, atol=1e-6)
    assert_same_state(pair.stacked, pair.models, pair.solo)
