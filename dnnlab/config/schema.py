"""Config validation that runs before anything is built: every bad key or value gets one paragraph
naming it and what would be valid.

Values are checked by `validate` against `RULES`: a table from config key (fnmatch pattern) to a
rule, whose allowed values come from dnnlab.config.choices. Keys without a rule are left to the code
that uses them. Hydra's own errors (an unknown option, a misspelt key, an override that does not
parse) are rewritten in dnnlab.config.overrides.
"""
from __future__ import annotations

import fnmatch
import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from dnnlab.config.choices import (
    ACTIVATION_FAMILIES, COMPILE_MODES, DEVICE_VALID, IMPLEMENTATIONS, INTERVALS, MONITOR_MODES, NORM_POSITIONS,
    PRECISIONS, SCALINGS, is_device, widths_problem,
)
from dnnlab.config.overrides import group_options, parse_overrides, sweep_values, unknown_options
from dnnlab.errors import ConfigError, did_you_mean
from dnnlab.engine.hooks import EPOCH_METRICS


# ---------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """A value check and, in words, what passes it."""

    check: Callable[[Any], bool]
    valid: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(low: int | None = None) -> Rule:
    return Rule(lambda v: _is_int(v) and (low is None or v >= low), "an integer" + (f" ≥ {low}" if low is not None else ""))


def number(low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False) -> Rule:
    """A finite number in the interval given by `low`/`high`, each end open or closed."""

    def check(v: Any) -> bool:
        if not _is_number(v):
            return False
        above = low is None or (v > low if low_open else v >= low)
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    if low is not None and high is not None:
        where = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        where = f" {'>' if low_open else '≥'} {low:g}"
    else:
        where = ""
    return Rule(check, "a number" + where)


def choice(*options: str) -> Rule:
    return Rule(lambda v: v in options, "one of " + ", ".join(options))


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.check(v), f"null or {rule.valid}")


def list_of(rule: Rule, length: int | None = None, example: str = "") -> Rule:
    def check(v: Any) -> bool:
        return isinstance(v, (list, tuple)) and (length is None or len(v) == length) and all(rule.check(x) for x in v)

    count = f"{length} " if length is not None else "a list of "
    return Rule(check, f"{count}values, each {rule.valid}" + (f", e.g. {example}" if example else ""))


def one_or_list(rule: Rule, example: str) -> Rule:
    """One value passing `rule`, or a non-empty list of them (one per layer, say)."""
    items = list_of(rule)
    return Rule(lambda v: rule.check(v) or (items.check(v) and len(v) > 0), f"{rule.valid}, or a list of them, e.g. {example}")


def increasing(rule: Rule, example: str) -> Rule:
    """A list of values, each passing `rule`, in strictly increasing order."""
    items = list_of(rule)
    return Rule(lambda v: items.check(v) and all(a < b for a, b in zip(v, v[1:])),
                f"a list of values in increasing order, each {rule.valid}, e.g. {example}")


CLASSIFICATION = "dnnlab.pretrain.Classification"  # the default model.task
BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
POSITIVE = number(0, low_open=True)
NON_NEGATIVE = number(0)
FRACTION = number(0, 1, high_open=True)  # probabilities of dropping, momentum coefficients
# A per-layer metric (a '/' in it) depends on the model: the hook that watches it checks it.
MONITORS = ("trainer.monitor", "regularization.early_stopping.monitor")
METRIC = Rule(lambda v: isinstance(v, str) and (v in EPOCH_METRICS or "/" in v),
              "a metric of metrics.jsonl: " + ", ".join(EPOCH_METRICS) + " (or a per-layer one, e.g. grad_norm/hidden1)")

