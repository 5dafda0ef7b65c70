"""Data sets as in-memory tensors: load, filter classes, split, scale.

Every ``conf/data/*.yaml`` names a loader here with ``_target_`` (``dnnlab.data.load_digits``, …;
saved runs' configs hold those paths, so every loader is re-exported here). A loader returns raw
numpy arrays ``(x_train, y_train, x_test, y_test)`` (x float32 shaped ``(N, *input_shape)``, y
int64); :func:`load_data` does the common part (class filter, validation split, few-label subset,
size cap, scaling) and returns a :class:`Splits` of tensors that the trainer moves to its device.

Modules: ``splits`` (Splits, deterministic stratified splits), ``pipeline`` (load_data: common keys,
scaling), ``offline`` (digits, synthetic, MNIST-1D), ``download`` (fetch with checksums, missing
and corrupt files), ``idx`` (MNIST, Fashion-MNIST), ``cifar`` (CIFAR-10).
"""

from __future__ import annotations

from dnnlab.data.cifar import (CIFAR10_ARCHIVE, CIFAR10_BATCHES, CIFAR10_DIR, CIFAR10_MD5, CIFAR10_URL,
                               load_cifar10)
from dnnlab.data.idx import (FASHION_MNIST_MD5, FASHION_MNIST_URL, MNIST_MD5, MNIST_URL, load_fashion_mnist,
                             load_mnist, read_idx)
from dnnlab.data.offline import load_digits, load_mnist1d, load_synthetic
from dnnlab.data.pipeline import COMMON_YAML, SCALINGS, common_defaults, load_data
from dnnlab.data.splits import Arrays, Splits, split_test
from dnnlab.errors import DataError

__all__ = [
    "Arrays", "Splits", "load_data", "common_defaults", "COMMON_YAML", "SCALINGS", "split_test", "read_idx",
    "load_digits", "load_synthetic", "load_mnist1d", "load_mnist", "load_fashion_mnist", "load_cifar10",
    "MNIST_URL", "MNIST_MD5", "FASHION_MNIST_URL", "FASHION_MNIST_MD5",
    "CIFAR10_URL", "CIFAR10_ARCHIVE", "CIFAR10_MD5", "CIFAR10_DIR", "CIFAR10_BATCHES", "DataError",
]
