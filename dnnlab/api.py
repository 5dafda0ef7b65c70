"""Python entry points: `compose` a config like the CLI does, `train` it, get the summary back."""
from __future__ import annotations

import logging
import random
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dnnlab.data import Splits, load_data
from dnnlab.diagnostics import observer_hooks
from dnnlab.hooks import Hook
from dnnlab.optim import build_optimizer
from dnnlab.regularization import Regularizer
from dnnlab.rundir import RunDir, RunFolderHook, load_checkpoint
from dnnlab.schedules import build_schedule
from dnnlab.trainer import Trainer

log = logging.getLogger("dnnlab")


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `dnnlab train OVERRIDES` would run (Hydra's compose API)."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("dnnlab.conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but no CUDA GPU is visible; use trainer.device=auto or cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"trainer.device={name!r} is not valid; use auto, cpu or cuda")
    return torch.device(name)


def build_regularizers(cfg: DictConfig) -> list[Regularizer]:
    return [instantiate(node) for node in cfg.regularization.values()]


def build_model(cfg: DictConfig, data: Splits, regularizers: Sequence[Regularizer] = ()) -> nn.Module:
    """The configured architecture with its activation, normalization, dropout and initializer."""
    dropouts = [r.dropout_layer for r in regularizers if r.dropout_layer() is not None]
    if len(dropouts) > 1:
        raise ValueError("regularization lists both dropout and alpha_dropout; choose one")
    norm = cfg.normalization
    architecture = instantiate(cfg.model, _partial_=True)
    model = architecture(
        input_shape=tuple(data.input_shape),
        n_classes=data.n_classes,
        activation=lambda: instantiate(cfg.activation.module),
        norm=instantiate(norm.layer) if norm.layer is not None else None,
        norm_position=norm.position,
        dropout=dropouts[0] if dropouts else None,
    )
    instantiate(cfg.initializer)(model)
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


def resume_checkpoint(resume: str | Path) -> Path:
    """`resume=` names a run folder (→ its checkpoints/last.pt) or a checkpoint file."""
    path = Path(resume).expanduser()
    candidate = path / "checkpoints" / "last.pt" if path.is_dir() else path
    if not candidate.is_file():
        raise FileNotFoundError(
            f"resume={resume} is not a dnnlab run: expected a run folder holding checkpoints/last.pt, "
            f"or a .pt checkpoint file, but {candidate} does not exist"
        )
    return candidate


def build_trainer(cfg: DictConfig, run: RunDir, extra_hooks: Sequence[Hook] = ()) -> Trainer:
    """Everything `train` builds, wired together but not yet run."""
    seed_everything(cfg.seed)
    device = pick_device(cfg.trainer.device)
    data = load_data(cfg.data).to(device)
    regularizers = build_regularizers(cfg)
    model = build_model(cfg, data, regularizers).to(device)
    optimizer, clipper = build_optimizer(cfg.optimizer, model.parameters())
    steps_per_epoch = -(-len(data.train_y) // cfg.trainer.batch_size)
    schedule = build_schedule(cfg.schedule, optimizer, cfg.trainer.epochs, steps_per_epoch)
    hooks: list[Hook] = [r for r in regularizers if isinstance(r, Hook)]
    hooks.extend(observer_hooks(cfg, run))  # diagnostics, health verdicts, logger: before RunFolderHook
    hooks.append(RunFolderHook(run, cfg.trainer.monitor, cfg.trainer.monitor_mode, OmegaConf.to_yaml(cfg, resolve=True)))
    hooks.extend(extra_hooks)
    return Trainer(
        model, data, optimizer, clipper, schedule, regularizers, hooks,
        epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size,
        eval_batch_size=cfg.trainer.eval_batch_size, seed=cfg.seed,
    )


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one training job as `dnnlab train` does; returns the summary (also in summary.json)."""
    from dnnlab.console import ProgressBar, attach_console, console, results_table

    checkpoint = resume_checkpoint(cfg.resume) if cfg.resume else None
    # A resumed run continues in its own folder.
    run = RunDir(run_dir or (checkpoint.parent.parent if checkpoint else default_run_dir()))
    run.save_config(cfg)
    handlers = [run.attach_log(log), attach_console(log)]
    log.setLevel(logging.INFO)
    try:
        hooks = [ProgressBar(cfg.trainer.epochs)] if cfg.trainer.progress else []
        trainer = build_trainer(cfg, run, hooks)
        if checkpoint:
            state = load_checkpoint(checkpoint)
            trainer.load_state_dict(state)
            run.keep_metrics_through(trainer.epoch)
        log.info("run folder %s", run.path)
        summary = trainer.fit()
        console.print(results_table(summary))
        return summary
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
