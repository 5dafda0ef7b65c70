"""Python entry points: `compose` a config like the CLI does, `train` it, get the summary back."""
from __future__ import annotations

import contextlib
import json
import logging
import random
from datetime import datetime
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from dnnlab import transfer
from dnnlab.config import choices, schema
from dnnlab.config.overrides import config_error, config_search, group_options, parse_overrides, yaml_error
from dnnlab.engine import acceleration
from dnnlab.runs import record, sweeps
from dnnlab.data import Splits, load_data
from dnnlab.observe.diagnostics import logger_hooks, observer_hooks
from dnnlab.engine.hooks import Hook
from dnnlab.models import SELF_NORMALIZING_GROUPS, batch_norms, check_self_normalizing
from dnnlab.optim import build_optimizer
from dnnlab.pretrain import build_task
from dnnlab.regularization import Regularizer, constraints, penalties
from dnnlab.errors import ConfigError, UserError, did_you_mean
from dnnlab.runs.checkpoints import RunFolderHook, find_checkpoint, load_checkpoint, run_folder_of
from dnnlab.runs.resume import check_resume, restore
from dnnlab.runs.rundir import RunDir
from dnnlab.schedules import build_schedule
from dnnlab.engine.trainer import Trainer, batches

log = logging.getLogger("dnnlab")


def compose(overrides: Sequence[str] = (), config_dir: str | None = None, with_hydra: bool = False) -> DictConfig:
    """The config `dnnlab train [--config-dir DIR] OVERRIDES` would run (Hydra's compose API); ConfigError names
    a bad override or config file. `with_hydra` keeps Hydra's own node (`hydra.run.dir`, …).

    With `resume=RUN` it is the run's own config with the other overrides on top (see `resume_config`).
    """
    import yaml
    from hydra import compose as hydra_compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    overrides = list(overrides)
    resume = resume_override(overrides)
    if resume is not None:
        return resume_config(resume[1], [o for i, o in enumerate(overrides) if i != resume[0]])
    GlobalHydra.instance().clear()
    with config_search(config_dir):
        try:
            return hydra_compose("config", overrides=overrides, return_hydra_config=with_hydra)
        except HydraException as error:
            raise config_error(error, overrides) from error
        except yaml.YAMLError as error:  # a config file (a --config-dir one) that does not parse
            raise yaml_error(error) from error


def resume_override(overrides: Sequence[str]) -> tuple[int, str] | None:
    """(index, value) of a `resume=PATH` among `overrides`, or None."""
    for i, override in enumerate(parse_overrides(overrides)):
        if override.key_or_group == "resume" and not override.is_delete() and override.value() not in (None, ""):
            return i, str(override.value())
    return None


