"""Normalization layers (the `normalization` config group); placement is decided in `models`."""
from __future__ import annotations

from torch import nn


def batch_norm(features: int, spatial: bool = False, **kwargs) -> nn.Module:
    """Batch norm over a batch of vectors (BatchNorm1d) or of feature maps (BatchNorm2d)."""
    return (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(features, **kwargs)


def layer_norm(features: int, spatial: bool = False, **kwargs) -> nn.Module:
    """Layer norm over each sample's features; for feature maps, over all channels and positions."""
    if spatial:
        return nn.GroupNorm(1, features, **kwargs)
    return nn.LayerNorm(features, **kwargs)
