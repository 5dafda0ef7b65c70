"""Configs read from disk run no code: only the callables and resolvers dnnlab's own options name.

`hydra.utils.instantiate` calls whatever a `_target_` names, so a run folder's `.hydra/config.yaml`
or the config string inside a checkpoint (which `torch.load(weights_only=True)` happily returns)
could name `os.system`, `torch.load` (weights_only=False) or `builtins.eval`. Before `eval`,
`export`, `resume=` or `model.pretrained=` use such a config, `checked` refuses any `_target_`
outside the allow-list, any interpolation resolver outside it, and Hydra's other instantiation
keys (`_args_`, `_partial_`, …) where dnnlab's options never use them; then it resolves the config
once, so what was checked is exactly what is built. The allow-list is read from the packaged YAML
under dnnlab/conf/ (never copied by hand, so it cannot drift). A config the user trusts (their own
`_target_`s) opens with `dnnlab --trust-config …` or DNNLAB_TRUST_CONFIG=1.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from dnnlab.conf import CONF_DIR

from dnnlab.errors import UnsafeConfigError

TRUST_ENV = "DNNLAB_TRUST_CONFIG"
# Keys hydra.utils.instantiate acts on (hydra/_internal/instantiate/_instantiate2.py: _Keys).
INSTANTIATE_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")


def trusted() -> bool:
    """Whether the user opted in to configs naming any callable (`--trust-config`, DNNLAB_TRUST_CONFIG=1)."""
    return os.environ.get(TRUST_ENV, "").lower() in ("1", "true", "yes")


@functools.cache
def allowed() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """(targets, resolvers, instantiation keys) that dnnlab's packaged options use.

    Hydra's own settings (the `hydra` node, conf/hydra/) are left out: a run's config never
    configures Hydra, and nothing dnnlab reads from disk is handed to Hydra.
    """
    conf = CONF_DIR
    targets: set[str] = set()
    resolvers: set[str] = set()
    keys: set[str] = set()
    for file in sorted(conf.rglob("*.yaml")):
        if file.relative_to(conf).parts[0] == "hydra":
            continue
        node = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
        if isinstance(node, dict):
            node.pop("hydra", None)
        for _, name, value in entries(node):
            if name in INSTANTIATE_KEYS:
                keys.add(name)
                if name == "_target_" and value is not None:
                    targets.add(str(value))
            resolvers.update(resolver_names(value))
    return frozenset(targets), frozenset(resolvers), frozenset(keys)


def entries(node: Any, prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """(dotted path, key, value) of every mapping entry and list item of a plain container, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        path = f"{prefix}.{key}" if prefix else str(key)
        yield path, str(key), value
        yield from entries(value, path)


def resolver_names(value: Any) -> list[str]:
    """The resolvers an interpolation string calls (`${oc.env:X}` → ['oc.env']), nested ones too."""
    if not isinstance(value, str) or "${" not in value:
        return []
    from omegaconf import grammar_parser
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser

    try:
        tree = grammar_parser.parse(value)
    except Exception:  # not valid interpolation grammar: OmegaConf would refuse it too
        return ["(unparsable interpolation)"]
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, OmegaConfGrammarParser.ResolverNameContext):
            found.append(node.getText())
        stack.extend(getattr(node, "children", None) or [])
    return found


def load(path: str | os.PathLike) -> DictConfig:
    """A config file from a run folder, checked and resolved (see `checked`)."""
    try:
        cfg = OmegaConf.load(path)
    except Exception as error:  # YAML that does not parse, or a python tag (!!python/object) YAML refuses
        raise UnsafeConfigError(
            f"{path} is not a config dnnlab can read ({' '.join(str(error).split())[:200]}). "
            f"A run folder's .hydra/config.yaml holds plain YAML; this one was damaged or written by something else."
        ) from None
    return checked(cfg, str(path))


def checked(cfg: DictConfig | str, source: str) -> DictConfig:
    """`cfg` resolved, if it names only allowed targets, resolvers and instantiation keys; else UnsafeConfigError.

    `source` names where the config came from (a file, or "the config inside CHECKPOINT") in the message.
    """
    if isinstance(cfg, str):
        try:
            cfg = OmegaConf.create(cfg)
        except Exception as error:
            raise UnsafeConfigError(f"{source} is not a config dnnlab can read ({' '.join(str(error).split())[:200]}).") from None
    if not isinstance(cfg, DictConfig):
        raise UnsafeConfigError(f"{source} is not a config dnnlab can read: it holds a {type(cfg).__name__}, not a mapping.")
    if trusted():
        return cfg
    targets, resolvers, keys = allowed()
    for key, _, value in entries(OmegaConf.to_container(cfg, resolve=False)):
        bad = [name for name in resolver_names(value) if name not in resolvers]
        if bad:
            refuse(source, f"{key}: {value!r} calls the interpolation resolver {bad[0]}, and dnnlab resolves only "
                           f"{', '.join(sorted(resolvers))} and plain ${{key}} references in a config it reads from disk")
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception as error:
        raise UnsafeConfigError(f"{source} does not resolve: {' '.join(str(error).split())[:200]}.") from None
    for key, name, value in entries(plain):
        if name == "_target_" and value is not None and (not isinstance(value, str) or value not in targets):
            refuse(source, f"{key} is {value!r}, which is not one of the callables dnnlab's own options use")
        elif name in INSTANTIATE_KEYS and name not in keys:
            refuse(source, f"it sets {key}, which dnnlab's own options never use")
    return OmegaConf.create(plain)


def refuse(source: str, why: str) -> None:
    raise UnsafeConfigError(
        f"dnnlab will not open {source}: {why}. A config read from a run folder or a checkpoint may only "
        f"name the classes and functions of dnnlab's packaged options (`dnnlab list` shows them), since any other "
        f"`_target_` or resolver can run code. If you wrote this config yourself and trust it, run again with "
        f"`dnnlab --trust-config …` (or DNNLAB_TRUST_CONFIG=1); the folder's metrics and summary open safely "
        f"with `dnnlab report`."
    )