def resume_config(resume: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The config a resumed run continues with: the checkpoint's own (checked against the run's
    .hydra/config.yaml) with `overrides` on top. Overrides may change values (trainer.epochs=40), not groups."""
    checkpoint = find_checkpoint(resume)
    folder = run_folder_of(checkpoint)
    config = RunDir(folder, create=False).config_path if folder is not None else None
    cfg = record.run_config(config if config is not None and config.is_file() else None,
                            load_checkpoint(checkpoint), checkpoint)
    OmegaConf.set_struct(cfg, True)
    if OmegaConf.select(cfg, "trainer.overwrite"):
        cfg.trainer.overwrite = False  # it said how the run started; continuing it moves nothing aside
    for override in parse_overrides(overrides):
        apply_resume_override(cfg, override)
    with open_dict(cfg):
        cfg.resume = str(resume)
    return cfg


def apply_resume_override(cfg: DictConfig, override: Any) -> None:
    """One `key=value` (or `+key=value`) override on a resumed run's config."""
    key = override.key_or_group
    if ("/" in key or key.startswith("hydra") or group_options(key) or override.is_sweep_override()
            or override.is_delete()):
        raise ConfigError(
            f"{override.input_line}: resume= continues a run with the config it was trained with, so only values "
            f"may change (e.g. trainer.epochs=40), not config groups, Hydra settings or sweeps. "
            f"Start a new run (without resume=) for that."
        )
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not override.is_add() and not (isinstance(node, DictConfig) and leaf in node):
        keys = list(node.keys()) if isinstance(node, DictConfig) else []
        raise ConfigError(
            f"{key} is not a key of the resumed run's config.{did_you_mean(leaf, keys, prefix=parent)} "
            f"Valid keys {'under ' + parent if parent else 'at the top level'}: {', '.join(map(str, keys))}."
        )
    with open_dict(cfg):
        OmegaConf.update(cfg, key, override.value(), merge=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str, option: str = "trainer.device=") -> torch.device:
    """`auto` is CUDA when present, else CPU; errors name the setting as `option` (`--device ` for eval/export)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not choices.is_device(name):
        raise ConfigError(f"{option}{name!r} is not valid; use {choices.DEVICE_VALID}")
    index = int(name.partition(":")[2] or 0)
    if name.startswith("cuda") and index >= torch.cuda.device_count():
        raise ConfigError(f"{option}{name} but this machine shows {torch.cuda.device_count()} CUDA GPU(s); "
                         f"use {option}auto or {option}cpu")
    return torch.device(name)


def build_regularizers(cfg: DictConfig) -> list[Regularizer]:
    return [instantiate(node) for node in cfg.regularization.values()]


def build_model(cfg: DictConfig, data: Splits, regularizers: Sequence[Regularizer] = ()) -> nn.Module:
    """The configured architecture with its activation, normalization, dropout and initializer."""
    dropouts = [r.dropout_layer for r in regularizers if r.dropout_layer() is not None]
    if len(dropouts) > 1:
        raise ConfigError("regularization lists both dropout and alpha_dropout; choose one")
    norm = cfg.normalization
    architecture = instantiate(transfer.architecture_config(cfg.model), _partial_=True)
    model = architecture(
        input_shape=tuple(data.input_shape),
        n_classes=data.n_classes,
        activation=lambda: instantiate(cfg.activation.module),
        norm=instantiate(norm.layer) if norm.layer is not None else None,
        norm_position=norm.position,
        dropout=dropouts[0] if dropouts else None,
    )
    instantiate(cfg.initializer)(model)
    transfer.apply(model, cfg.model, cfg.data)  # model.pretrained / model.freeze
    return model


def default_run_dir() -> Path:
    """Hydra's output folder when Hydra launched us, else outputs/<date>/<time>[-N]."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    base = Path("outputs") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


@contextlib.contextmanager
def setup_errors() -> Any:
    """Builders raise a ConfigError (a UserError) where they find a bad setting; a constructor that
    `instantiate` calls has it wrapped in Hydra's InstantiationException, which is unwrapped here.
    Anything else is a bug and keeps its traceback."""
    from hydra.errors import InstantiationException

    try:
        yield
    except InstantiationException as error:
        cause = user_error_behind(error)
        if cause is None:
            raise
        raise cause from error


def user_error_behind(error: BaseException) -> UserError | None:
    """The UserError that `error` was raised from (its __cause__/__context__ chain), or None."""
    seen: BaseException | None = error
    while seen is not None and not isinstance(seen, UserError):
        seen = seen.__cause__ or seen.__context__
    return seen


def check_last_batch(model: nn.Module, n: int, batch_size: int) -> None:
    """ConfigError when batch norm over vectors would see a training batch of one sample (it cannot normalize it).

    Refused rather than dropped: dropping it would train fewer samples than the config and the record say.
    """
    norm = next((name for name, m in batch_norms(model) if isinstance(m, nn.BatchNorm1d)), None)
    if norm is None or n % batch_size != 1:
        return
    sizes = sorted((b for b in range(2, min(n, 2 * batch_size) + 1) if n % b != 1), key=lambda b: (abs(b - batch_size), b))
    split = f"{n} = {n // batch_size} × {batch_size} + 1" if n > 1 else "it holds 1 sample"
    fix = f"Use trainer.batch_size={' or '.join(map(str, sorted(sizes[:2])))}" if sizes else "Use more training data"
    raise ConfigError(
        f"Batch norm ({norm}) cannot train on a batch of 1 sample, and trainer.batch_size={batch_size} leaves a last "
        f"training batch of 1 ({split} training samples). {fix}, so that no batch holds a single sample "
        f"(or change data.limit / data.val_fraction)."
    )


