"""Data sets as in-memory tensors: load, filter classes, split, scale.

Every ``conf/data/*.yaml`` names a loader here with ``_target_``. A loader returns raw numpy
arrays ``(x_train, y_train, x_test, y_test)`` (x float32 shaped ``(N, *input_shape)``, y int64);
:func:`load_data` does the common part (class filter, validation split, few-label subset,
size cap, scaling) and returns a :class:`Splits` of tensors that the trainer moves to its device.
"""

from __future__ import annotations

import gzip
import importlib.util
import hashlib
import inspect
import logging
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnnlab.conf import CONF_DIR
from dnnlab.config.choices import SCALINGS
from dnnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------------------------
# Common part
# ---------------------------------------------------------------------------------------------


# Keys every data yaml carries (written once, in conf/data/_common.yaml, plus each option's `name`);
# everything else (except _target_) goes to the loader.
COMMON_YAML = CONF_DIR / "data" / "_common.yaml"


def common_defaults() -> dict[str, Any]:
    """The common data keys and their defaults, as _common.yaml writes them (`name`: from the loader)."""
    from omegaconf import OmegaConf

    return {"name": None, **OmegaConf.to_container(OmegaConf.load(COMMON_YAML), resolve=True)}

# Common keys a loader may also receive, when its signature asks for them.
_PASSED_TO_LOADER = ("root", "download", "split_seed")


def load_data(cfg: Mapping[str, Any]) -> Splits:
    """Build the :class:`Splits` described by the composed ``data`` config node."""
    spec = _to_dict(cfg)
    common = {k: spec.pop(k, default) for k, default in common_defaults().items()}
    _validate_common(common)
    common["root"] = _resolve_root(common["root"])
    name = common["name"] or _name_from_target(spec.get("_target_"))

    x_tr, y_tr, x_te, y_te = _call_loader(spec, common)
    n_classes = int(max(y_tr.max(initial=-1), y_te.max(initial=-1))) + 1
    if common["classes"] is not None:
        classes = [int(c) for c in common["classes"]]
        _check_classes_present(classes, y_tr, y_te)
        x_tr, y_tr = _keep_classes(x_tr, y_tr, classes)
        x_te, y_te = _keep_classes(x_te, y_te, classes)
        n_classes = len(classes)

    seed = int(common["split_seed"])
    idx_tr, idx_val = _split_indices(y_tr, common["val_fraction"], seed)
    if common["train_fraction"] < 1.0:
        keep = _stratified_take(y_tr[idx_tr], _count(len(idx_tr), common["train_fraction"]), seed + 1)
        idx_tr = idx_tr[keep]
    idx_te = np.arange(len(y_te))
    if common["limit"] is not None:
        idx_tr, idx_val, idx_te = (_cap(idx, y, common["limit"], seed + 2)
                                   for idx, y in ((idx_tr, y_tr), (idx_val, y_tr), (idx_te, y_te)))

    train_x, val_x, test_x = x_tr[idx_tr], x_tr[idx_val], x_te[idx_te]
    _scale_inplace(common["scaling"], train_x, val_x, test_x)
    return Splits(
        train_x=_tensor(train_x), train_y=_labels(y_tr[idx_tr]),
        val_x=_tensor(val_x), val_y=_labels(y_tr[idx_val]),
        test_x=_tensor(test_x), test_y=_labels(y_te[idx_te]),
        n_classes=n_classes, input_shape=tuple(int(d) for d in x_tr.shape[1:]), name=name,
    )


