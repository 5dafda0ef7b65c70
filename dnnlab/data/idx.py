"""MNIST and Fashion-MNIST: IDX files, downloaded on first use (checksum verified)."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dnnlab.data.download import _corrupt, _ensure_files
from dnnlab.data.splits import Arrays

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# Published MD5s of the original files (as listed by the data sets' authors and torchvision).
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/ "file formats").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path | str, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not); a corrupt file raises DataError naming it."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise _corrupt(path, f"cannot read it ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise _corrupt(path, "bad magic number (not an IDX file)")
    dims_n = raw[3]
    if ndim is not None and dims_n != ndim:
        raise _corrupt(path, f"has {dims_n} dimensions, expected {ndim}")
    header = 4 + 4 * dims_n
    if len(raw) < header:
        raise _corrupt(path, "truncated header")
    shape = struct.unpack(f">{dims_n}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise _corrupt(path, f"holds {len(raw) - header} data bytes, its header {shape} "
                             f"promises {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _read_idx_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, H, W) float32 and labels (N,) int64 of one IDX split."""
    images_path = _existing(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels_path = _existing(folder / f"{prefix}-labels-idx1-ubyte.gz")
    images, labels = read_idx(images_path, ndim=3), read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise _corrupt(labels_path, f"has {len(labels)} labels for {len(images)} images in "
                                    f"{images_path.name}")
    return images[:, None].astype(np.float32), labels.astype(np.int64)


def _existing(path: Path) -> Path:
    """The .gz path, or its unzipped twin when only that exists."""
    return path if path.is_file() else path.with_suffix("")


def _load_idx_dataset(name: str, root: str, download: bool, url: str,
                      md5s: Mapping[str, str]) -> Arrays:
    folder = Path(root).expanduser() / name
    _ensure_files(name, folder, md5s, url, download)
    x_tr, y_tr = _read_idx_pair(folder, "train")
    x_te, y_te = _read_idx_pair(folder, "t10k")
    return x_tr, y_tr, x_te, y_te


def load_mnist(root: str, download: bool = True, url: str = MNIST_URL) -> Arrays:
    """MNIST handwritten digits from ``root/mnist/`` as (N, 1, 28, 28), pixels 0..255."""
    return _load_idx_dataset("mnist", root, download, url, MNIST_MD5)


def load_fashion_mnist(root: str, download: bool = True, url: str = FASHION_MNIST_URL) -> Arrays:
    """Fashion-MNIST from ``root/fashion_mnist/`` as (N, 1, 28, 28), pixels 0..255."""
    return _load_idx_dataset("fashion_mnist", root, download, url, FASHION_MNIST_MD5)