def build_trainer(cfg: DictConfig, run: RunDir, extra_hooks: Sequence[Hook] = (), data: Splits | None = None) -> Trainer:
    """Everything `train` builds, wired together but not yet run; `data` replaces cfg.data's (benchmarks)."""
    seed_everything(cfg.seed)
    check_self_normalizing(**{group: cfg[group] for group in SELF_NORMALIZING_GROUPS})
    device = pick_device(cfg.trainer.device)
    task = build_task(cfg.model)
    raw = data if data is not None else load_data(cfg.data)
    data = task.prepare(raw).to(device)
    regularizers = build_regularizers(cfg)
    model = build_model(cfg, data, regularizers).to(device)
    fast = cfg.trainer
    capturable = acceleration.capture_blocker(fast.cuda_graph, device, fast.compile) is None
    optimizer, clipper = build_optimizer(cfg.optimizer, transfer.param_groups(model), capturable=capturable)
    check_last_batch(model, len(data.train_y), cfg.trainer.batch_size)
    schedule = build_schedule(cfg.schedule, optimizer, cfg.trainer.epochs, batches(len(data.train_y), cfg.trainer.batch_size))
    hooks: list[Hook] = [r for r in regularizers if isinstance(r, Hook)]
    hooks.extend([*task.hooks(cfg.optimizer), *transfer.hooks(cfg.model, model)])
    hooks.append(record.DataFingerprint(raw, cfg.data.get("root")))  # in every checkpoint; checked on resume
    hooks.extend(observer_hooks(run, cfg.trainer.diagnostics, cfg.activation.family, cfg.seed))
    hooks.append(RunFolderHook(run, cfg.trainer.monitor, cfg.trainer.monitor_mode, OmegaConf.to_yaml(cfg, resolve=True)))
    hooks.extend(logger_hooks(cfg, run))
    hooks.extend(extra_hooks)  # each hook runs in its declared stage (engine.hooks.STAGES), whatever the order here
    return Trainer(
        model, data, optimizer, clipper, schedule, penalties(regularizers), constraints(regularizers), hooks,
        epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size,
        eval_batch_size=cfg.trainer.eval_batch_size, seed=cfg.seed,
        loss_fn=task.loss_fn, score_fn=task.score_fn,
        precision=fast.precision, compile=fast.compile, cuda_graph=fast.cuda_graph, channels_last=fast.channels_last,
    )


@contextlib.contextmanager
def opened_run(cfg: DictConfig, run_dir: str | Path | None = None, hydra_cfg: DictConfig | None = None, *,
               extra_hooks: Sequence[Hook] = (), data: Splits | None = None, console_log: bool = True,
               log_filter: logging.Filter | None = None) -> Iterator[Trainer]:
    """A run ready to `fit`: its folder claimed and locked (for the whole `with`), its trainer built (restored
    on `resume=`), its config recorded in .hydra/. Every refusal comes before the folder changes.

    `data`: the raw splits, loaded once for a stack's members; `console_log`/`log_filter`: a stack shows
    warnings once and gives each member's train.log only its own lines.
    """
    from dnnlab.observe.console import attach_console

    schema.validate(cfg)  # before anything is built or written
    threads = sweeps.thread_budget(cfg.trainer.get("threads"), sweeps.sweep_job())
    if threads:
        torch.set_num_threads(threads)  # parallel sweep jobs must not oversubscribe the cores
    checkpoint = find_checkpoint(cfg.resume) if cfg.resume else None
    overwrite = bool(cfg.trainer.get("overwrite", False))
    if checkpoint is not None and overwrite:
        raise ConfigError(f"resume={cfg.resume} continues that run in its own folder, and trainer.overwrite=true "
                          f"would move a run aside to start a new one there: drop one of the two.")
    # A resumed run continues in its own folder.
    run = RunDir(run_dir or (checkpoint and run_folder_of(checkpoint)) or default_run_dir())
    if checkpoint is None:
        run.check_free(overwrite)  # before the lock: a refusal writes nothing
    with run.lock():
        run.background = True  # checkpoints go to disk while training goes on; the lock's end waits for them
        moved = None
        if checkpoint is None and run.holds_run():  # trainer.overwrite=true (or a run that appeared since the check)
            run.check_free(overwrite)
            moved = run.move_aside()
        state = load_checkpoint(checkpoint) if checkpoint else None
        if state is not None:
            check_resume(cfg, state, checkpoint)
        handlers = [run.attach_log(log)]
        if log_filter is not None:
            handlers[0].addFilter(log_filter)
        if console_log:
            handlers.append(attach_console(log))
        log.setLevel(logging.INFO)
        try:
            if moved is not None:
                log.warning("trainer.overwrite=true: the run that was in %s is now in %s", run.path, moved)
            with setup_errors():
                trainer = build_trainer(cfg, run, extra_hooks, data)
            if state is not None:
                restore(trainer, state, checkpoint)
                check_resume(cfg, state, checkpoint, model=True)
            # Everything fits: from here on the run folder changes.
            if state is not None:  # metrics first: a damaged metrics.jsonl stops the resume before the config changes
                run.keep_metrics_through(trainer.epoch)
                run.summary_path.unlink(missing_ok=True)  # the earlier process's conclusion: this one writes its own
                log.info("resuming %s from epoch %d (%s)", run.path, trainer.epoch, checkpoint)
            run.save_config(cfg, overwrite=True)
            if state is None and hydra_cfg is not None:
                run.save_launch(hydra_cfg)
            log.info("run folder %s", run.path)
            yield trainer
        finally:
            for handler in handlers:
                log.removeHandler(handler)
                handler.close()


