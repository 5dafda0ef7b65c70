"""Splits: the tensors a run trains on, and the deterministic, stratified index splits behind them."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Splits:
    """Train/validation/test tensors of one data set (float32 inputs, int64 labels)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_classes: int
    input_shape: tuple[int, ...]
    name: str

    def to(self, device: torch.device | str) -> "Splits":
        """A copy with every tensor on ``device`` (data stays resident on the training device)."""
        moved = {f.name: getattr(self, f.name).to(device)
                 for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)

    def channels_last(self) -> "Splits":
        """A copy with the image inputs (N, C, H, W) stored channels-last (NHWC)."""
        moved = {name: getattr(self, name).contiguous(memory_format=torch.channels_last)
                 for name in ("train_x", "val_x", "test_x") if getattr(self, name).dim() == 4}
        return replace(self, **moved)

    def __repr__(self) -> str:
        return (f"Splits({self.name!r}, train={len(self.train_y)}, val={len(self.val_y)}, "
                f"test={len(self.test_y)}, n_classes={self.n_classes}, "
                f"input_shape={self.input_shape}, device={self.train_x.device})")


def _bad(key: str, value: Any, valid: str) -> ValueError:
    return ValueError(f"Invalid data.{key}={value!r}: {valid}.")


# ---------------------------------------------------------------------------------------------
# Deterministic splits (numpy Generator seeded explicitly: independent of any global seed)
# ---------------------------------------------------------------------------------------------

def _count(n: int, fraction: float) -> int:
    """How many of ``n`` samples a fraction takes: at least 1 when fraction > 0."""
    return 0 if fraction <= 0 or n == 0 else min(n, max(1, int(round(fraction * n))))


def _stratified_take(y: np.ndarray, n_take: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n_take`` samples, class proportions kept (largest-remainder rounding)."""
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = n_take * counts / len(y)
    per_class = np.floor(quota).astype(np.int64)
    # Give the leftover samples to the classes with the largest fractional quotas.
    order = np.argsort(-(quota - per_class), kind="stable")
    per_class[order[: n_take - per_class.sum()]] += 1
    picked = [rng.permutation(np.flatnonzero(inverse == k))[: per_class[k]]
              for k in range(len(classes))]
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, np.int64)


def _split_indices(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) index arrays; the held-out part is a stratified ``fraction`` of y."""
    held = _stratified_take(y, _count(len(y), fraction), seed)
    kept = np.setdiff1d(np.arange(len(y)), held, assume_unique=True)
    return kept, held


def _cap(idx: np.ndarray, y: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``idx``, stratified so tiny test runs still see every class."""
    if len(idx) <= limit:
        return idx
    return idx[_stratified_take(y[idx], limit, seed)]


def split_test(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Arrays:
    """Stratified, deterministic train/test split for data sets shipped as one pool."""
    if not 0.0 < test_fraction < 1.0:
        raise _bad("test_fraction", test_fraction, "must be a number in (0, 1)")
    tr, te = _split_indices(y, test_fraction, seed)
    return x[tr], y[tr], x[te], y[te]