# config key (fnmatch pattern over the dotted path) → rule. Keys a config does not have are skipped.
# The allowed values come from dnnlab.config.choices, which the constructors also read.
RULES: dict[str, Rule] = {
    "seed": integer(),
    "resume": optional(TEXT),
    "trainer.epochs": integer(1),
    "trainer.batch_size": integer(1),
    "trainer.eval_batch_size": integer(1),
    "trainer.device": Rule(is_device, DEVICE_VALID),
    "trainer.monitor_mode": choice(*MONITOR_MODES),
    "trainer.progress": BOOLEAN,
    "trainer.overwrite": BOOLEAN,
    "trainer.diagnostics": BOOLEAN,
    "trainer.threads": optional(integer(1)),
    "trainer.precision": choice(*PRECISIONS),
    "trainer.compile": Rule(lambda v: isinstance(v, bool) or v in COMPILE_MODES,
                            "true, false or a torch.compile mode: " + ", ".join(COMPILE_MODES)),
    "trainer.cuda_graph": BOOLEAN,
    "trainer.channels_last": BOOLEAN,
    "optimizer.implementation": choice(*IMPLEMENTATIONS),
    "activation.family": choice(*ACTIVATION_FAMILIES),
    "normalization.position": choice(*NORM_POSITIONS),
    "data.scaling": optional(choice(*SCALINGS)),
    "model.depth": integer(1),
    # one width for every hidden layer, or one per layer, input side first (its length is model.depth: widths_problem)
    "model.width": one_or_list(integer(1), "[300,100] (one width per hidden layer)"),
    "model.dense": integer(1),
    "initializer.weight.std": POSITIVE,
    "normalization.layer.momentum": number(0, 1),
    "normalization.layer.eps": POSITIVE,
    "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.momentum": FRACTION,
    "optimizer.dampening": number(0, 1),
    "optimizer.nesterov": BOOLEAN,
    "optimizer.betas": list_of(FRACTION, 2, "[0.9, 0.999]"),
    "optimizer.alpha": FRACTION,
    "optimizer.eps": POSITIVE,
    "optimizer.lr_decay": NON_NEGATIVE,
    "optimizer.initial_accumulator_value": NON_NEGATIVE,
    "optimizer.clip_value": optional(POSITIVE),
    "optimizer.clip_norm": optional(POSITIVE),
    "regularization.*.rate": FRACTION,
    "regularization.l1.weight": NON_NEGATIVE,
    "regularization.l2.weight": NON_NEGATIVE,
    "regularization.max_norm.r": POSITIVE,
    "regularization.early_stopping.mode": choice(*MONITOR_MODES),
    "regularization.early_stopping.patience": integer(1),
    "regularization.early_stopping.min_delta": NON_NEGATIVE,
    "regularization.early_stopping.restore_best": BOOLEAN,
    "schedule.interval": choice(*INTERVALS),
    "schedule.s": POSITIVE,
    "schedule.c": NON_NEGATIVE,
    "schedule.factor": number(0, 1, low_open=True, high_open=True),
    "schedule.patience": integer(0),
    "schedule.max_lr": POSITIVE,
    "schedule.pct_start": number(0, 1, low_open=True, high_open=True),
    "schedule.div_factor": POSITIVE,
    "schedule.final_div_factor": POSITIVE,
    "schedule.eta_min": NON_NEGATIVE,
    "schedule.total_steps": optional(integer(1)),
    "schedule.T_max": optional(integer(1)),
    "schedule.boundaries": increasing(integer(0), example="[10, 15]"),
    "schedule.factors": list_of(POSITIVE, example="[1.0, 0.5, 0.1]"),
    # The validation split is what best.pt, trainer.monitor, early stopping and schedule=performance read.
    "data.val_fraction": Rule(number(0, 1, low_open=True, high_open=True).check,
                              "a number in (0, 1), e.g. 0.1: training needs a validation split (best.pt, "
                              "trainer.monitor, early stopping and schedule=performance read val_loss/val_acc; "
                              "monitoring a training metric instead is not offered)"),
    **dict.fromkeys(MONITORS, METRIC),
    "data.root": Rule(lambda v: not Path(str(v)).expanduser().is_file(),
                      "a folder (data sets are read from and downloaded to data.root/<name>/), not a file"),
}


def classes_problem(plain: dict[str, Any]) -> str | None:
    """A classifier told to keep fewer than 2 classes (`data.classes=[3]`): nothing to tell apart."""
    classes = plain.get("data", {}).get("classes")
    task = (plain.get("model", {}).get("task") or {}).get("_target_", CLASSIFICATION)
    if task != CLASSIFICATION or not isinstance(classes, list) or len(classes) >= 2:
        return None
    n = plain["data"].get("n_classes")
    labels = f"0–{n - 1}" if _is_int(n) else "0–9 for digits, mnist1d, mnist, fashion_mnist and cifar10"
    return (f"data.classes={classes} is not valid for a classifier: it must list at least 2 of the data "
            f"set's labels ({labels}), e.g. data.classes=[3,5], or be null to keep every class")


def rule_for(key: str) -> Rule | None:
    return next((rule for pattern, rule in RULES.items() if fnmatch.fnmatchcase(key, pattern)), None)


def problem(key: str, value: Any) -> str | None:
    """'key=value is not valid: it must be …' when `value` breaks the rule for `key`, else None."""
    rule = rule_for(key)
    if rule is None or rule.check(value):
        return None
    shown = f"'{value}'" if isinstance(value, str) else value
    return f"{key}={shown} is not valid: it must be {rule.valid}"


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b.c': leaf} for a nested plain container (lists are leaves)."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming every value in `cfg` that breaks its rule."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception as error:  # an interpolation that does not resolve, e.g. ${optimizer.lrr}
        raise ConfigError(f"The config does not resolve: {' '.join(str(error).split())}") from error
    flat = flatten(plain)
    problems = [p for key, value in flat.items() if (p := problem(key, value))]
    if flat.get("trainer.diagnostics") is False:  # per-layer metrics come from the diagnostics hook alone
        problems += [f"{key}={flat[key]!r} is a per-layer diagnostic, which trainer.diagnostics=false does not log: "
                     f"set trainer.diagnostics=true or watch one of {', '.join(EPOCH_METRICS)}"
                     for key in MONITORS if "/" in str(flat.get(key, ""))]
    model = plain.get("model") if isinstance(plain.get("model"), dict) else {}
    if problem("model.width", model.get("width")) is None:  # a width that breaks its own rule is named once, above
        problems += [p for p in (widths_problem(model.get("depth"), model.get("width")),) if p]
    problems += [p for p in (classes_problem(plain),) if p]
    if problems:
        raise ConfigError(_join(problems))


