"""Per-member loss, score, penalties, max-norm and gradient clipping on stacked tensors (leading dimension K).

Each equals its solo counterpart applied to every member: nn.CrossEntropyLoss, dnnlab.engine.trainer.count_correct,
dnnlab.regularization.L1/L2/MaxNorm, torch.nn.utils.clip_grad_value_/clip_grad_norm_. Per-member
strengths are (K,) tensors; a member without the technique gets the value that makes it an exact
no-op (0 for a penalty, +inf for max-norm and clipping). The step backpropagates `losses.sum()`:
members share no parameter, so each gets exactly its own gradient.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from dnnlab.engine.stacked.layers import member_view


def stacked_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(K, B, C) logits and (K, B) or shared (B,) labels → (K,) mean cross entropy per member."""
    k, b, c = logits.shape
    losses = F.cross_entropy(logits.reshape(k * b, c), y.expand(k, b).reshape(k * b), reduction="none")
    return losses.view(k, b).mean(1)


def stacked_correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(K,) number of samples whose arg-max class is the label, per member."""
    return (logits.argmax(-1) == y).sum(1)


def per_member_sum(weights: Sequence[torch.Tensor], fn) -> torch.Tensor:
    """Σ over all weight tensors of fn(w) summed within each member → (K,)."""
    return torch.stack([fn(w).sum(tuple(range(1, w.dim()))) for w in weights]).sum(0)


def stacked_l1(weights: Sequence[torch.Tensor], lam: torch.Tensor) -> torch.Tensor:
    """λ_k·Σ|w| over member k's weights (dnnlab.regularization.L1) → (K,)."""
    return lam * per_member_sum(weights, torch.abs)


def stacked_l2(weights: Sequence[torch.Tensor], lam: torch.Tensor) -> torch.Tensor:
    """λ_k·Σw² over member k's weights (dnnlab.regularization.L2) → (K,)."""
    return lam * per_member_sum(weights, torch.square)


@torch.no_grad()
def stacked_max_norm_(weights: Sequence[torch.Tensor], r: torch.Tensor) -> None:
    """Rescale each member's rows to norm ≤ r_k in place: torch.renorm(w, 2, 0, r_k) (factor r/(norm+1e-7) above r)."""
    for w in weights:
        norm = torch.linalg.vector_norm(w, 2, dim=tuple(range(2, w.dim())), keepdim=True)
        limit = member_view(r, w)
        w.mul_(torch.where(norm > limit, limit / (norm + 1e-7), 1.0))


@torch.no_grad()
def stacked_clip_grads_(grads: Sequence[torch.Tensor], clip_value: torch.Tensor | None = None,
                        clip_norm: torch.Tensor | None = None) -> None:
    """Clip stacked gradients in place: each member's elements to ±clip_value_k, then its global norm to ≤ clip_norm_k.

    As torch.nn.utils.clip_grad_value_ then clip_grad_norm_ on member k's gradients (that order is
    dnnlab.optim.GradClipper's): the norm is over all of one member's gradients, the scale
    clip_norm/(norm + 1e-6) clamped to 1.
    """
    grads = list(grads)
    if clip_value is not None:
        torch._foreach_clamp_min_(grads, [member_view(-clip_value, g) for g in grads])
        torch._foreach_clamp_max_(grads, [member_view(clip_value, g) for g in grads])
    if clip_norm is not None:
        norms = torch.stack([torch.linalg.vector_norm(g.reshape(g.shape[0], -1), 2, dim=1) for g in grads])
        total = torch.linalg.vector_norm(norms, 2, dim=0)
        coef = (clip_norm / (total + 1e-6)).clamp_(max=1.0)
        torch._foreach_mul_(grads, [member_view(coef, g) for g in grads])


def stacked_clip_(params: Sequence[torch.Tensor], clip_value: torch.Tensor | None = None,
                  clip_norm: torch.Tensor | None = None) -> None:
    """`stacked_clip_grads_` on the gradients of stacked parameters (those with one)."""
    stacked_clip_grads_([p.grad for p in params if p.grad is not None], clip_value, clip_norm)