def train(cfg: DictConfig, run_dir: str | Path | None = None, *, hydra_cfg: DictConfig | None = None) -> dict[str, Any]:
    """Run one training job as `dnnlab train` does; returns the summary (also in summary.json).

    `hydra_cfg`: Hydra's config of the job that launched it; a new run records it in .hydra/.
    """
    from dnnlab.observe.console import ProgressBar, console, results_table

    progress = [ProgressBar(cfg.trainer.epochs)] if cfg.trainer.progress else []
    with opened_run(cfg, run_dir, hydra_cfg, extra_hooks=progress) as trainer:
        summary = trainer.fit()
        if summary["status"] == "interrupted":
            log.warning("To continue exactly from there: dnnlab train resume=%s", summary.get("run_dir"))
        console.print(results_table(summary))
        return summary


@dataclass
class StackMember:
    """One job of a stack: its composed config (resume_config'd when it resumes), its folder, its Hydra config."""

    cfg: DictConfig
    run_dir: Path
    hydra_cfg: DictConfig | None = None


# What the members of one stack must share: one data set, batch order size and device for all of them.
STACK_SHARED = ("data", "trainer.batch_size", "trainer.device")


def check_shared(members: Sequence[StackMember]) -> None:
    """ConfigError when the members differ in a value a stack has only one of (STACK_SHARED)."""
    for key in STACK_SHARED:
        values = {json.dumps(OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node)
                  for node in (OmegaConf.select(m.cfg, key) for m in members)}
        if len(values) > 1:
            raise ConfigError(f"The members of a stack share one {key}, and these differ ({', '.join(sorted(values))}); "
                              f"train them in separate stacks (hydra/launcher=stacked separates them by itself).")


def train_stack(members: Sequence[StackMember], min_speedup: float | None = None) -> list[dict[str, Any] | BaseException]:
    """Train `members` as one stacked model (dnnlab.engine.stacked); each one's summary, or the error it failed with.

    Each member's folder is claimed, built and recorded exactly as `train` does it, so it is a solo run's
    folder. Members whose stack cannot be built, or whose steps measure less than `min_speedup` × faster than one after
    another, train one after another here, with a line saying why. A signal stops all of them.
    """
    from dnnlab.engine.stacked.trainer import MemberLabel, OnlyMember, StackedTrainer, as_member
    from dnnlab.observe.console import attach_console, console, stack_table

    from dnnlab.engine.stacked.sizing import MIN_SPEEDUP

    check_shared(members)
    try:  # one copy for all, on the device: the stack and every member's own evaluation share it
        raw = load_data(members[0].cfg.data).to(pick_device(members[0].cfg.trainer.device)) if members else None
    except Exception as error:  # missing data, a bad device: every member's own failure, as in a solo sweep
        return [error] * len(members)
    results: list[dict[str, Any] | BaseException | None] = [None] * len(members)
    labels = {k: str(m.run_dir) for k, m in enumerate(members)}
    screen = attach_console(log)
    screen.addFilter(MemberLabel(labels))
    screen.setFormatter(logging.Formatter("%(member)s%(message)s"))
    try:
        with contextlib.ExitStack() as opened:
            trainers: dict[int, Trainer] = {}
            for k, member in enumerate(members):
                try:
                    with as_member(k):
                        trainers[k] = opened.enter_context(opened_run(
                            member.cfg, member.run_dir, member.hydra_cfg, data=raw, console_log=False,
                            log_filter=OnlyMember(k)))
                except Exception as error:  # this member's mistake (a taken folder, a bad value): the others train
                    results[k] = error
            if trainers:
                speed = MIN_SPEEDUP if min_speedup is None else min_speedup
                outcomes = StackedTrainer(trainers, speed, progress=members[0].cfg.trainer.progress).fit()
                results = [outcomes.get(k, result) for k, result in enumerate(results)]
        console.print(stack_table(results, labels))
        return results
    finally:
        log.removeHandler(screen)
