"""Weight initialization (the `initializer` config group)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from dnnlab.models import weighted_layers


class Initializer:
    """Re-initialize every linear/conv layer: `weight(tensor)` in place, biases set to `bias`.

    `weight=None` keeps PyTorch's default weights; `bias=None` keeps PyTorch's default biases.
    """

    def __init__(self, weight: Callable[[torch.Tensor], object] | None = None, bias: float | None = 0.0):
        self.weight = weight
        self.bias = bias

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> nn.Module:
        for _, module in weighted_layers(model):
            if self.weight is not None:
                self.weight(module.weight)
            if module.bias is not None and self.bias is not None:
                module.bias.fill_(self.bias)
        return model
