"""K solo runs trained as one stacked model: the loop of a stacked sweep (`hydra/launcher=stacked`).

Each member is an ordinary solo `Trainer` (its own model, optimizer, schedule, hooks and run folder),
built by the solo builder, so its initial weights, batch order, schedule and hooks are its solo run's.
The stack only does the steps: the members' parameters become (K, …) tensors (`model.stack_models`),
stepped by one optimizer that carries each member's hyper-parameters as tensors (`optim`), and each
member's batch is drawn from its own shuffle generator. At every epoch end the stacked state is written
back into the members and each member's own epoch bookkeeping runs (`Trainer.end_epoch`: metrics row,
divergence, epoch schedule, checkpoints, early stopping, diagnostics, health), so its folder is a solo
run's folder. A member that stops (early stopping, divergence, its last epoch, an error) concludes on
its own and leaves the stack; the rest go on. SIGINT/SIGTERM stop every member at the epoch boundary.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import torch

from dnnlab.engine.stacked.diagnostics import StackedDiagnostics
from dnnlab.engine.stacked.functional import stacked_clip_, stacked_cross_entropy, stacked_l1, stacked_l2, stacked_max_norm_
from dnnlab.engine.stacked.model import CannotStack, stack_models
from dnnlab.engine.stacked.optim import StackedOptimizer
from dnnlab.engine.stacked.sizing import MIN_SPEEDUP, measure_speedup, members_that_fit
from dnnlab.engine.trainer import Trainer, batches, stop_on_signals
from dnnlab.errors import one_line
from dnnlab.regularization import L1, L2, MaxNorm

log = logging.getLogger("dnnlab")

# The member whose work is being done: its train.log takes the lines logged meanwhile (OnlyMember), and
# the terminal prefixes them with its folder (MemberLabel). None: the stack's own lines, for everyone.
MEMBER: ContextVar[int | None] = ContextVar("dnnlab_stack_member", default=None)

# The stacked form of each penalty and constraint (a regularizer's class → the function over stacked
# weights and the per-member strength tensor, and the attribute that holds its strength).
PENALTIES = {L1: (stacked_l1, "weight"), L2: (stacked_l2, "weight")}
CONSTRAINTS = {MaxNorm: (stacked_max_norm_, "r")}


@contextlib.contextmanager
def as_member(k: int) -> Iterator[None]:
    token = MEMBER.set(k)
    try:
        yield
    finally:
        MEMBER.reset(token)


class OnlyMember(logging.Filter):
    """For member k's train.log: its own lines and the stack's, not the other members'."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def filter(self, record: logging.LogRecord) -> bool:
        return MEMBER.get() in (None, self.k)


class MemberLabel(logging.Filter):
    """For the terminal: `%(member)s` is the folder of the member a line is about (empty for the stack's own)."""

    def __init__(self, labels: dict[int, str]):
        super().__init__()
        self.labels = labels

    def filter(self, record: logging.LogRecord) -> bool:
        k = MEMBER.get()
        record.member = f"{self.labels[k]}: " if k is not None else ""
        return True


def owner_of(bound: Callable[..., Any]) -> Any:
    """The regularizer a penalty or constraint belongs to (the trainer holds its bound method)."""
    return getattr(bound, "__self__", None)


