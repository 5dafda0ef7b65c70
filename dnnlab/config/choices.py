"""The allowed values of config keys, each set written once: the validation rules (dnnlab.config.schema)
and the constructors that take the value (trainer, hooks, builders, loaders) both read them.

Torch-free, so validating a config imports no torch.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Iterable

from dnnlab.errors import ConfigError

PRECISIONS = ("fp32", "bf16")  # trainer.precision
DEVICES = ("auto", "cpu", "cuda")  # trainer.device, besides cuda:N
DEVICE_VALID = "auto, cpu, cuda or cuda:N"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # trainer.compile
MONITOR_MODES = ("min", "max")  # trainer.monitor_mode, regularization.early_stopping.mode
IMPLEMENTATIONS = ("auto", "fused", "foreach", "loop")  # optimizer.implementation
INTERVALS = ("step", "epoch")  # schedule.interval
SCALINGS = ("standardize", "unit", "symmetric", "none")  # data.scaling (null means none)
NORM_POSITIONS = ("before", "after", "none")  # normalization.position: before or after the activation
# activation.family: what can go wrong with the units, so what diagnostics measure
ACTIVATION_FAMILIES = {"relu": "units can die", "saturating": "units can saturate", "smooth": "neither"}


def is_device(value: Any) -> bool:
    """Whether `value` names a device dnnlab can be asked for (DEVICE_VALID)."""
    return value in DEVICES or bool(re.fullmatch(r"cuda:\d+", str(value)))


def words(options: Iterable[str] | dict[str, str]) -> str:
    """'a, b or c' (each with its meaning in parentheses, for a dict)."""
    items = [f"{k} ({v})" for k, v in options.items()] if isinstance(options, dict) else list(options)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def is_width_list(width: Any) -> bool:
    """Whether `model.width` gives one width per hidden layer (a list) rather than one for all (an int)."""
    return isinstance(width, Sequence) and not isinstance(width, str)


def widths_problem(depth: Any, width: Any) -> str | None:
    """What is wrong with a `model.width` list (one width per hidden layer) for `model.depth`, or None.

    An int width (every layer that wide) and a non-integer depth (its own rule names it) pass here; `width` may be
    an OmegaConf ListConfig (what `instantiate` passes), a Sequence but not a list.
    """
    if not is_width_list(width) or isinstance(depth, bool) or not isinstance(depth, int):
        return None
    if len(width) == depth:
        return None
    layers = f"{len(width)} hidden layer{'' if len(width) == 1 else 's'}"
    return (f"model.width={list(width)} lists {layers} but model.depth={depth}; set model.depth={len(width)} "
            f"(or give one width for every layer)")


def require(key: str, value: Any, options: Iterable[str] | dict[str, str]) -> None:
    """ConfigError naming `key`, its value and what is valid, unless `value` is one of `options`."""
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not valid; use {words(options)}")
