"""Fake data-set files in the real formats (IDX for MNIST, pickled CIFAR-10 batches), written into tmp folders."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

from dnnlab import data


def idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def fake_images(n: int, offset: int) -> np.ndarray:
    return ((np.arange(n)[:, None] * 7 + offset + np.arange(784)[None]) % 256).reshape(n, 28, 28)


def write_fake_mnist(folder: Path) -> dict[str, np.ndarray]:
    """20 train + 10 test fake images as the four gzipped IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte.gz": fake_images(20, 0),
              "train-labels-idx1-ubyte.gz": np.arange(20) % 10,
              "t10k-images-idx3-ubyte.gz": fake_images(10, 3),
              "t10k-labels-idx1-ubyte.gz": np.arange(10)[::-1]}
    for fname, arr in arrays.items():
        (folder / fname).write_bytes(gzip.compress(idx_bytes(arr)))
    return arrays


def write_fake_cifar(batches: Path, per_batch: int = 4) -> list[dict]:
    """Six pickled batches shaped like the real ones, 4 images each."""
    batches.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = []
    for i, fname in enumerate(data.CIFAR10_BATCHES):
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [(i + j) % 10 for j in range(per_batch)],
                 b"batch_label": fname.encode()}
        (batches / fname).write_bytes(pickle.dumps(batch))
        written.append(batch)
    return written