def _to_dict(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A plain, resolved dict from a DictConfig or any mapping."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _bad(key: str, value: Any, valid: str) -> ValueError:
    return ValueError(f"Invalid data.{key}={value!r}: {valid}.")


def _validate_common(c: dict[str, Any]) -> None:
    """Reject bad common keys with a message naming the key, the value and what is valid."""
    if c["scaling"] is None:  # YAML `null` means no scaling, like `none`
        c["scaling"] = "none"
    if c["scaling"] not in SCALINGS:
        raise _bad("scaling", c["scaling"], "valid values are " + ", ".join(SCALINGS))
    if not _is_number(c["val_fraction"]) or not 0.0 <= c["val_fraction"] < 1.0:
        raise _bad("val_fraction", c["val_fraction"], "must be a number in [0, 1)")
    if not _is_number(c["train_fraction"]) or not 0.0 < c["train_fraction"] <= 1.0:
        raise _bad("train_fraction", c["train_fraction"], "must be a number in (0, 1]")
    if c["limit"] is not None and (not _is_int(c["limit"]) or c["limit"] < 1):
        raise _bad("limit", c["limit"], "must be null or a positive integer")
    if not _is_int(c["split_seed"]):
        raise _bad("split_seed", c["split_seed"], "must be an integer")
    classes = c["classes"]
    if classes is not None:
        if (isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or not classes
                or not all(_is_int(k) and k >= 0 for k in classes) or len(set(classes)) != len(classes)):
            raise _bad("classes", classes, "must be null or a non-empty list of distinct "
                       "non-negative class labels, e.g. [5,6,7,8,9]")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)


def _resolve_root(root: Any) -> Path:
    """Expand ``~``; a relative root is taken from the original working directory under Hydra."""
    path = Path(str(root)).expanduser()
    if not path.is_absolute():
        try:
            from hydra.utils import to_absolute_path
            path = Path(to_absolute_path(str(path)))
        except Exception:  # Hydra not importable: plain cwd-relative is right
            path = path.absolute()
    return path


def _name_from_target(target: str | None) -> str:
    func = (target or "data").rsplit(".", 1)[-1]
    return func.removeprefix("load_")


def _call_loader(spec: dict[str, Any], common: dict[str, Any]) -> Arrays:
    """Call the ``_target_`` loader with its own keys (+ root/download/split_seed if it takes them)."""
    import hydra.utils
    from hydra.errors import InstantiationException

    target = spec.get("_target_")
    if not target:
        raise ConfigError("The data config has no _target_: it must name a loader function, e.g. "
                         "_target_: dnnlab.data.load_digits (see dnnlab/conf/data/*.yaml).")
    try:
        params = inspect.signature(hydra.utils.get_method(target)).parameters
    except Exception as e:
        raise ConfigError(f"Invalid data._target_={target!r}: not an importable function ({e}).") from e
    unknown = sorted(set(spec) - {"_target_"} - set(params))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = sorted(set(common_defaults()) | (set(params) - set(_PASSED_TO_LOADER)))
        raise ConfigError(f"Unknown data.{unknown[0]} for {target}: valid keys are {', '.join(valid)}.")
    extras = {k: (str(common[k]) if k == "root" else common[k])
              for k in _PASSED_TO_LOADER if k in params}
    try:
        out = hydra.utils.call({**spec, "_convert_": "all"}, **extras)
    except InstantiationException as e:
        # Hydra wraps the loader's own error; surface the clear DataError/ValueError itself.
        if isinstance(e.__cause__, Exception):
            raise e.__cause__ from None
        raise
    return _check_arrays(out, target)


def _check_arrays(out: Any, target: str) -> Arrays:
    """Validate a loader's return value and normalise dtypes."""
    if not (isinstance(out, tuple) and len(out) == 4):
        raise TypeError(f"{target} must return (x_train, y_train, x_test, y_test); got {type(out)}")
    x_tr, y_tr, x_te, y_te = (np.asarray(a) for a in out)
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te) or x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"{target} returned inconsistent shapes: x_train {x_tr.shape}, "
                         f"y_train {y_tr.shape}, x_test {x_te.shape}, y_test {y_te.shape}")
    return (np.asarray(x_tr, np.float32), np.asarray(y_tr, np.int64),
            np.asarray(x_te, np.float32), np.asarray(y_te, np.int64))


def _check_classes_present(classes: list[int], y_tr: np.ndarray, y_te: np.ndarray) -> None:
    present = set(np.unique(y_tr).tolist())
    missing = [c for c in classes if c not in present]
    if missing:
        raise _bad("classes", classes, f"labels {missing} do not occur in this data set; "
                   f"its labels are {sorted(present)}")


