"""What a checkpoint records of its run, and the checks that what is opened with it matches.

Every checkpoint carries its run's resolved config (`state["config"]`) and a fingerprint of the
data it was trained on (the `DataFingerprint` hook's state). `eval`, `export` and `resume=` build
from the checkpoint's config — the values as they were at training time, `${oc.env:…}` included —
after checking that the folder's `.hydra/config.yaml` describes the same model and data, and
compare the data they load with the fingerprint: a checkpoint copied in from another run, or data
that changed since, is refused instead of giving silently wrong numbers.
"""
from __future__ import annotations

import hashlib
import weakref
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dnnlab.data import Splits
from dnnlab.errors import CheckpointError
from dnnlab.engine.hooks import Hook

# Config keys that decide what the weights compute and on which data; a checkpoint and its run
# folder must agree on every key under them…
MEANING = ("model", "activation", "normalization", "data", "regularization.dropout", "regularization.alpha_dropout")
# …except where the data lies (the fingerprint checks its content) and how the weights were first
# reached (transfer settings, which eval does not redo).
NOT_MEANING = ("data.root", "data.download", "data.url", "model.pretrained", "model.freeze", "model.unfreeze_at",
               "model.unfrozen_lr_scale")
SPLITS = ("train", "val", "test")


def under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def meaning(cfg: DictConfig) -> dict[str, Any]:
    """The flattened, resolved values of `cfg` that decide what its weights mean."""
    from dnnlab.config.schema import flatten

    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    return {k: v for k, v in flat.items() if under(k, MEANING) and not under(k, NOT_MEANING)}


def differences(recorded: DictConfig, other: DictConfig, other_name: str = "the folder's config") -> list[str]:
    """'KEY is A in the checkpoint but B in OTHER' for each meaning key that differs."""
    a, b = meaning(recorded), meaning(other)
    missing = "(absent)"
    return [f"{k} is {a.get(k, missing)!r} in the checkpoint but {b.get(k, missing)!r} in {other_name}"
            for k in sorted(a.keys() | b.keys()) if a.get(k, missing) != b.get(k, missing)]


def run_config(folder_config: Path | None, state: dict[str, Any], checkpoint: Path) -> DictConfig:
    """The config to rebuild `checkpoint`'s model with: its own (resolved at training time), checked
    against the folder's `.hydra/config.yaml`; the folder's for a checkpoint that carries none."""
    from dnnlab.runs import safe_config

    folder = safe_config.load(folder_config) if folder_config is not None else None
    if not state.get("config"):
        if folder is None:
            raise CheckpointError(f"The checkpoint {checkpoint} holds no config and lies in no run folder, "
                                  f"so dnnlab cannot know how it was trained.")
        return folder
    own = safe_config.checked(state["config"], f"the config inside {checkpoint}")
    problems = differences(own, folder) if folder is not None else []
    if problems:
        raise CheckpointError(
            f"The checkpoint {checkpoint} was trained with another model or data than {folder_config} describes: "
            f"{'; '.join(problems)}. One of the two was replaced (a checkpoint copied in from another run, or a "
            f"config.yaml another process rewrote), and the numbers would be of neither run, so dnnlab refuses: open "
            f"the run folder the checkpoint was trained in, or put the folder's own files back."
        )
    return own


def fingerprint(data: Splits) -> dict[str, str]:
    """SHA-256 of each split's inputs and labels (their bytes, shapes and dtypes); once per loaded data set (the
    members of a stack share one, and hashing 60k MNIST images takes a tenth of a second)."""
    known = _FINGERPRINTS.get(id(data))
    if known is not None and known[0]() is data:
        return dict(known[1])
    found = {}
    for split in SPLITS:
        digest = hashlib.sha256()
        for tensor in (getattr(data, f"{split}_x"), getattr(data, f"{split}_y")):
            array = tensor.detach().cpu().contiguous().numpy()
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(memoryview(array).cast("B"))
        found[split] = digest.hexdigest()
    _FINGERPRINTS[id(data)] = (weakref.ref(data, lambda _, key=id(data): _FINGERPRINTS.pop(key, None)), found)
    return dict(found)


# id(data) → (a weak reference to it, its fingerprint): loaded splits are never changed in place
_FINGERPRINTS: dict[int, tuple[weakref.ref, dict[str, str]]] = {}


def data_record(data: Splits) -> dict[str, Any]:
    """What a checkpoint records of its data: the data set's name and each split's fingerprint."""
    return {"name": data.name, "sha256": fingerprint(data)}


def check_data(recorded: dict[str, Any] | None, now: dict[str, Any], root: Any, source: str) -> None:
    """CheckpointError when the data fingerprinted `now` is not the data `recorded` was taken of (DataFingerprint states)."""
    if not recorded:
        return  # a checkpoint from before fingerprints: nothing to compare with
    differ = [split for split in SPLITS if recorded["sha256"].get(split) != now["sha256"][split]]
    if differ:
        raise CheckpointError(
            f"The data loaded now ({now['name']}, data.root={root}) is not the data {source} was trained on: "
            f"its {', '.join(differ)} split{'s differ' if len(differ) > 1 else ' differs'} from the fingerprint the "
            f"checkpoint recorded, so its numbers would be of other data. The files changed since (or another folder or "
            f"DNNLAB_DATA holds other files, or dnnlab's generator changed): put the run's data back, or point at it "
            f"(eval/export --data-root DIR, resume= data.root=DIR)."
        )


class DataFingerprint(Hook):
    """Puts the data's fingerprint into every checkpoint (trainer state "hooks"); a resume on other data is refused."""

    key = "DataFingerprint"  # its state in checkpoints: stable, whatever the class is called
    stage = "record"

    def __init__(self, data: Splits, root: Any = None):
        self.record, self.root = data_record(data), root

    def state_dict(self) -> dict[str, Any]:
        return self.record

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_data(state, self.record, self.root, "the checkpoint resumed")


def recorded_data(state: dict[str, Any]) -> dict[str, Any] | None:
    """The data fingerprint a checkpoint holds, if any."""
    return (state.get("hooks") or {}).get(DataFingerprint.key)
