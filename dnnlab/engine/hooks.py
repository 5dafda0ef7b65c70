"""The named hook points of the training loop; extras (logging, checkpoints, early stopping,
diagnostics, progress) subclass `Hook` and override what they need, and declare the stage they run in."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from dnnlab.engine.trainer import Trainer

# The keys of every epoch's metrics row, in order: what `trainer.monitor` and early stopping may watch.
# Hooks may add more (diagnostics: grad_norm/<layer>, …). Torch-free, so config validation can read it.
EPOCH_METRICS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_s", "samples_per_s")

# The order hooks run in at every event, declared once: each hook class names its `stage`; the trainer runs
# them stage by stage, in the order they were given within a stage.
STAGES = (
    "measure",  # add to (or correct) each epoch's row and the summary: diagnostics, a task's metrics, health verdicts
    "steer",  # act on the finished row: early stopping (which may watch a per-layer metric), unfreezing, pretraining
    "record",  # write the row, checkpoints and summary (the run folder), with what every checkpoint holds
    "report",  # read what was recorded: loggers (the finished summary), the progress bar, any undeclared hook
)


class Hook:
    """Extension point of `Trainer.fit`; every method is optional.

    `key` names the hook's state in every checkpoint (`state["hooks"][key]`): a hook with state declares it,
    so renaming or moving its class keeps old checkpoints loading. It defaults to the class name, which
    checkpoints written before hooks declared a key used.
    """

    key: str | None = None
    stage: str = "report"  # one of STAGES

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.stage not in STAGES:
            raise TypeError(f"{cls.__qualname__}.stage={cls.stage!r} is not one of the hook stages {STAGES}")

    @property
    def state_key(self) -> str:
        return self.key or type(self).__name__

    def on_fit_start(self, trainer: "Trainer") -> None:
        """Before the first epoch (after a resume has restored state)."""

    def on_epoch_start(self, trainer: "Trainer") -> None:
        """Before an epoch's first step."""

    def on_epoch_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        """After validation: may add keys to `metrics` or stop training via `trainer.stop(...)`."""

    def on_train_end(self, trainer: "Trainer") -> None:
        """After the last epoch, before the test evaluation (e.g. restore the best weights)."""

    def on_fit_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        """After the test evaluation: may add keys to `summary` before it is written."""

    def state_dict(self) -> dict[str, Any]:
        """State that must survive a resume (saved in every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


def in_stage_order(hooks: Iterable[Hook]) -> list[Hook]:
    """`hooks` sorted by their declared stage (stable: the given order within a stage)."""
    return sorted(hooks, key=lambda hook: STAGES.index(hook.stage))