def _keep_classes(x: np.ndarray, y: np.ndarray, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Keep samples of ``classes`` and relabel them 0..k-1 in the given order."""
    lookup = np.full(max(int(y.max(initial=0)), max(classes)) + 1, -1, dtype=np.int64)
    lookup[classes] = np.arange(len(classes))
    new_y = lookup[y]
    mask = new_y >= 0
    return x[mask], new_y[mask]


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


# ---------------------------------------------------------------------------------------------
# Scaling: statistics from the training split only
# ---------------------------------------------------------------------------------------------

def _stat_axes(x: np.ndarray) -> tuple[int, ...]:
    """Per-feature for vectors (N, F); per-channel for images (N, C, H, W)."""
    return (0,) if x.ndim <= 2 else (0, *range(2, x.ndim))


def _scale_inplace(scaling: str, train: np.ndarray, *others: np.ndarray) -> None:
    if scaling == "none" or train.size == 0:
        return
    axes = _stat_axes(train)
    if scaling == "standardize":
        shift, div = _mean_std(train, axes)
    else:
        lo = train.min(axis=axes, keepdims=True).astype(np.float64)
        shift, div = lo, train.max(axis=axes, keepdims=True) - lo
    # A constant feature/channel would divide by ~0: leave its spread alone (it becomes 0).
    div = np.where(div < 1e-6, 1.0, div)
    for a in (train, *others):
        a -= shift.astype(np.float32)
        a /= div.astype(np.float32)
        if scaling == "symmetric":
            a *= 2.0
            a -= 1.0


def _mean_std(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over ``axes`` (two-pass, float64 sums, in row chunks to bound memory)."""
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)
    mean32 = mean.astype(np.float32)
    sq = sum(np.square(x[i: i + 4096] - mean32).sum(axis=axes, keepdims=True, dtype=np.float64)
             for i in range(0, len(x), 4096))
    return mean, np.sqrt(sq / (x.size / mean.size))


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _labels(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# Offline loaders
# ---------------------------------------------------------------------------------------------

def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> Arrays:
    """scikit-learn's 8×8 digits as (N, 1, 8, 8) images with pixel values 0..16."""
    # Read the CSV that scikit-learn ships rather than importing sklearn (~1 s of start-up).
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        x, y = table[:, :-1].reshape(-1, 1, 8, 8), table[:, -1].astype(np.int64)
    else:
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        x, y = bunch.images.astype(np.float32)[:, None], bunch.target.astype(np.int64)
    return split_test(x, y, test_fraction, split_seed)


def load_synthetic(n_samples: int = 2000, n_features: int = 20, n_classes: int = 3,
                   n_informative: int | None = None, n_redundant: int | None = None,
                   class_sep: float = 1.0, seed: int = 0, test_fraction: float = 0.2,
                   split_seed: int = 0) -> Arrays:
    """A Gaussian-cluster classification problem from sklearn's make_classification."""
    from sklearn.datasets import make_classification

    # Half the features carry signal, a quarter are linear mixes of those, the rest noise;
    # at least enough informative ones for 2 clusters per class (make_classification's rule).
    if n_informative is None:
        n_informative = min(n_features, max(n_features // 2, int(np.ceil(np.log2(2 * n_classes)))))
    if n_redundant is None:
        n_redundant = min(n_features - n_informative, n_features // 4)
    try:
        x, y = make_classification(
            n_samples=n_samples, n_features=n_features, n_informative=n_informative,
            n_redundant=n_redundant, n_classes=n_classes, class_sep=class_sep, random_state=seed)
    except ValueError as e:
        raise ConfigError(f"Invalid data=synthetic settings (n_samples={n_samples}, n_features="
                         f"{n_features}, n_classes={n_classes}, n_informative={n_informative}, "
                         f"n_redundant={n_redundant}): {e}") from e
    return split_test(x.astype(np.float32), y.astype(np.int64), test_fraction, split_seed)


# MNIST-1D (Greydanus 2020, "Scaling down deep learning"): the paper's 12-point 1-D digit
# templates, one row per digit 0..9.
_MNIST1D_TEMPLATES = np.array([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
])


def _mnist1d_templates() -> np.ndarray:
    """Templates whitened per row, shifted to start at 0, and shrunk by 6 as in the paper."""
    t = _MNIST1D_TEMPLATES - _MNIST1D_TEMPLATES.mean(1, keepdims=True)
    t /= t.std(1, keepdims=True)
    return (t - t[:, :1]) / 6.0


def _interp_linear(x: np.ndarray, n_out: int) -> np.ndarray:
    """Rows of ``x`` (evenly spaced on [0, 1]) linearly resampled onto ``n_out`` evenly spaced points.

    The arithmetic of scipy's ``interp1d(kind="linear")``, step for step, so the reference
    generator's values (and which points are exactly 0) come out bit for bit.
    """
    old, new = np.linspace(0, 1, x.shape[1]), np.linspace(0, 1, n_out)
    hi = np.searchsorted(old, new).clip(1, x.shape[1] - 1)
    lo = hi - 1
    slope = (x[:, hi] - x[:, lo]) / (old[hi] - old[lo])
    return slope * (new - old[lo]) + x[:, lo]


def _gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Row-wise Gaussian filter (radius 4σ, mirror-reflected edges like scipy.ndimage)."""
    radius = int(4 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(x, ((0, 0), (radius, radius)), mode="symmetric")
    return sum(w * padded[:, i: i + x.shape[1]] for i, w in enumerate(kernel))


def _mnist1d_draws(rng: np.random.RandomState, n: int, padding: Sequence[int], max_translation: int,
                   width: int) -> dict[str, np.ndarray]:
    """Every random number of the reference generator, in its order: sample by sample, then the shuffle."""
    low, high = int(padding[0]), int(padding[1])
    names = ("pad", "scale", "shift", "corr", "iid", "shear")
    rows = []
    for _ in range(n):
        rows.append((low + int(rng.rand() * (high - low + 1)), rng.rand(), rng.choice(max_translation),
                     rng.randn(width), rng.randn(width), rng.rand()))
    draws = {name: np.array(column) for name, column in zip(names, zip(*rows))}
    draws["order"] = rng.permutation(n)
    return draws


def load_mnist1d(n_samples: int = 5000, test_fraction: float = 0.2, seed: int = 42,
                 padding: Sequence[int] = (36, 60), scale_coeff: float = 0.4,
                 max_translation: int = 48, corr_noise_scale: float = 0.25,
                 iid_noise_scale: float = 0.02, shear_scale: float = 0.75,
                 final_seq_length: int = 40) -> Arrays:
    """MNIST-1D shaped (N, final_seq_length): the arrays of the paper's generator (`mnist1d` on PyPI,
    `make_dataset`) for the same arguments and seed, computed without it and vectorised."""
    templates = _mnist1d_templates() + 1e-8  # +eps: template points stay "signal" even where 0
    y = np.repeat(np.arange(10), n_samples // 10)  # class by class, shuffled at the end
    n, tlen = len(y), templates.shape[1]
    width = tlen + int(padding[1])
    # The reference seeds NumPy's legacy global RNG; a RandomState of our own gives the same stream.
    d = _mnist1d_draws(np.random.RandomState(seed), n, padding, max_translation, width)

    # Pad each template with a random number of zeros, then stretch to a common width:
    # more padding means a narrower digit.
    x = np.empty((n, width))
    for pad in np.unique(d["pad"]):
        rows = d["pad"] == pad
        padded = np.concatenate([templates[y[rows]], np.zeros((rows.sum(), pad))], axis=1)
        x[rows] = _interp_linear(padded, width)
    x *= 1 + scale_coeff * (d["scale"][:, None] - 0.5)
    x = x[np.arange(n)[:, None], (np.arange(width)[None, :] - d["shift"][:, None]) % width]
    # Correlated noise fills the background only; iid noise goes everywhere.
    background = _gaussian_smooth(corr_noise_scale * d["corr"], 2.0)
    x = np.where(x != 0, x, background)
    x = x + iid_noise_scale * d["iid"]
    x = x - (shear_scale * (d["shear"][:, None] - 0.5)) * np.linspace(-0.5, 0.5, width)[None, :]
    x = _interp_linear(x, final_seq_length)[d["order"]]
    y = y[d["order"]]

    x = (x - x.mean()) / x.std()  # the paper's global centring; per-feature scaling comes later
    n_test = _count(n, test_fraction)
    x, y = x.astype(np.float32), y.astype(np.int64)
    return x[: n - n_test], y[: n - n_test], x[n - n_test:], y[n - n_test:]


# ---------------------------------------------------------------------------------------------
# Downloads: fetch into a temp file beside the target, verify MD5, then atomically rename
# ---------------------------------------------------------------------------------------------

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/"

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
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = {CIFAR10_ARCHIVE: "c58f30108f718f92721af3b95e74349a"}


def _fetch_url(url: str, dest: Path) -> None:
    """Stream ``url`` into ``dest`` (tests replace this function to serve local files)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path, md5: str) -> None:
    """Download ``url`` to ``dest``; nothing is left at ``dest`` (or beside it) unless it verifies."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    log.info("Downloading %s to %s", url, dest)
    try:
        try:
            _fetch_url(url, tmp)
        except Exception as e:
            raise DataError(f"Could not download {url} ({e}). Check the network, or download "
                            f"{dest.name} yourself into {dest.parent} and run again.") from e
        got = _md5(tmp)
        if got != md5:
            raise DataError(f"Checksum mismatch for {dest.name} downloaded from {url}: MD5 is {got}, "
                            f"expected {md5}. The download was deleted; run again, or fetch the "
                            f"file yourself into {dest.parent}.")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # no-op after a successful os.replace


def _missing_error(name: str, folder: Path, needed: str) -> DataError:
    return DataError(
        f"Data set {name!r} not found: expected {needed} in the folder {folder}, and "
        f"data.download=false forbids fetching them. Fix: copy the files there, point "
        f"data.root=... at a folder that holds {name}/ with them, or set data.download=true to "
        f"download them once (checksum verified).")


def _ensure_files(name: str, folder: Path, md5s: Mapping[str, str], url: str,
                  download: bool) -> None:
    """Make sure every file in ``md5s`` exists in ``folder``, downloading the missing ones."""
    missing = [f for f in md5s if not _present(folder / f)]
    for fname in md5s:
        if fname not in missing and (folder / fname).is_file():
            _check_published(folder / fname, md5s[fname])
    if not missing:
        return
    if not download:
        raise _missing_error(name, folder, ", ".join(md5s))
    for fname in missing:
        _download(url.rstrip("/") + "/" + fname, folder / fname, md5s[fname])


def _check_published(path: Path, md5: str) -> None:
    """Warn when a local file is not the published one (its MD5 differs).

    A warning, not an error: a re-compressed copy of the same images has another MD5 too. What a
    run was trained on is recorded as the loaded arrays' fingerprint, which eval and resume= check.
    """
    got = _md5(path)
    if got != md5:
        log.warning("%s is not the published file (MD5 %s, expected %s): if it holds other data, results will not "
                    "compare with the data set's. Delete it and run with data.download=true for the original.",
                    path, got, md5)


def _present(path: Path) -> bool:
    """A .gz file counts as present if it, or its already-unzipped twin, exists."""
    return path.is_file() or (path.suffix == ".gz" and path.with_suffix("").is_file())


# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: IDX files
# ---------------------------------------------------------------------------------------------

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


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(f"Corrupt data file {path}: {why}. Delete it and run again with "
                     f"data.download=true, or replace it with a good copy.")


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


# ---------------------------------------------------------------------------------------------
# CIFAR-10: python pickled batches
# ---------------------------------------------------------------------------------------------

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
