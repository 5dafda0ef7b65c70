"""The training loop. `Trainer.fit` reads top to bottom; extras hang off `Hook`s.

Speed by design: the data already lives on the device, batches are taken by index, per-step
losses accumulate on the device, and the host reads them once per epoch. The opt-in fast paths
(bf16, torch.compile, channels_last, a CUDA graph of `update`) live in dnnlab.engine.acceleration.

Stopping: SIGINT/SIGTERM end the loop before the next step. A partial epoch is abandoned, never
checkpointed: `last.pt` always holds an epoch boundary (written at every epoch end and at the
start), so a resume from it replays the abandoned epoch exactly. A non-finite loss is seen when the
epoch's losses are read (no per-step sync); the run stops there with the exact step recorded.
A signal after the last epoch, before the test result is in, also ends the run `interrupted` (test
split not evaluated; `resume=` evaluates it): a signal is never answered with `completed`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from dnnlab.engine import acceleration
from dnnlab.data import Splits
from dnnlab.errors import one_line
from dnnlab.engine.hooks import EPOCH_METRICS, Hook
from dnnlab.optim import GradClipper, load_optimizer_state
from dnnlab.regularization import weight_tensors
from dnnlab.schedules import Schedule

log = logging.getLogger("dnnlab")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def batches(n: int, batch_size: int) -> int:
    """Optimizer steps in an epoch of `n` samples (the last batch may be smaller)."""
    return math.ceil(n / batch_size)


def count_correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Number of samples whose arg-max class is the label."""
    return (logits.argmax(1) == y).sum()