class StackedTrainer:
    """Trains the solo trainers `members` (id → Trainer, same data, batch size, epoch and device) as one stack.

    `fit` returns id → summary (or the exception that member failed with). Members that cannot stack, or
    would train slower stacked than `min_speedup` × one after another, are trained one after another.
    """

    def __init__(self, members: dict[int, Trainer], min_speedup: float = MIN_SPEEDUP, progress: bool = False):
        self.members, self.min_speedup, self.progress = dict(members), min_speedup, progress
        self.results: dict[int, dict[str, Any] | BaseException] = {}
        self.interrupted: int | None = None
        self.solo_why = ""  # why the members trained one after another instead, if they did
        self.chunk = list(self.members)  # the members of the stack training now (a part, when memory is short)
        first = next(iter(self.members.values()))
        self.data, self.batch_size, self.device = first.data, first.batch_size, first.device

    def interrupt(self, signum: int) -> None:
        self.interrupted = signum
        for trainer in self.members.values():
            trainer.interrupt(signum)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[int, dict[str, Any] | BaseException]:
        started = time.perf_counter()
        for trainer in self.members.values():
            trainer.started = started  # each stack's members start again when it starts (see train_chunk)
        with stop_on_signals(self.interrupt):
            for k in list(self.members):
                self.guarded(k, self.members[k].call_hooks, "on_fit_start")
            live = [k for k in self.members if k not in self.results]
            for k in [k for k in live if not self.running(k)]:  # resumed at its end (early-stopped, all epochs done)
                self.conclude(k)
            live = [k for k in live if k not in self.results]
            for chunk in self.chunks(live):
                self.train_chunk(chunk)
        return self.results

    def chunks(self, live: list[int]) -> list[list[int]]:
        """`live` in stacks that fit in the device's free memory, trained one after another."""
        fits = members_that_fit([self.members[k] for k in live]) if live else 1
        if fits < len(live):
            log.info("dnnlab: %d runs do not fit in memory as one stack: stacks of %d, one after another", len(live), fits)
        return [live[i : i + fits] for i in range(0, len(live), fits)]

    def train_chunk(self, live: list[int]) -> None:
        self.chunk, started = live, time.perf_counter()
        for k in live:
            self.members[k].started = started
        self.solo_why = self.prepare_stack(live)
        if self.solo_why:
            log.warning("dnnlab: these %d runs train one after another: %s", len(live), self.solo_why)
            self.train_solo(live)
        else:
            log.info("dnnlab: training %d runs as one stack (%s)", len(live), self.speed_note)
            self.train_stacked(live)

    def running(self, k: int) -> bool:
        trainer = self.members[k]
        return trainer.status == "running" and trainer.epoch < trainer.epochs

    def prepare_stack(self, live: list[int]) -> str:
        """Build the stack of `live`; or why they train one after another instead (then nothing is built)."""
        self.speed_note = ""
        if len(live) < 2:
            return "a stack of one" if live else ""
        try:
            self.bind(live)
            speedup = measure_speedup([self.members[k] for k in live])
        except CannotStack as error:
            return str(error)
        except Exception as error:  # a stack that cannot be built or timed must not cost the sweep its jobs
            return f"building the stack failed ({one_line(error)})"
        self.speed_note = f"measured {speedup:.1f}× as fast as one after another"
        if speedup < self.min_speedup:
            return f"stacked they would train {speedup:.2f}× as fast as one after another (below {self.min_speedup})"
        return ""

    def train_solo(self, live: list[int]) -> None:
        for k in live:
            trainer = self.members[k]
            trainer.started = time.perf_counter()  # its wall time is its own, not the ones before it
            if self.interrupted is not None:
                trainer.interrupt(self.interrupted)  # it stops before its first step, resumable
            with as_member(k):
                try:
                    trainer.run_epochs()
                except Exception as error:
                    trainer.fail(error)
                    self.results[k] = error
                    continue
            self.conclude(k)

    def train_stacked(self, live: list[int]) -> None:
        bar = self.progress_bar(live)
        while live:
            live = self.run_epoch(live)
            if bar is not None and live:
                bar.update(self.bar_task, completed=self.members[live[0]].epoch, description=f"{len(live)} in the stack")
        if bar is not None:
            bar.stop()

    def progress_bar(self, live: list[int]) -> Any:
        if not self.progress:
            return None
        from dnnlab.observe.console import epoch_progress

        bar = epoch_progress(label="stack epoch")
        bar.start()
        self.bar_task = bar.add_task(f"{len(live)} in the stack", total=max(t.epochs for t in self.members.values()),
                                     completed=self.members[live[0]].epoch)
        return bar

    def run_epoch(self, live: list[int]) -> list[int]:
        """One epoch of every member in `live`; returns the members still training after it."""
        trainers = [self.members[k] for k in live]
        if self.interrupted is not None:  # a signal at the epoch boundary
            return self.stop_by_signal(live, partial_epoch=False)
        for k in live:
            self.guarded(k, self.members[k].call_hooks, "on_epoch_start")
        if any(k in self.results for k in live):
            return self.shrink(live)
        boundary = [t.step for t in trainers]
        lrs = [t.optimizer.param_groups[0]["lr"] for t in trainers]
        self.optimizer.refresh([t.optimizer for t in trainers])
        t0 = time.perf_counter()
        train_loss, train_acc, finite_steps = self.train_epoch(trainers)
        if self.interrupted is not None:
            for trainer, step in zip(trainers, boundary):
                trainer.step = step  # the partial epoch is abandoned: last.pt holds the boundary
            return self.stop_by_signal(live, partial_epoch=True)
        val_loss, val_acc = self.evaluate(self.data.val_x, self.data.val_y)
        columns = [train_loss, train_acc, val_loss, val_acc, finite_steps.float()]
        if self.nonfinite is not None:
            columns.append(self.nonfinite.float())
        rows = torch.stack(columns, 1).tolist()  # the one host-device sync of the epoch
        epoch_s = time.perf_counter() - t0
        self.measure_diagnostics()
        self.model.write_back([t.model for t in trainers])  # the members' own objects now hold the stack's state
        self.optimizer.write_back([t.optimizer for t in trainers])
        for k, trainer, step, lr, row in zip(live, trainers, boundary, lrs, rows):
            self.guarded(k, trainer.end_epoch, step, lr, row, epoch_s)
        for k in live:
            if k not in self.results and not self.running(k):
                self.conclude(k)
        return self.shrink(live)

    def measure_diagnostics(self) -> None:
        """Every member's per-layer diagnostics in one stacked probe pass (their hooks take them at end_epoch)."""
        if self.diagnostics is None:
            return
        try:
            self.diagnostics.measure()
        except Exception as error:  # each member's hook then measures its own member, as in a solo run
            log.warning("dnnlab: the stacked diagnostics probe failed (%s); each run measures its own", one_line(error))
            self.diagnostics = None

    def stop_by_signal(self, live: list[int], partial_epoch: bool) -> list[int]:
        """Every member of `live` ends `interrupted` at the last epoch boundary (its last.pt); none is left training."""
        for k in live:
            with as_member(k):
                self.members[k].stopped_by_signal(partial_epoch)
            self.conclude(k)
        return []

    def shrink(self, live: list[int]) -> list[int]:
        """The members of `live` still training; the stack drops the others."""
        staying = [k for k in live if k not in self.results]
        if len(staying) < len(live) and staying:
            positions = [live.index(k) for k in staying]
            self.model.keep(positions)
            self.optimizer.keep(positions)
            self.bind(staying, rebuild=False)
        return staying

    def train_epoch(self, trainers: list[Trainer]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass, each member over its own shuffle; per member (K,) device tensors: mean loss, accuracy, finite steps."""
        self.model.train()
        n, size = len(self.data.train_y), self.batch_size
        orders = torch.stack([torch.randperm(n, device=self.device, generator=t.generator) for t in trainers])
        if self.nonfinite is not None:
            self.nonfinite.zero_()
        steps = batches(n, size)
        losses = torch.zeros(len(trainers), steps, device=self.device)
        hits = torch.zeros(len(trainers), steps, device=self.device, dtype=torch.long)
        per_step = any(t.schedule.per_step for t in trainers)
        optimizers = [t.optimizer for t in trainers]
        for i, start in enumerate(range(0, n, size)):
            if self.interrupted is not None:
                break
            idx = orders[:, start : start + size]
            losses[:, i], hits[:, i] = self.update(self.data.train_x[idx], self.data.train_y[idx])
            for trainer in trainers:
                trainer.after_step()
            if per_step:
                self.optimizer.refresh(optimizers)
        sizes = torch.full((steps,), size, device=self.device, dtype=losses.dtype)
        sizes[-1] = n - size * (steps - 1)
        finite_steps = torch.isfinite(losses).cumprod(1).sum(1)
        return (losses * sizes).sum(1) / n, hits.sum(1).float() / n, finite_steps

    def update(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of every member: per-member losses (K,) and correct counts (K,), on the device."""
        logits = self.model(x)
        loss = stacked_cross_entropy(logits, y)
        total = loss
        for penalty in self.penalties:
            total = total + penalty()
        if self.nonfinite is not None:
            self.nonfinite += ~torch.isfinite(total.detach())
        self.optimizer.zero_grad()
        total.sum().backward()  # members are independent: each one's gradient is its solo gradient
        if self.clip is not None:
            stacked_clip_(self.parameters, *self.clip)
        self.optimizer.step()
        for constrain in self.constraints:
            constrain()
        return loss.detach(), (logits.argmax(-1) == y).sum(1)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member mean loss and accuracy (K,) on the shared split (x, y), in eval mode."""
        self.model.eval()
        k = self.model.members
        loss_sum = torch.zeros(k, device=self.device)
        correct = torch.zeros(k, device=self.device, dtype=torch.long)
        size = self.members[next(iter(self.members))].eval_batch_size
        for start in range(0, len(y), size):
            xb, yb = x[start : start + size], y[start : start + size]
            logits = self.model(xb)
            targets = yb.expand(k, -1)
            loss_sum += stacked_cross_entropy(logits, targets) * len(yb)
            correct += (logits.argmax(-1) == targets).sum(1)
        n = max(len(y), 1)
        return loss_sum / n, correct.float() / n

    # ------------------------------------------------------------------ members
    def bind(self, live: list[int], rebuild: bool = True) -> None:
        """The stack of `live`: stacked model and optimizer (when `rebuild`), per-member penalties, constraints, clipping."""
        trainers = [self.members[k] for k in live]
        if rebuild:
            self.model = stack_models([t.model for t in trainers])
            self.optimizer = StackedOptimizer.from_members([t.optimizer for t in trainers], self.model)
        self.parameters = list(self.model.stacked_parameters())
        weights = self.model.weight_tensors(hidden_only=False)
        hidden = self.model.weight_tensors(hidden_only=True)
        self.penalties = [functools.partial(form, weights, strength)
                          for form, strength in self.forms(trainers, "penalties", PENALTIES)]
        self.constraints = [functools.partial(form, hidden, strength)
                            for form, strength in self.forms(trainers, "constraints", CONSTRAINTS)]
        self.nonfinite = torch.zeros(len(trainers), dtype=torch.long, device=self.device) if self.penalties else None
        self.clip = self.clipping(trainers)
        self.diagnostics = StackedDiagnostics.for_stack(self.model, trainers)

    def forms(self, trainers: list[Trainer], attribute: str, table: dict[type, tuple[Any, str]]) -> list[tuple[Any, torch.Tensor]]:
        """(stacked function, per-member strengths) for each of the members' penalties or constraints."""
        found = []
        for j, first in enumerate(getattr(trainers[0], attribute)):
            kind = type(owner_of(first))
            if kind not in table:
                raise CannotStack(f"{kind.__name__} has no stacked form yet")
            form, strength = table[kind]
            values = [float(getattr(owner_of(getattr(t, attribute)[j]), strength)) for t in trainers]
            found.append((form, torch.tensor(values, device=self.device)))
        return found

    def clipping(self, trainers: list[Trainer]) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
        """Per-member clip_value and clip_norm thresholds (+inf where a member does not clip); None when none clips."""
        if not any(t.clipper for t in trainers):
            return None

        def thresholds(name: str) -> torch.Tensor | None:
            values = [getattr(t.clipper, name) for t in trainers]
            if all(v is None for v in values):
                return None
            return torch.tensor([math.inf if v is None else float(v) for v in values], device=self.device)

        return thresholds("clip_value"), thresholds("clip_norm")

    def guarded(self, k: int, work: Callable[..., Any], *args: Any) -> None:
        """`work(*args)` for member k; an error ends that member `failed` (its summary written) and the stack goes on."""
        if k in self.results:
            return
        with as_member(k):
            try:
                work(*args)
            except Exception as error:
                log.error("failed: %s", one_line(error))
                self.members[k].fail(error)
                self.results[k] = error

    def conclude(self, k: int) -> None:
        """Member k's end, as a solo run's: on_train_end, the test evaluation, its summary (with its place in the stack)."""
        trainer = self.members[k]
        chunk = self.chunk if k in self.chunk else list(self.members)
        trainer.notes["stack"] = {"size": len(chunk), "index": chunk.index(k)}
        if self.solo_why:
            trainer.notes["stack"]["trained_solo"] = self.solo_why
        with as_member(k):
            try:
                self.results[k] = trainer.conclude()
            except Exception as error:
                trainer.fail(error)
                self.results[k] = error
