"""Optimizers and gradient clipping (the `optimizer` config group)."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

CLIP_KEYS = ("clip_value", "clip_norm")


class GradClipper:
    """Clip gradients by value (each element to ±v) and/or by global norm (≤ n) before the step."""

    def __init__(self, params: list[torch.Tensor], clip_value: float | None = None, clip_norm: float | None = None):
        self.params, self.clip_value, self.clip_norm = params, clip_value, clip_norm

    def __bool__(self) -> bool:
        return self.clip_value is not None or self.clip_norm is not None

    def __call__(self) -> None:
        if self.clip_value is not None:
            torch.nn.utils.clip_grad_value_(self.params, self.clip_value, foreach=True)
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm, foreach=True)


def build_optimizer(cfg: DictConfig, params: Iterable[Any]) -> tuple[torch.optim.Optimizer, GradClipper]:
    """Instantiate the optimizer named by `cfg._target_` and the clipper from `cfg.clip_*`."""
    params = list(params)
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    clip = {k: kwargs.pop(k, None) for k in CLIP_KEYS}
    optimizer = instantiate(kwargs, params, _convert_="all")  # plain lists (betas): checkpoints must load with weights_only
    tensors = [p for group in optimizer.param_groups for p in group["params"]]
    return optimizer, GradClipper(tensors, **clip)