def _join(problems: Sequence[str]) -> str:
    if len(problems) == 1:
        return problems[0] + "."
    return f"{len(problems)} config values are not valid: " + "; ".join(problems) + "."


def check_arguments(target: Any, kwargs: dict[str, Any], group: str, *args: Any) -> None:
    """ConfigError when the `group` option's keys do not fit `target`'s signature (called with `args` first)."""
    try:
        inspect.signature(target).bind_partial(*args, **kwargs)
    except TypeError as error:
        name = f"{target.__module__}.{target.__qualname__}"
        raise ConfigError(f"The {group} option's keys do not fit {name}: {error}. Its arguments: "
                          f"{', '.join(inspect.signature(target).parameters)}.") from None


def check_file_keys(cfg: DictConfig, overrides: Sequence[str], config_dir: str | None = None) -> None:
    """ConfigError for a key a config file (e.g. a --config-dir experiment) adds at the top level or under
    `trainer`, where dnnlab reads only its own keys: a misspelling would otherwise be silently ignored."""
    from dnnlab.config.catalog import CONF

    own_groups = [p.name for p in Path(config_dir).expanduser().iterdir() if p.is_dir()] if config_dir else []
    known = {"": {*root_keys(), *own_groups, "hydra"}, "trainer": set(map(str, OmegaConf.load(CONF / "config.yaml").trainer))}
    model = model_keys(cfg)
    if model is not None:
        known["model"] = model
    added = {o.key_or_group for o in parse_overrides(overrides) if o.is_add() or o.is_force_add()}
    problems = []
    for parent, keys in known.items():
        node = OmegaConf.select(cfg, parent) if parent else cfg
        for key in map(str, node or {}):
            full = f"{parent}.{key}" if parent else key
            if key not in keys and full not in added:
                problems.append(f"{full} is not a config key.{did_you_mean(key, keys, prefix=parent)} Valid keys "
                                f"{'under ' + parent if parent else 'at the top level'}: {', '.join(sorted(keys - {'hydra'}))}")
    if problems:
        raise ConfigError(f"A config file sets a key that nothing reads: {'; '.join(problems)}. "
                          f"Fix the key in your config file (`dnnlab train --cfg job` shows the whole config).")


def root_keys() -> set[str]:
    """The top-level keys dnnlab reads: config.yaml's and one per config group (a user's groups too)."""
    from dnnlab.config.catalog import CONF, groups

    return {*map(str, OmegaConf.load(CONF / "config.yaml")), *groups()}


def model_keys(cfg: DictConfig) -> set[str] | None:
    """The keys `model` may hold: its architecture function's parameters and the transfer keys (None: any)."""
    import inspect

    from hydra.utils import get_method

    from dnnlab.models import BUILT_ARGS
    from dnnlab.transfer import training_keys

    try:
        parameters = inspect.signature(get_method(str(OmegaConf.select(cfg, "model._target_")))).parameters
    except Exception:  # no target, or one that does not import: instantiate reports it
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return {*parameters, *training_keys(), "_target_", "_partial_"} - set(BUILT_ARGS)


def check_sweep(overrides: Sequence[str]) -> None:
    """Every value of every sweep: group options exist, values pass their rules, and model.width lists fit the
    model.depth values given with them (before any job starts)."""
    problems = []
    given: dict[str, list[Any]] = {}  # key → the values the overrides give it (one, or a sweep's)
    for override in parse_overrides(overrides):
        values = sweep_values(override)
        key = override.key_or_group
        if values is None and not override.is_delete():
            given[key] = [override.value()]
        if not values:
            continue
        given[key] = values
        options = group_options(key)
        for value in values:
            if options:
                problems.extend(unknown_options(key, value, options))
            elif (p := problem(key, value)) is not None:
                problems.append(p)
    if not problems:  # a depth the overrides leave to the config is checked with the composed job (validate)
        pairs = [(d, w) for w in given.get("model.width", []) for d in given.get("model.depth", [])]
        problems = list(dict.fromkeys(p for d, w in pairs if (p := widths_problem(d, w))))
    if problems:
        raise ConfigError(_join(problems))
