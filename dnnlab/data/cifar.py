"""CIFAR-10: python pickled batches, from the extracted folder or the tar.gz (downloaded on first use)."""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dnnlab.data.download import _check_published, _corrupt, _download, _missing_error
from dnnlab.data.splits import Arrays

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = {CIFAR10_ARCHIVE: "c58f30108f718f92721af3b95e74349a"}

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def load_cifar10(root: str, download: bool = True, url: str = CIFAR10_URL) -> Arrays:
    """CIFAR-10 from ``root/cifar10/`` (extracted folder or the tar.gz) as (N, 3, 32, 32), 0..255."""
    folder = Path(root).expanduser() / "cifar10"
    batches = folder / CIFAR10_DIR
    if not all((batches / b).is_file() for b in CIFAR10_BATCHES):
        archive = folder / CIFAR10_ARCHIVE
        if not archive.is_file():
            if not download:
                raise _missing_error("cifar10", folder, f"{CIFAR10_ARCHIVE} or the extracted "
                                     f"{CIFAR10_DIR}/ ({', '.join(CIFAR10_BATCHES)})")
            _download(url.rstrip("/") + "/" + CIFAR10_ARCHIVE, archive, CIFAR10_MD5[CIFAR10_ARCHIVE])
        else:
            _check_published(archive, CIFAR10_MD5[CIFAR10_ARCHIVE])
        _extract_cifar(archive, folder)
    parts = [_read_cifar_batch(batches / b) for b in CIFAR10_BATCHES]
    x_tr = np.concatenate([p[0] for p in parts[:5]])
    y_tr = np.concatenate([p[1] for p in parts[:5]])
    return x_tr, y_tr, parts[5][0], parts[5][1]


def _extract_cifar(archive: Path, folder: Path) -> None:
    """Extract the batches folder safely (no links, no paths leaving it), then rename into place."""
    with tempfile.TemporaryDirectory(dir=folder, prefix=".extract-") as tmp:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = [m for m in tar.getmembers() if _safe_member(m)]
                if not any(m.name.startswith(CIFAR10_DIR + "/") for m in members):
                    raise _corrupt(archive, f"has no {CIFAR10_DIR}/ folder")
                tar.extractall(tmp, members=members, **_tar_filter())
        except (tarfile.TarError, OSError, EOFError) as e:
            raise _corrupt(archive, f"cannot extract it ({e})") from e
        target = folder / CIFAR10_DIR
        if target.exists():  # an incomplete earlier extraction
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(Path(tmp) / CIFAR10_DIR, target)
        except OSError:
            # A concurrent job (e.g. a parallel sweep) may have put a complete copy in place first.
            if not all((target / b).is_file() for b in CIFAR10_BATCHES):
                raise


def _safe_member(m: tarfile.TarInfo) -> bool:
    parts = Path(m.name).parts
    return ((m.isfile() or m.isdir()) and not Path(m.name).is_absolute() and ".." not in parts
            and parts[:1] == (CIFAR10_DIR,))


def _tar_filter() -> dict[str, Any]:
    """Python's 'data' extraction filter where available (3.11.4+) as a second safety net."""
    return {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds (dicts, lists, bytes, numpy arrays): no code runs."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
        ("__builtin__", "object"), ("builtins", "object"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR-10 batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch → images (N, 3, 32, 32) float32 and labels (N,) int64."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise _corrupt(path, f"not a CIFAR-10 batch ({type(e).__name__}: {e})") from e
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise _corrupt(path, f"data shape {data.shape} with {len(labels)} labels, expected "
                             f"(N, 3072) with N labels")
    return data.reshape(-1, 3, 32, 32).astype(np.float32), labels
