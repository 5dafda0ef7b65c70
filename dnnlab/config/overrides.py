"""Hydra's side of a config: composing over dnnlab's configs, reading overrides and sweeps, and
Hydra's composition errors (an unknown group option, a misspelt key, an override that does not
parse) rewritten by `config_error` into one paragraph with a "did you mean" and the valid choices.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from omegaconf import DictConfig, OmegaConf

from dnnlab.errors import ConfigError, did_you_mean

HYDRA_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


# ------------------------------------------------------------------------------- overrides
def parse_overrides(overrides: Sequence[str]) -> list[Any]:
    """Hydra's parsed `Override`s; a line that does not parse is named."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for i, line in enumerate(overrides):
        try:
            parsed.append(parser.parse_override(line))
        except HydraException as error:
            first = str(error).splitlines()[0]
            raise ConfigError(
                f"Cannot read the override {line!r} ({first}). {_quoting_hint(line, overrides[i - 1] if i else '')}"
                f"Overrides look like key=value "
                f"(trainer.epochs=5), group=option (optimizer=adam), a list (regularization=[l2,dropout]) "
                f"or, with -m, a sweep (optimizer=adam,sgd); see {HYDRA_GRAMMAR}"
            ) from None
    return parsed


def _quoting_hint(line: str, previous: str) -> str:
    """How to quote what the shell split (a path with a space) or Hydra cannot read unquoted (non-ASCII)."""
    if "=" not in line and "=" in previous:
        return (f"If it is the rest of {previous!r}, a value with a space that the shell split in two, quote the whole "
                f"override: '{previous} {line}'. ")
    key, eq, value = line.partition("=")
    if eq and not value.startswith(("'", '"')) and not value.isascii():
        return f"Hydra reads non-ASCII characters only in a quoted value: '{key}=\"{value}\"'. "
    return ""


@contextlib.contextmanager
def config_search(config_dir: str | None = None) -> Iterator[None]:
    """Hydra initialized over dnnlab's configs and, like Hydra's --config-dir, the user's folder after them."""
    from hydra import initialize_config_module, version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    if config_dir is None:
        with initialize_config_module("dnnlab.conf", version_base="1.3"):
            yield
        return
    folder = Path(config_dir).expanduser().absolute()
    if not folder.is_dir():
        raise ConfigError(f"--config-dir {config_dir} is not a folder ({folder} {'is a file' if folder.exists() else 'does not exist'}). "
                          f"Give the folder that holds your config groups (e.g. configs/ with configs/experiment/NAME.yaml).")
    version.setbase("1.3")
    search = create_config_search_path("pkg://dnnlab.conf")  # the same path Hydra builds for --config-dir
    search.prepend(provider="command-line", path=f"file://{folder}", anchor=SearchPathQuery(provider="schema"))
    Hydra.create_main_hydra2(task_name="dnnlab", config_search_path=search)
    try:
        yield
    finally:
        GlobalHydra.instance().clear()


