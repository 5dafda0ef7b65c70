"""Data sets that need no download: scikit-learn's digits, a synthetic problem, MNIST-1D."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dnnlab.data.splits import Arrays, _count, split_test
from dnnlab.errors import ConfigError


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