@contextlib.contextmanager
def stop_on_signals(interrupt: Callable[[int], None]) -> Iterator[None]:
    """SIGINT/SIGTERM → `interrupt(signum)`; a second one ends the process at once (atomic writes keep files whole)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return

    def handler(signum: int, frame: Any) -> None:
        interrupt(signum)
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Trainer:
    """Trains `model` on `data` with the given optimizer, clipping, schedule, penalties and constraints.

    `penalties`: each maps the model's weight tensors to a term added to the loss; `constraints`: each
    acts on the model after every optimizer step (see dnnlab.regularization.penalties / constraints).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Splits,
        optimizer: torch.optim.Optimizer,
        clipper: GradClipper,
        schedule: Schedule,
        penalties: Sequence[Callable[[list[torch.Tensor]], torch.Tensor]] = (),
        constraints: Sequence[Callable[[nn.Module], None]] = (),
        hooks: Sequence[Hook] = (),
        epochs: int = 10,
        batch_size: int = 32,
        eval_batch_size: int = 2048,
        seed: int = 0,
        loss_fn: nn.Module | None = None,
        score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        precision: str = "fp32",
        compile: bool | str = False,
        cuda_graph: bool = False,
        channels_last: bool = False,
    ):
        self.model, self.data, self.optimizer = model, data, optimizer
        self.clipper, self.schedule = clipper, schedule
        self.penalties, self.constraints = list(penalties), list(constraints)
        self.hooks = list(hooks)
        self.epochs, self.batch_size, self.eval_batch_size = epochs, batch_size, eval_batch_size
        self.device = data.train_x.device
        # train_loss is the data loss alone: steps whose optimized loss (with penalties) is NaN/inf are
        # counted on the device and read with the epoch's numbers (metrics `optimized_loss_nonfinite_steps`).
        self.nonfinite_optimized = torch.zeros((), dtype=torch.long, device=self.device) if self.penalties else None
        # Classification by default; other tasks (reconstruction, auxiliary) bring their own pair.
        self.loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
        self.score_fn = score_fn if score_fn is not None else count_correct
        self.weights = weight_tensors(model)
        # A generator of its own, so shuffling is independent of dropout's RNG draws.
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.status = "running"
        self.stop_reason = ""
        self.interrupted: int | None = None  # the signal that asked the loop to stop
        self.notes: dict[str, Any] = {}  # extra summary fields contributed by hooks
        self.wall_s_before = 0.0  # wall time of earlier processes of this run, up to the checkpoint resumed
        self.started: float | None = None  # perf_counter when this process's `fit` began
        self.setup_fast_paths(precision, compile, cuda_graph, channels_last)

    def setup_fast_paths(self, precision: str, compile: bool | str, cuda_graph: bool, channels_last: bool) -> None:
        """bf16 autocast, torch.compile, channels_last and the CUDA-graph step (see dnnlab.engine.acceleration)."""
        if channels_last:
            blocker = acceleration.channels_last_blocker(self.model)
            if blocker:
                acceleration.fallback(self.notes, "trainer.channels_last", blocker)
            else:
                self.model.to(memory_format=torch.channels_last)  # in place: the optimizer keeps its parameters
                self.data = self.data.channels_last()
                acceleration.record(self.notes, "trainer.channels_last", "on")
        self.autocast = acceleration.autocast(self.device, precision, cache=not cuda_graph)
        if precision != "fp32":
            acceleration.record(self.notes, "trainer.precision", precision)
        mode = acceleration.compile_mode(compile)
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        if mode:
            self.forward = acceleration.CompiledForward(self.model, mode, self.notes)
            acceleration.record(self.notes, "trainer.compile", f"on ({mode})")
        self.step_graph: acceleration.StepGraph | None = None
        if cuda_graph:
            blocker = acceleration.graph_blocker(self.device, mode) or acceleration.optimizer_blocker(self.optimizer)
            if blocker:
                acceleration.fallback(self.notes, "trainer.cuda_graph", blocker)
            else:
                self.use_step_graph()
                acceleration.record(self.notes, "trainer.cuda_graph", "on (not captured yet)")
        self.run_step: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = self.step_graph or self.eager_step

    def use_step_graph(self, recorder: Any = None) -> None:
        """Run every full batch's step through a CUDA graph of `update_at` (`recorder`: tests emulate one)."""
        self.step_graph = acceleration.StepGraph(self.update_at, self.after_step, self.model, self.optimizer,
                                                 self.batch_size, self.device, self.notes, recorder)
        self.run_step = self.step_graph

    @property
    def steps_per_epoch(self) -> int:
        return batches(len(self.data.train_y), self.batch_size)

    def stop(self, status: str, reason: str) -> None:
        """Ask the loop to end after the current epoch with `status`."""
        self.status, self.stop_reason = status, reason

    def call_hooks(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    def interrupt(self, signum: int) -> None:
        """Ask the loop to stop before its next step (what SIGINT/SIGTERM do during `fit`)."""
        self.interrupted = signum

    def stop_on_signals(self) -> contextlib.AbstractContextManager[None]:
        return stop_on_signals(self.interrupt)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train until `epochs`, a stop (early stopping, divergence, a signal) or an error; returns the summary.

        On an exception the summary is written with status `failed` and the error, then it is re-raised.
        """
        self.started = time.perf_counter()
        with self.stop_on_signals():
            try:
                self.call_hooks("on_fit_start")
                self.run_epochs()
            except Exception as error:
                self.fail(error)
                raise
            return self.conclude()

    def fail(self, error: BaseException) -> None:
        """End the run `failed` with `error`, writing its summary when that still works."""
        self.status, self.stop_reason = "failed", one_line(error)
        self.notes["error"] = one_line(error)
        with contextlib.suppress(Exception):  # the summary is a courtesy; the error is what matters
            self.call_hooks("on_train_end")
            self.finish(time.perf_counter() - self.started)

    def conclude(self) -> dict[str, Any]:
        """After the last epoch (or a stop): on_train_end, the test evaluation and the summary."""
        if self.status == "running":
            self.status = "completed"
        self.call_hooks("on_train_end")
        return self.finish(time.perf_counter() - self.started)

    def run_epochs(self) -> None:
        while self.status == "running" and self.epoch < self.epochs:
            if self.interrupted is not None:
                self.stopped_by_signal(partial_epoch=False)
                break
            self.call_hooks("on_epoch_start")
            boundary_step = self.step
            lr = self.optimizer.param_groups[0]["lr"]
            t0 = time.perf_counter()
            train_loss, train_acc, finite_steps = self.train_epoch()
            if self.interrupted is not None:
                self.step = boundary_step  # the partial epoch is abandoned: last.pt holds the boundary
                self.stopped_by_signal(partial_epoch=True)
                break
            val_loss, val_acc = self.evaluate(self.data.val_x, self.data.val_y)
            # The one host-device sync of the epoch.
            counted = [] if self.nonfinite_optimized is None else [self.nonfinite_optimized.float()]
            numbers = torch.stack([train_loss, train_acc, val_loss, val_acc, finite_steps.float(), *counted]).tolist()
            self.end_epoch(boundary_step, lr, numbers, time.perf_counter() - t0)

    def end_epoch(self, boundary_step: int, lr: float, numbers: list[float], epoch_s: float) -> None:
        """Count the epoch, build its metrics row from `numbers` (train loss, train acc, val loss, val acc, finite
        steps[, non-finite optimized-loss steps]), catch divergence, step the epoch schedule, call the hooks.

        The stacked loop (dnnlab.engine.stacked) calls it for each member with that member's numbers.
        """
        self.epoch += 1
        values = (self.epoch, self.step, float(lr), *numbers[:4], epoch_s, len(self.data.train_y) / epoch_s)
        metrics = dict(zip(EPOCH_METRICS, values, strict=True))
        if len(numbers) > 5:
            metrics["optimized_loss_nonfinite_steps"] = int(numbers[5])
        if not math.isfinite(numbers[0]):
            self.diverged(boundary_step + int(numbers[4]) + 1)
            metrics["step"] = self.step
        elif not math.isfinite(numbers[2]):
            self.diverged(self.step)  # the epoch's last step left non-finite weights
        else:
            self.schedule.epoch_end(numbers[2])
        self.call_hooks("on_epoch_end", metrics)

    def stopped_by_signal(self, partial_epoch: bool) -> None:
        name = signal.Signals(self.interrupted).name
        self.notes["interrupted_by"] = name
        discarded = "; the partial epoch after it was discarded" if partial_epoch else ""
        self.stop("interrupted", f"{name} received: stopped at the end of epoch {self.epoch} (step {self.step}){discarded}")
        log.warning("Interrupted by %s: training stopped at the end of epoch %d%s; checkpoints/last.pt holds that state.",
                    name, self.epoch, discarded)

    def train_epoch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass over the shuffled training split; returns device tensors (mean loss, accuracy, finite steps)."""
        self.model.train()
        if self.step_graph is not None:
            self.step_graph.begin_epoch()
        n, size = len(self.data.train_y), self.batch_size
        order = torch.randperm(n, device=self.device, generator=self.generator)
        if self.nonfinite_optimized is not None:
            self.nonfinite_optimized.zero_()
        # Per-step results land in device buffers (one small copy each) and are reduced once per epoch.
        losses = torch.zeros(self.steps_per_epoch, device=self.device)
        hits = torch.zeros(self.steps_per_epoch, device=self.device, dtype=torch.long)
        for i, start in enumerate(range(0, n, size)):
            if self.interrupted is not None:
                break  # a signal: fit abandons this epoch
            losses[i], hits[i] = self.run_step(order[start : start + size])
        batch_sizes = torch.full_like(losses, size)
        batch_sizes[-1] = n - size * (self.steps_per_epoch - 1)
        finite_steps = torch.isfinite(losses).cumprod(0).sum()  # steps before the first non-finite loss
        return (losses * batch_sizes).sum() / n, hits.sum().float() / n, finite_steps

    def eager_step(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`train_step` on the training samples at `idx`."""
        return self.train_step(self.data.train_x[idx], self.data.train_y[idx])

    def update_at(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`update` on the training samples at `idx` (the device work a CUDA graph captures)."""
        return self.update(self.data.train_x[idx], self.data.train_y[idx])

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on (x, y); returns the batch's loss and score as device tensors."""
        out = self.update(x, y)
        self.after_step()
        return out

    def update(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss + penalties, backward, clip, step, constraints: all device work, what a CUDA graph captures."""
        with self.autocast():
            logits = self.forward(x)
            loss = self.loss_fn(logits, y)
        total = loss
        for penalty in self.penalties:
            total = total + penalty(self.weights)
        if self.nonfinite_optimized is not None:
            self.nonfinite_optimized += ~torch.isfinite(total.detach())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.clipper:
            self.clipper()
        self.optimizer.step()
        for constrain in self.constraints:
            constrain(self.model)
        return loss.detach().float(), self.score_fn(logits, y)

    def after_step(self) -> None:
        """Host-side bookkeeping after each step: per-step schedule and the step counter."""
        self.schedule.step_end()
        self.step += 1

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss and accuracy on (x, y) in eval mode, as device tensors."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for start in range(0, len(y), self.eval_batch_size):
            xb, yb = x[start : start + self.eval_batch_size], y[start : start + self.eval_batch_size]
            with self.autocast():
                logits = self.forward(xb)
                loss_sum += self.loss_fn(logits, yb).float() * len(yb)
            correct += self.score_fn(logits, yb)
        n = max(len(y), 1)
        return loss_sum / n, correct.float() / n

    def diverged(self, step: int) -> None:
        # The steps after the non-finite one ran on NaN weights (no per-step sync stops them): they are not training.
        self.step = step
        self.notes.update(diverged_epoch=self.epoch, diverged_step=step)
        self.stop("diverged", f"the loss became non-finite at step {step} (epoch {self.epoch})")
        log.error(
            "Diverged: the loss became NaN/inf at epoch %d, step %d; training stopped. checkpoints/last.pt keeps "
            "epoch %d. A lower learning rate (optimizer.lr), gradient clipping (optimizer.clip_norm) "
            "or normalization usually helps.", self.epoch, step, self.epoch - 1,
        )

    def finish(self, wall_s: float) -> dict[str, Any]:
        """Evaluate the test split once (when training ended normally) and assemble the summary."""
        test_loss = test_acc = None
        trained = self.status in ("completed", "early_stopped")
        if trained and self.interrupted is None:
            test_loss, test_acc = torch.stack(self.evaluate(self.data.test_x, self.data.test_y)).tolist()
        if trained and self.interrupted is not None:  # a signal before the test result was in (or during it)
            test_loss = test_acc = None  # the run ends interrupted; resume= only evaluates
            self.stopped_by_signal(partial_epoch=False)
            self.stop_reason += "; the test split was not evaluated (resume= evaluates it)"
        summary: dict[str, Any] = {
            "status": self.status,
            "stop_reason": self.stop_reason,
            "epochs": self.epoch,
            "steps": self.step,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "wall_s": self.wall_s_before + wall_s,  # every process of the run (see `wall_s_so_far`)
            "wall_s_this_process": wall_s,
            "device": str(self.device),
            "n_params": sum(p.numel() for p in self.model.parameters()),
            **self.notes,
        }
        self.call_hooks("on_fit_end", summary)
        return summary

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, schedule, counters, RNGs, hooks."""
        np_state = np.random.get_state()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "status": self.status,
            "wall_s": self.wall_s_so_far(),
            "stop_reason": self.stop_reason,
            "rng": {
                "python": random.getstate(),
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "shuffle": self.generator.get_state(),
            },
            "hooks": {h.state_key: h.state_dict() for h in self.hooks},
        }

    def wall_s_so_far(self) -> float:
        """Wall time of the run up to now: earlier processes up to their checkpoint, plus this `fit` so far.

        A partial epoch abandoned on a signal is discarded with its time, like the epoch itself.
        """
        return self.wall_s_before + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.wall_s_before = state.get("wall_s", 0.0)  # checkpoints before dnnlab recorded it: unknown, 0
        if state.get("status") == "early_stopped":  # a killed run that had stopped early stays stopped
            self.status, self.stop_reason = "early_stopped", state.get("stop_reason", "")
        rng = state["rng"]
        random.setstate(rng["python"])
        name, keys, *rest = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.generator.set_state(rng["shuffle"])
        for hook in self.hooks:
            if hook.state_key in state["hooks"]:
                hook.load_state_dict(state["hooks"][hook.state_key])
