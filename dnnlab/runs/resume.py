"""Continuing a run (`resume=`): what may change, and loading its checkpoint into a freshly built trainer.

A resume continues the run exactly as it was trained: the checkpoint restores the weights, optimizer,
schedule and random state its own values produced, and the folder records one config, so every value that
would be overridden by the restored state is refused, before anything is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from dnnlab.config import schema
from dnnlab.errors import CheckpointError, ConfigError, one_line
from dnnlab.runs.checkpoints import check_resumable, model_mismatch

if TYPE_CHECKING:
    from dnnlab.engine.trainer import Trainer


def restore(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """Load a checkpoint into a freshly built trainer; CheckpointError names what does not fit."""
    check_resumable(state, path)
    problems = model_mismatch(trainer.model, state["model"])
    if problems:
        raise CheckpointError(
            f"The checkpoint {path} does not fit the model this config builds: {'; '.join(problems)}. "
            f"Resume with the run's own config (drop overrides of model, normalization or data), or start a new run."
        )
    check_schedule_length(trainer, state["schedule"])
    try:
        trainer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(
            f"The checkpoint {path} does not fit this run's optimizer, schedule or hooks ({one_line(error)}). "
            f"Resume with the run's own config, or start a new run."
        ) from error


# What `resume=` may set differently from the run it continues: more epochs, and settings that change how
# it computes, not what. Every other value is held by the restored state (optimizer and schedule
# hyper-parameters, RNG, weights) or shaped the epochs already run, and the folder records one config.
RESUME_MAY_CHANGE = (
    "resume", "trainer.epochs", "trainer.device", "trainer.threads", "trainer.progress", "trainer.diagnostics",
    "trainer.eval_batch_size", "trainer.compile", "trainer.cuda_graph", "trainer.channels_last",
    "optimizer.implementation", "data.root", "data.download",
    "trainer.overwrite",  # how the run's folder was claimed at its start; a resume claims nothing
)


def check_resume(cfg: DictConfig, state: dict[str, Any], path: Path, model: bool = False) -> None:
    """ConfigError, before anything is written, for a resume that cannot continue `state` exactly.

    `model=False`: fewer epochs than done, or a changed value outside `model`; `model=True` (once the
    weights fit): a changed `model` value, which the loaded weights would override.
    """
    done = int(state.get("epoch", 0))
    if not model and cfg.trainer.epochs < done:
        raise ConfigError(
            f"trainer.epochs={cfg.trainer.epochs} is fewer than the {done} epochs {path} has already trained; "
            f"resume= only continues a run (trainer.epochs={done} or more). Its metrics.jsonl keeps every epoch; "
            f"for a shorter run start a new one."
        )
    changed = {k: v for k, v in changed_values(cfg, state).items() if k.startswith("model.") == model}
    if changed:
        named = "; ".join(f"{k}={asked} (the run was trained with {ran})" for k, (ran, asked) in changed.items())
        raise ConfigError(
            f"resume= continues {path} exactly as it was trained, so these values cannot change: {named}. The "
            f"checkpoint restores the weights, optimizer, schedule and random state its own values produced, and the "
            f"run folder would record a value that never ran. Only trainer.epochs (at least {done}) and settings that "
            f"do not change the numbers may differ ({', '.join(RESUME_MAY_CHANGE[2:])}). To train on with other "
            f"values, start a new run from its weights: model.pretrained={path} plus the new values."
        )


def changed_values(cfg: DictConfig, state: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key → (value the checkpoint was trained with, value `cfg` asks for), outside RESUME_MAY_CHANGE."""
    if not state.get("config"):
        return {}  # a checkpoint without its config: nothing to compare with
    ran = schema.flatten(OmegaConf.to_container(OmegaConf.create(state["config"]), resolve=True))
    asked = schema.flatten(OmegaConf.to_container(cfg, resolve=True))
    unset = "nothing"
    return {k: (ran.get(k, unset), asked.get(k, unset)) for k in sorted(ran.keys() | asked.keys())
            if ran.get(k, unset) != asked.get(k, unset) and k not in RESUME_MAY_CHANGE}


def check_schedule_length(trainer: Trainer, saved: dict[str, Any]) -> None:
    """A schedule planned over the run's length (1cycle, cosine) cannot be stretched on resume."""
    scheduler = trainer.schedule.scheduler
    for key in ("total_steps", "T_max"):
        if key in saved and scheduler is not None and getattr(scheduler, key, saved[key]) != saved[key]:
            raise ConfigError(
                f"This run's schedule plans the learning rate over its whole length ({key}={saved[key]}), so "
                f"trainer.epochs and trainer.batch_size cannot change on resume (they give {key}="
                f"{getattr(scheduler, key)}). Resume with the run's own values, or start a new run; "
                f"schedule=none, power, exponential, piecewise and performance can be extended."
            )
