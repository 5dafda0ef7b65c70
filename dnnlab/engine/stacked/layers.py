"""Stacked layers: K members' values with a leading member dimension; each maps (K, B, F) → (K, B, F').

Every parameter and buffer has the member dimension first (StackedModel.keep indexes them all),
and keeps the member layer's name, so a stacked state-dict key is the member's key. Values that
are per member but not state (dropout rates, activation slopes) are non-persistent buffers.
Each forward is the member layer's definition in torch, written once for the whole stack.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ALPHA_DROPOUT_ALPHA = 1.7580993408473766  # torch's constant (ATen Dropout.cpp): -SELU scale × SELU alpha


def member_view(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(K,) per-member values shaped (K, 1, …, 1) to broadcast against the stacked tensor `x`."""
    return values.view(-1, *[1] * (x.dim() - 1))


def per_member(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Host floats (computed in double, as torch's Python-scalar arguments are) → a (K,) tensor of `like`'s dtype."""
    return torch.tensor([float(v) for v in values], dtype=torch.float64).to(like.device, like.dtype)


class StackedFlatten(nn.Module):
    """nn.Flatten() of each member: (K, B, *shape) → (K, B, prod(shape))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2)


class BatchedLinear(torch.autograd.Function):
    """x @ Wᵀ + b for each member, with the weight's gradient computed in the weight's own (K, out, in) layout.

    Autograd's baddbmm backward would give Wᵀ's gradient, whose transpose then has to be added into
    the weight's gradient element by element across strides (a third of a large layer's step).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        w = weight.transpose(1, 2)
        return torch.bmm(x, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = torch.bmm(grad, weight) if need_x else None
        grad_w = torch.bmm(grad.transpose(1, 2), x) if need_w else None
        grad_b = grad.sum(1) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b


class StackedLinear(nn.Module):
    """K linear layers: weight (K, out, in), bias (K, out) or none; one batched matmul (torch.baddbmm)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape[1:]
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return BatchedLinear.apply(x, self.weight, self.bias)


class StackedBatchNorm(nn.Module):
    """K BatchNorm1d layers: (K, B, F) is laid out as (B, K·F) so one F.batch_norm keeps each member's batch statistics."""

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor | None, running_mean: torch.Tensor | None,
                 running_var: torch.Tensor | None, num_batches_tracked: torch.Tensor | None, eps: float, momentum: float):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(weight) if weight is not None else None
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.track_running_stats = running_mean is not None
        self.register_buffer("running_mean", running_mean)
        self.register_buffer("running_var", running_var)
        self.register_buffer("num_batches_tracked", num_batches_tracked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b, f = x.shape
        flat = x.transpose(0, 1).reshape(b, k * f)
        track = self.track_running_stats
        if self.training and track:
            self.num_batches_tracked.add_(1)
        out = F.batch_norm(
            flat,
            self.running_mean.view(-1) if track else None,
            self.running_var.view(-1) if track else None,
            self.weight.reshape(-1) if self.weight is not None else None,
            self.bias.reshape(-1) if self.bias is not None else None,
            self.training or not track, self.momentum, self.eps,
        )
        return out.view(b, k, f).transpose(0, 1)


class StackedLayerNorm(nn.Module):
    """K LayerNorm layers over the last dimension; the affine part is each member's own."""

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor | None, features: int, eps: float):
        super().__init__()
        self.features, self.eps = features, eps
        self.weight = nn.Parameter(weight) if weight is not None else None
        self.bias = nn.Parameter(bias) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x, (self.features,), None, None, self.eps)
        if self.weight is None:
            return out if self.bias is None else out + self.bias.unsqueeze(1)
        if self.bias is None:
            return out * self.weight.unsqueeze(1)
        return torch.addcmul(self.bias.unsqueeze(1), out, self.weight.unsqueeze(1))


class StackedDropout(nn.Module):
    """Dropout or alpha dropout with each member's rate; torch's definition (ATen `_dropout_impl`), masks drawn once for all.

    Dropout keeps an element with probability 1-p and scales it by 1/(1-p); alpha dropout sets dropped
    elements to SELU's negative saturation and applies the affine map that keeps mean and variance.
    A member with p=0 gets its input unchanged (a mask of ones, scale 1) and one with p=1 zeros, as in torch.
    """

    def __init__(self, rates: Sequence[float], alpha: bool, like: torch.Tensor):
        super().__init__()
        self.alpha = alpha
        keep = [1.0 - p for p in rates]
        self.register_buffer("keep", per_member(keep, like), persistent=False)
        # p=1 keeps nothing: divide the all-zero mask by 1 (torch returns input·0)
        self.register_buffer("divisor", per_member([q if q > 0 else 1.0 for q in keep], like), persistent=False)
        if alpha:
            a = [1.0 / math.sqrt((ALPHA_DROPOUT_ALPHA ** 2 * p + 1) * (1 - p)) if p < 1 else 0.0 for p in rates]
            self.register_buffer("scale", per_member(a, like), persistent=False)
            self.register_buffer("alpha_a", per_member([ALPHA_DROPOUT_ALPHA * v for v in a], like), persistent=False)
            self.register_buffer("alpha_a_p", per_member([ALPHA_DROPOUT_ALPHA * v * p for v, p in zip(a, rates)], like),
                                 persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = member_view(self.keep, x)
        noise = torch.empty_like(x).bernoulli_(keep.expand_as(x))
        if not self.alpha:
            return x * noise.div_(member_view(self.divisor, x))
        shift = noise.add(-1).mul_(member_view(self.alpha_a, x)).add_(member_view(self.alpha_a_p, x))
        return (x * noise.mul_(member_view(self.scale, x))).add_(shift)


class StackedPReLU(nn.Module):
    """K PReLU layers: weight (K, n) with n = 1 or the feature count; x if x > 0 else w·x."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, x * self.weight.unsqueeze(1))


class StackedLeakyReLU(nn.Module):
    """LeakyReLU with each member's negative slope."""

    def __init__(self, slopes: Sequence[float], like: torch.Tensor):
        super().__init__()
        self.register_buffer("slope", per_member(slopes, like), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, x * member_view(self.slope, x))


class StackedELU(nn.Module):
    """ELU with each member's alpha: x if x > 0 else α·(eˣ − 1)."""

    def __init__(self, alphas: Sequence[float], like: torch.Tensor):
        super().__init__()
        self.register_buffer("alpha", per_member(alphas, like), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, torch.expm1(x) * member_view(self.alpha, x))


class StackedRReLU(nn.Module):
    """RReLU with each member's bounds: a slope ~ U(lower, upper) per negative element in training, their mean in eval."""

    def __init__(self, lowers: Sequence[float], uppers: Sequence[float], like: torch.Tensor):
        super().__init__()
        self.register_buffer("lower", per_member(lowers, like), persistent=False)
        self.register_buffer("span", per_member([u - lo for lo, u in zip(lowers, uppers)], like), persistent=False)
        self.register_buffer("mean_slope", per_member([(lo + u) / 2 for lo, u in zip(lowers, uppers)], like),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return torch.where(x > 0, x, x * member_view(self.mean_slope, x))
        slope = torch.addcmul(member_view(self.lower, x), torch.rand_like(x), member_view(self.span, x))
        return torch.where(x > 0, x, x * slope)
