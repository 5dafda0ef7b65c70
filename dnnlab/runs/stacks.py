"""Which jobs of a sweep train together as one stacked model (`hydra/launcher=stacked`), and which alone.

Jobs whose configs are equal except for STACKABLE values share a stack; a job that SOLO names (a
technique with no stacked form yet) trains alone, as with the basic launcher. Both are data: giving
a technique its stacked form is one line here.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from dnnlab.config.schema import CLASSIFICATION, flatten, root_keys
from dnnlab.errors import ConfigError
from dnnlab.runs.checkpoints import checkpoint_epoch, find_checkpoint
from dnnlab.runs.sweeps import identity

# Values members of one stack may differ in: each member keeps its own. A path names a value or a whole node.
STACKABLE_OPTIMIZER = ("lr", "weight_decay", "momentum", "dampening", "betas", "eps", "alpha", "lr_decay",
                       "momentum_decay", "initial_accumulator_value", "clip_value", "clip_norm")
STACKABLE = (
    "seed",
    *(f"optimizer.{key}" for key in STACKABLE_OPTIMIZER),
    "initializer",  # each member is initialized by its own solo builder
    "schedule",  # each member keeps its solo schedule object
    "regularization.l1.weight", "regularization.l2.weight", "regularization.dropout.rate",
    "regularization.alpha_dropout.rate", "regularization.max_norm.r",
    "regularization.early_stopping",  # a per-member hook
    "trainer.progress",
    "study",  # a study's spec and the job's arm, recorded in its runs: training ignores it
)
# The stacked engine's optimizers (torch's update rules over stacked tensors), normalizations and regularizers.
STACKED_OPTIMIZERS = tuple(f"torch.optim.{name}" for name in
                           ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RMSprop", "Adagrad"))
STACKED_NORMS = ("dnnlab.normalization.batch_norm", "dnnlab.normalization.layer_norm")
STACKED_REGULARIZERS = tuple(f"dnnlab.regularization.{name}" for name in
                             ("L1", "L2", "Dropout", "AlphaDropout", "MaxNorm", "EarlyStopping"))
SOLO_OPTIMIZER_FLAGS = ("amsgrad", "maximize", "centered", "capturable", "differentiable", "decoupled_weight_decay")
FAST_PATHS = ("compile", "cuda_graph", "channels_last")


@dataclass(frozen=True)
class Solo:
    """A setting only some values of which have a stacked form: `stacks(value)` says whether this one has."""

    keys: tuple[str, ...]  # config keys (fnmatch patterns over the dotted keys)
    stacks: Callable[[Any], bool]
    valid: str  # the values that stack, in words
    group: str | None = None  # the value is this group's option: named by Hydra's choice (model=cnn), not its _target_


def off(value: Any) -> bool:
    return not value


SOLO = (
    Solo(("model._target_",), lambda v: v == "dnnlab.models.mlp", "model=mlp", group="model"),
    Solo(("model.task._target_",), lambda v: v in (None, CLASSIFICATION), "model.task: classification"),
    Solo(("model.pretrained",), lambda v: v is None, "model.pretrained=null"),
    Solo(("model.freeze",), off, "model.freeze=0"),
    Solo(tuple(f"trainer.{key}" for key in FAST_PATHS), off, f"trainer.{'/'.join(FAST_PATHS)}=false"),
    Solo(("trainer.precision",), lambda v: v == "fp32", "trainer.precision=fp32"),
    Solo(("optimizer._target_",), lambda v: v in STACKED_OPTIMIZERS, "optimizer: dnnlab's options", group="optimizer"),
    Solo(tuple(f"optimizer.{flag}" for flag in SOLO_OPTIMIZER_FLAGS), off,
         f"optimizer.{'/'.join(SOLO_OPTIMIZER_FLAGS)}=false"),
    Solo(("normalization.layer._target_",), lambda v: v in STACKED_NORMS, "normalization: dnnlab's options",
         group="normalization"),
    Solo(("regularization.*._target_",), lambda v: v in STACKED_REGULARIZERS, "regularization: dnnlab's options"),
    # TensorBoard is a per-run hook, but its HParams view reads the job's overrides from Hydra's global config,
    # which a stack's members share.
    Solo(("logger._target_",), lambda v: v is None, "logger=none", group="logger"),
)


def solo_reason(cfg: DictConfig, choices: Mapping[str, str] | None = None) -> str | None:
    """Why `cfg` cannot train in a stack ('model=cnn has no stacked form yet (stacks: model=mlp)'), or None.

    `choices`: Hydra's config-group choices of the job (hydra.runtime.choices), to name options by name.
    """
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    for rule in SOLO:
        for key, value in flat.items():
            if any(fnmatch.fnmatchcase(key, k) for k in rule.keys) and not rule.stacks(value):
                named = (choices or {}).get(rule.group or "")
                setting = f"{rule.group}={named}" if named else f"{key}={json.dumps(value)}"
                return f"{setting} has no stacked form yet (stacks: {rule.valid})"
    return None


def start_epoch(cfg: DictConfig) -> int | None:
    """The epoch a job starts from: 0, or its checkpoint's when it continues a run (None: unreadable)."""
    if not cfg.resume:
        return 0
    try:
        epoch = checkpoint_epoch(find_checkpoint(cfg.resume))
    except Exception:  # no checkpoint there: training it alone says so
        return None
    return epoch if epoch >= 0 else None


