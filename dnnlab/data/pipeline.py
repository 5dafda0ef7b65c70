"""load_data: the common part every data set goes through (class filter, splits, size cap, scaling).

A loader (``_target_`` of a ``conf/data/*.yaml``) returns raw numpy arrays; :func:`load_data` calls
it with its own keys, checks what it returns, and builds the :class:`Splits` the trainer moves to its
device.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnnlab.conf import CONF_DIR
from dnnlab.config.choices import SCALINGS
from dnnlab.data.splits import Arrays, Splits, _bad, _cap, _count, _split_indices, _stratified_take
from dnnlab.errors import ConfigError, DataError

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