def yaml_error(error: Exception) -> ConfigError:
    """A config file that is not YAML: the file, line and column, and what the parser expected."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    context, start = getattr(error, "context", None), getattr(error, "context_mark", None)
    if mark is None:
        return ConfigError(f"A config file is not valid YAML: {' '.join(str(error).split())}.")
    began = f"{context} that begins at line {start.line + 1}, column {start.column + 1}: " if context and start else ""
    return ConfigError(f"{mark.name} is not valid YAML: {began}{problem} (line {mark.line + 1}, column {mark.column + 1}). "
                       f"Fix the file (often a missing ']', '}}' or ':', or a tab used to indent).")


def hydra_session() -> Any:
    """A context in which Hydra's config loader for dnnlab's configs is available."""
    from contextlib import nullcontext

    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return nullcontext()
    return initialize_config_module("dnnlab.conf", version_base="1.3")


def group_options(group: str) -> list[str]:
    """The options of a config group ([] when `group` is not one), as Hydra sees them."""
    from hydra.core.global_hydra import GlobalHydra

    with hydra_session():
        return GlobalHydra.instance().config_loader().get_group_options(group)


def sweep_values(override: Any) -> list[Any] | None:
    """The values of a choice or range sweep; None for anything else (intervals, globs, plain values)."""
    from hydra.core.override_parser.types import ChoiceSweep, RangeSweep

    if isinstance(override.value(), (ChoiceSweep, RangeSweep)):
        return list(override.sweep_iterator())
    return None


def first_job(overrides: Sequence[str]) -> list[str]:
    """One job of a sweep (the first value of every sweep), to compose and check before launching."""
    from hydra.core.override_parser.types import Glob, IntervalSweep

    job = []
    for override in parse_overrides(overrides):
        if isinstance(override.value(), (Glob, IntervalSweep)):
            continue  # the sweeper picks these values; nothing to check up front
        values = sweep_values(override)
        if values is None:
            job.append(override.input_line)
        elif values:
            job.append(f"{override.get_key_element()}={_override_text(values[0])}")
    return job


def _override_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_override_text(v) for v in value) + "]"
    return "null" if value is None else str(value)


def unknown_options(group: str, value: Any, options: list[str]) -> list[str]:
    chosen = value if isinstance(value, list) else [value]
    return [_option_message(group, str(v), options) for v in chosen if str(v) not in options]


def _option_message(group: str, option: str, options: Iterable[str]) -> str:
    options = [o for o in options if not o.startswith("_")]  # _common, _transfer: keys the options share, not options
    described = "" if group.startswith("hydra/") else f" (`dnnlab list {group}` describes each)"
    return (f"{group}={option} is not an option of {group}.{did_you_mean(option, options)} "
            f"Valid: {', '.join(options)}{described}")


# ------------------------------------------------------------------- Hydra's errors, rewritten
def config_error(error: Exception, overrides: Sequence[str]) -> ConfigError:
    """One clear paragraph for a Hydra composition error raised while composing `overrides`."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(error, OverrideParseException):
        parse_overrides(overrides)  # names the line that does not parse
    missing = getattr(error, "missing_cfg_file", None)
    if isinstance(error, MissingConfigException) and missing and "/" in missing:
        group, _, option = missing.rpartition("/")
        return ConfigError(_option_message(group, option, error.options or group_options(group)) + "." + plugin_hint(group, option))
    cause = error.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        return unknown_key(str(cause.full_key), overrides)
    text = " ".join(str(error).split())
    if cause is not None:
        text += " (" + " ".join(str(cause).splitlines()[0].split()) + ")"
    return ConfigError(text)


# Hydra plugins behind launcher/sweeper options, all in dnnlab's `sweeps` extra.
PLUGINS = {
    "hydra/launcher": {"joblib": "hydra-joblib-launcher", "submitit_local": "hydra-submitit-launcher",
                       "submitit_slurm": "hydra-submitit-launcher", "slurm": "hydra-submitit-launcher"},
    "hydra/sweeper": {"optuna": "hydra-optuna-sweeper"},
}


def plugin_hint(group: str, option: str) -> str:
    """For a launcher/sweeper whose Hydra plugin is not installed: the extra that brings it."""
    package = PLUGINS.get(group, {}).get(option)
    if package is None:
        return ""
    return f" {group}={option} comes from the Hydra plugin {package}: install it with pip install -e \".[sweeps]\" (or pip install {package})."


def unknown_key(full_key: str, overrides: Sequence[str]) -> ConfigError:
    """`full_key` is not in the config: suggest the closest key and list the valid ones."""
    parent, _, leaf = full_key.rpartition(".")
    if parent == "regularization" and leaf in group_options("regularization"):
        return ConfigError(
            f"regularization.{leaf}.* applies only when {leaf} is in the regularization list; "
            f"add it, e.g. regularization=[{leaf}], then set its keys."
        )
    cfg = _compose_groups(overrides, with_hydra=full_key.startswith("hydra."))
    node = OmegaConf.select(cfg, parent) if parent else cfg
    keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    if not parent:
        from dnnlab.config.catalog import groups

        keys = sorted(set(keys) | set(groups()) - {"hydra"})
    where = f"under {parent}" if parent else "at the top level"
    # A launcher or sweeper node holds its plugin's constructor arguments: a key of one's own would only make it fail.
    plugin = full_key.startswith(("hydra.launcher.", "hydra.sweeper."))
    adding = "" if plugin else f"; +{full_key}=VALUE adds a new key on purpose"
    return ConfigError(
        f"{full_key} is not a config key.{did_you_mean(leaf, keys, prefix=parent)} Valid keys {where}: {', '.join(keys)}. "
        f"(`dnnlab train --cfg job` prints the whole config{adding}.)"
    )


def _compose_groups(overrides: Sequence[str], with_hydra: bool = False) -> DictConfig:
    """The config with only the group choices of `overrides` applied (so its keys are the valid ones);
    `with_hydra`: Hydra's node too (hydra.launcher.* under the chosen launcher)."""
    from hydra import compose

    groups = [line for line in first_job(overrides)
              if "." not in (key := line.split("=", 1)[0].lstrip("+~")) and group_options(key)]
    with hydra_session():
        try:
            return compose("config", overrides=groups, return_hydra_config=with_hydra)
        except Exception:  # the group choices are bad too; the defaults still name the common keys
            return compose("config", return_hydra_config=with_hydra)
