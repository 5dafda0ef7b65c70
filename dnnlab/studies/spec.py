"""What a study is: the `study` node of a `study` config-group option, checked before anything runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dnnlab.config.choices import MONITOR_MODES
from dnnlab.errors import UserError, did_you_mean
from dnnlab.studies.metrics import DERIVED, SUMMARY_METRICS, default_mode

KINDS = ("order", "better", "above", "below")


class StudyError(UserError):
    """A study name, spec or folder that does not work."""


@dataclass
class Expectation:
    """One claim the numbers are held to: an order of arms, a ≻ b, or an arm's mean beyond a threshold."""

    metric: str
    mode: str  # max: higher is better; min: lower is better
    order: list[str] = field(default_factory=list)  # order / better-than: best first
    arm: str | None = None  # above / below
    above: float | None = None
    below: float | None = None

    def describe(self) -> str:
        better = ">" if self.mode == "max" else "<"
        if self.order:
            return f"{self.metric}: " + f" {better} ".join(self.order)
        bound = f"> {self.above:g}" if self.above is not None else f"< {self.below:g}"
        return f"{self.metric} of {self.arm} {bound}"


@dataclass
class Study:
    name: str
    claim: str
    source: str
    arms: dict[str, list[str]]
    expect: list[Expectation]
    metric: str
    seeds: int
    stages: dict[str, list[str]] = field(default_factory=dict)
    also: list[str] = field(default_factory=list)
    budget: str = ""
    target: float | None = None  # the validation accuracy epochs_to_target counts to
    mc_passes: int = 30

    @property
    def metrics(self) -> list[str]:
        """Every metric the report needs, the main one first."""
        seen = dict.fromkeys([self.metric, *(e.metric for e in self.expect), *self.also])
        return list(seen)


def from_config(name: str, cfg: DictConfig) -> Study:
    """The study in `cfg.study` (composed with study=NAME); StudyError names what is missing or wrong."""
    node = cfg.get("study")
    if not isinstance(node, DictConfig):
        raise StudyError(f"The config has no study (study=null); run `dnnlab study NAME` with one of: {', '.join(names())}.")
    spec = OmegaConf.to_container(node, resolve=False)
    where = f"study {name}"
    for key in ("claim", "source", "arms", "expect"):
        if not spec.get(key):
            raise StudyError(f"{where} has no study.{key}; a study needs claim, source, arms, expect (see dnnlab/conf/study/activations.yaml).")
    arms = spec["arms"]
    if not isinstance(arms, dict) or not all(isinstance(v, list) for v in arms.values()):
        raise StudyError(f"{where}: study.arms must map each arm's name to a list of overrides, e.g. elu: [activation=elu].")
    stages = spec.get("stages") or {}
    if not isinstance(stages, dict) or not all(isinstance(v, list) for v in stages.values()):
        raise StudyError(f"{where}: study.stages must map each stage's name to a list of overrides.")
    seeds = spec.get("seeds", 3)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise StudyError(f"study.seeds={seeds!r} is not valid: it must be an integer ≥ 1 (the number of seeds per arm).")
    metric = spec.get("metric") or "test_acc"
    mode = spec.get("mode") or default_mode(metric)
    raw = spec["expect"] if isinstance(spec["expect"], list) else [spec["expect"]]
    expect = [expectation(where, e, metric, mode, list(arms)) for e in raw]
    also = list(spec.get("also") or [])
    for named in dict.fromkeys([metric, *(e.metric for e in expect), *also]):
        if named not in SUMMARY_METRICS and named not in DERIVED:
            valid = [*SUMMARY_METRICS, *DERIVED]
            raise StudyError(f"{where}: the metric {named!r} is neither a summary.json number nor a derived metric, so "
                             f"every arm would train for nothing.{did_you_mean(named, valid)} Valid: {', '.join(valid)}.")
    return Study(name=name, claim=str(spec["claim"]), source=str(spec["source"]), arms={k: list(v) for k, v in arms.items()},
                 expect=expect, metric=metric, seeds=seeds, stages={k: list(v) for k, v in stages.items()},
                 also=also, budget=str(spec.get("budget") or ""),
                 target=spec.get("target"), mc_passes=int(spec.get("mc_passes") or 30))


def expectation(where: str, raw: Any, metric: str, mode: str, arms: list[str]) -> Expectation:
    """One `expect` entry: {order: [a, b, …]} | {better: a, than: b} | {arm: a, above: x} | {arm: a, below: x}."""
    if not isinstance(raw, dict) or not set(raw) & set(KINDS):
        raise StudyError(f"{where}: study.expect={raw!r} is not valid: use {{order: [a, b, c]}}, {{better: a, than: b}}, "
                         f"or {{arm: a, above: x}} / {{arm: a, below: x}} (each may add metric: and mode: max|min).")
    own = raw.get("metric")
    e = Expectation(metric=own or metric, mode=raw.get("mode") or (default_mode(own) if own else mode))
    if e.mode not in MONITOR_MODES:
        raise StudyError(f"{where}: mode={e.mode!r} is not valid: use max (higher is better) or min.")
    if "order" in raw:
        e.order = list(raw["order"])
    elif "better" in raw:
        e.order = [raw["better"], raw.get("than")]
    else:
        e.arm, e.above, e.below = raw.get("arm"), raw.get("above"), raw.get("below")
    named = e.order or [e.arm]
    for arm in named:
        if arm not in arms:
            raise StudyError(f"{where}: study.expect names the arm {arm!r}, which is not in study.arms."
                             f"{did_you_mean(str(arm), arms)} Arms: {', '.join(arms)}.")
    if e.order and len(e.order) < 2:
        raise StudyError(f"{where}: study.expect's order needs at least two arms.")
    return e


def names() -> list[str]:
    """Every study: dnnlab's and the user's (configs/study/)."""
    from dnnlab.config.catalog import options

    return list(options("study"))


def check_name(name: str) -> None:
    valid = names()
    if name not in valid:
        raise StudyError(f"There is no study {name!r}.{did_you_mean(name, valid)} Valid: {', '.join(valid)} "
                         f"(`dnnlab study list` shows each one's claim).")


def load(name: str, overrides: list[str] = ()) -> tuple[Study, DictConfig]:
    """The study NAME with `overrides`, and the config its runs start from."""
    from dnnlab.api import compose

    check_name(name)
    try:
        cfg = compose([f"study={name}", *overrides])
    except UserError:
        raise
    except Exception as error:  # a study file that is not valid YAML, or not a valid config
        raise StudyError(f"The study {name} cannot be read as a config: {' '.join(str(error).split())}") from None
    return from_config(name, cfg), cfg
