"""The allowed values of config keys, each set written once: the validation rules (dnnlab.config.schema)
and the constructors that take the value (trainer, hooks, builders, loaders) both read them.

Torch-free, so validating a config imports no torch.
"""
from __future__ import annotations

import re
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


def require(key: str, value: Any, options: Iterable[str] | dict[str, str]) -> None:
    """ConfigError naming `key`, its value and what is valid, unless `value` is one of `options`."""
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not valid; use {words(options)}")