def stack_key(cfg: DictConfig) -> str | None:
    """What the members of one stack share: the config without its stackable values and labels, and
    the epoch it starts from. None for a job that trains alone."""
    epoch = start_epoch(cfg)
    if epoch is None or solo_reason(cfg) is not None:
        return None
    shared = identity(OmegaConf.to_container(cfg, resolve=True))
    for path in STACKABLE:
        *parents, leaf = path.split(".")
        node = shared
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    known = root_keys()
    shared = {k: v for k, v in shared.items() if k in known}  # the others are labels (+tag=…): nothing reads them
    return json.dumps([shared, epoch], sort_keys=True, default=str)


def partition(cfgs: Sequence[DictConfig], max_stack: int | None = None) -> list[list[int]]:
    """The jobs (indices into `cfgs`) that train together, in order of their first job; a list of one trains
    alone. At most `max_stack` jobs a stack (None: no count limit; the stacked loop splits by memory)."""
    check_max_stack(max_stack)
    stacks: dict[str, list[int]] = {}
    found: list[list[int]] = []
    for i, cfg in enumerate(cfgs):
        key = stack_key(cfg)
        if key is None:
            found.append([i])
        elif key in stacks:
            stacks[key].append(i)
        else:
            stacks[key] = [i]
            found.append(stacks[key])
    size = max_stack or max(1, len(cfgs))
    return [group[start:start + size] for group in found for start in range(0, len(group), size)]


def check_max_stack(value: Any) -> None:
    """ConfigError for a `hydra.launcher.max_stack` that is not a positive whole number or null."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"hydra.launcher.max_stack={value!r} is not valid: it must be a whole number of jobs ≥ 1, "
                          f"or null (no count limit: the stacked loop splits a stack by memory).")


def check_min_speedup(value: Any) -> None:
    """ConfigError for a `hydra.launcher.min_speedup` that is not a number ≥ 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"hydra.launcher.min_speedup={value!r} is not valid: it must be a number ≥ 0 (the step speed-up a "
                          f"stack must measure to train stacked; null: 1.15; 0: always stack).")


def check_launcher(launcher: Any) -> None:
    """ConfigError for a bad setting of hydra/launcher=stacked (`launcher`: the hydra.launcher node); others pass."""
    if launcher is None or "dnnlab_stacked_launcher" not in str(launcher.get("_target_", "")):
        return
    check_max_stack(launcher.get("max_stack"))
    check_min_speedup(launcher.get("min_speedup"))


def describe() -> str:
    """What stacks and what trains alone, in a paragraph (`dnnlab list`)."""
    nodes: dict[str, list[str]] = {}
    for path in STACKABLE:  # optimizer.lr, optimizer.eps → optimizer: lr eps
        head, _, rest = path.partition(".")
        nodes.setdefault(head, []).append(rest)
    stackable = " · ".join(f"{head}: {' '.join(rest)}" if len(rest) > 1 else f"{head}.{rest[0]}" if rest[0] else head
                           for head, rest in nodes.items())
    return (f"hydra/launcher=stacked trains as one stacked model the jobs of a sweep whose configs differ only in "
            f"{stackable} · labels (+key=…); any other difference separates stacks. Each member keeps a solo run's "
            f"folder. A job trains alone, with one line saying why, unless {' · '.join(rule.valid for rule in SOLO)}.")
