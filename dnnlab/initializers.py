"""Weight initialization (the `initializer` config group)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


class Initializer:
    """Re-initialize every linear/conv layer: `weight(tensor)` in place, biases set to `bias`.

    `weight=None` keeps PyTorch's default weights; `bias=None` keeps PyTorch's default biases.
    """

    def __init__(self, weight: Callable[[torch.Tensor], object] | None = None, bias: float | None = 0.0):
        self.weight = weight
        self.bias = bias

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> nn.Module:
        for module in model.modules():
            if not isinstance(module, WEIGHTED):
                continue
            if self.weight is not None:
                self.weight(module.weight)
            if module.bias is not None and self.bias is not None:
                module.bias.fill_(self.bias)
        return model
