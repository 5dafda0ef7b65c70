"""The fast paths behind `trainer.*` keys: bf16 autocast, torch.compile, channels_last and a CUDA
graph of the whole training step. Each one that cannot apply leaves the eager loop running and
says why in one logged line (and in the summary's `fast_path` notes).

CUDA graph ("whole network capture", https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs):
the step — gather of the batch by index, forward, loss and penalties, backward, clipping,
optimizer, max-norm — is recorded once and replayed for every full batch. What changes between
steps lives in device tensors the graph reads: the batch indices, the learning rate (and Adam's
betas, which 1cycle cycles), refreshed before each replay from the floats schedulers write into
`param_groups`. Any other hyper-parameter a hook changes, or a change in which parameters train
(unfreezing), triggers a fresh capture; a value that changes every step makes it give up and run
eagerly. The last, smaller batch of an epoch runs eagerly.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator

import torch
from torch import nn

from dnnlab.errors import ConfigError, one_line
from dnnlab.config.choices import COMPILE_MODES, PRECISIONS, require

log = logging.getLogger("dnnlab")

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}  # one per choices.PRECISIONS
WARMUP_STEPS = 3  # eager steps on a side stream before a capture (optimizer state, cuBLAS workspaces)
MAX_RECAPTURES = 3  # consecutive captures that each lived a single replay: the graph is not worth it


def record(notes: dict[str, Any], option: str, state: str) -> None:
    """Note in the run's summary notes (`fast_path`) how a requested fast path stands."""
    notes.setdefault("fast_path", {})[option] = state


def fallback(notes: dict[str, Any], option: str, reason: str) -> None:
    """Record and log, once, that `option` is not in effect and why."""
    record(notes, option, f"off: {reason}")
    log.warning("%s is off: %s.", option, reason)


# ---------------------------------------------------------------------------------- precision
def autocast(device: torch.device, precision: str, cache: bool = True) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the context the forward pass runs in: torch.autocast for bf16, nothing for fp32.

    bf16 needs no loss scaling (same exponent range as fp32). A CUDA graph capture needs the
    autocast weight-cast cache off, since cached casts would be freed between replays.
    """
    require("trainer.precision", precision, PRECISIONS)
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


# ---------------------------------------------------------------------------------- compile
def compile_mode(value: bool | str) -> str | None:
    """`trainer.compile` → torch.compile's mode (None: no compile)."""
    if value is False or value is None:
        return None
    if value is True:
        return "default"
    if value not in COMPILE_MODES:
        raise ConfigError(f"trainer.compile={value!r} is not valid; use false, true or one of {', '.join(COMPILE_MODES)}")
    return value


class CompiledForward:
    """`model`'s forward through torch.compile; the module itself stays as is (checkpoints keep their keys).

    If compiling fails on the first call (no C++ compiler, an unsupported op), it logs one line and
    runs the module eagerly from then on.
    """

    def __init__(self, model: nn.Module, mode: str, notes: dict[str, Any]):
        self.model, self.notes = model, notes
        self.forward: Callable[..., torch.Tensor] = torch.compile(model, mode=mode)
        self.proven = False  # the first call compiles: until it has succeeded, a failure falls back

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.proven:
            return self.forward(x)
        try:
            out = self.forward(x)
        except Exception as error:  # torch._dynamo/inductor raise many types; the eager call below re-raises real bugs
            self.forward = self.model
            fallback(self.notes, "trainer.compile", f"torch.compile failed ({short(error)})")
            out = self.model(x)
        self.proven = True
        return out


def short(error: BaseException) -> str:
    """The error in one line of at most 200 characters (compiler errors run to pages)."""
    text = one_line(error)
    return text if len(text) <= 200 else text[:199] + "…"


# ---------------------------------------------------------------------------------- channels_last
def channels_last_blocker(model: nn.Module) -> str | None:
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return None
    return "channels_last speeds up convolutions and this model has none (model=cnn has)"


# ---------------------------------------------------------------------------------- CUDA graph
def capture_blocker(cuda_graph: bool, device: torch.device, compile: bool | str) -> str | None:
    """Why the run's settings keep its step out of a CUDA graph; None when it is captured, given an optimizer built
    capturable. The one decision: build_trainer asks it to build the optimizer so, the trainer to capture."""
    if not cuda_graph:
        return "trainer.cuda_graph=false"
    if device.type != "cuda":
        return f"a CUDA graph needs a CUDA device (this run is on {device.type})"
    if compile_mode(compile) is not None:
        return "trainer.compile and trainer.cuda_graph are exclusive (torch.compile's reduce-overhead mode captures graphs itself)"
    return None


def optimizer_blocker(optimizer: torch.optim.Optimizer) -> str | None:
    """Why this optimizer's step cannot be captured, or None (it needs capturable=True or a fused kernel)."""
    if all(group.get("capturable") or group.get("fused") for group in optimizer.param_groups):
        return None
    return (f"torch.optim.{type(optimizer).__name__} has no capturable or fused CUDA implementation in PyTorch "
            f"{torch.__version__.split('+')[0]}")


def tensor_keys(optimizer: torch.optim.Optimizer) -> tuple[str, ...]:
    """Hyper-parameters the captured step reads from device tensors, so schedules can change them between replays.

    A tensor lr works with capturable and fused kernels; tensor betas only with Adam's capturable
    multi-tensor kernel (the fused one reads them on the host).
    """
    groups = optimizer.param_groups
    adam_capturable = isinstance(optimizer, torch.optim.Adam) and all(g.get("capturable") and not g.get("fused") for g in groups)
    return ("lr", "betas") if adam_capturable else ("lr",)


class CudaGraphRecorder:
    """How StepGraph warms up, records and replays on a CUDA device (tests substitute an emulation).

    Warm-up and capture share one side stream, so per-stream library handles (cuBLAS workspaces,
    hipBLASLt on ROCm) are created before the capture rather than inside it.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.stream: torch.cuda.Stream | None = None

    def side_stream(self) -> torch.cuda.Stream:
        if self.stream is None:
            self.stream = torch.cuda.Stream(self.device)
        return self.stream

    def warmup(self, step: Callable[[], Any]) -> Any:
        """Run an eager step on the side stream, as capture requires of the work before it."""
        stream, main = self.side_stream(), torch.cuda.current_stream(self.device)
        stream.wait_stream(main)
        with torch.cuda.stream(stream):
            out = step()
        main.wait_stream(stream)
        return out

    def record(self, body: Callable[[], Any], context: Callable[[], contextlib.AbstractContextManager]) -> tuple[Callable[[], None], Any]:
        """Capture `body` (run under `context`) without executing it; returns (replay, its output tensors)."""
        graph = torch.cuda.CUDAGraph()
        stream = self.side_stream()
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with context(), torch.cuda.graph(graph, stream=stream):
            outputs = body()
        return graph.replay, outputs


class StepGraph:
    """Captures `update(idx)` (one step's device work on the batch at `idx`) as one CUDA graph and replays it
    for each full batch; `after_step` is the host bookkeeping that follows every step, replayed or eager."""

    def __init__(self, update: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], after_step: Callable[[], None],
                 model: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int, device: torch.device,
                 notes: dict[str, Any], recorder: Any = None):
        self.update, self.after_step = update, after_step
        self.model, self.optimizer, self.device, self.notes = model, optimizer, device, notes
        self.recorder = recorder or CudaGraphRecorder(device)
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=device)
        # Warm-up and last-batch steps run the capturable optimizer eagerly on purpose; PyTorch would warn once.
        optimizer._warned_capturable_if_run_uncaptured = True
        self.tensor_keys = tensor_keys(optimizer)
        self.baked_keys = [k for k in optimizer.defaults if k not in self.tensor_keys]
        # One device tensor per (group, key): what the captured kernels read.
        self.values = [{k: self.as_tensor(group[k]) for k in self.tensor_keys} for group in optimizer.param_groups]
        self.seen = [{k: group[k] for k in self.tensor_keys} for group in optimizer.param_groups]
        self.replay: Callable[[], None] | None = None
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.layout: tuple[Any, ...] | None = None
        self.structure: tuple[Any, ...] = ()
        self.warmup_left = WARMUP_STEPS
        self.replays_since_capture = 0
        self.short_lived = 0
        self.enabled = True
        self.captures = 0

    def as_tensor(self, value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return tuple(self.as_tensor(v) for v in value)
        return torch.tensor(float(value), device=self.device)

    # ------------------------------------------------------------------ the step
    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the batch `idx`: a graph replay when it can, else the eager step."""
        if not self.enabled or len(idx) != len(self.idx):
            return self.eager_step(idx)
        layout = (self.structure, self.host_hyperparameters())
        if layout != self.layout:
            self.drop(layout)
            if not self.enabled:
                return self.eager_step(idx)
        if self.replay is None:
            if self.warmup_left > 0:
                self.warmup_left -= 1
                return self.recorder.warmup(lambda: self.eager_step(idx))
            if not self.capture():
                return self.eager_step(idx)
        self.idx.copy_(idx)
        self.refresh_values()
        self.replay()
        self.replays_since_capture += 1
        self.after_step()
        return self.outputs

    def eager_step(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.update(idx)
        self.after_step()
        return out

    def begin_epoch(self) -> None:
        """Note which parameters train and in which mode: hooks change these only between epochs."""
        self.structure = (self.model.training, tuple(p.requires_grad for p in self.model.parameters()))

    def host_hyperparameters(self) -> list[tuple[Any, ...]]:
        """The hyper-parameters a capture bakes in as host values (a change means capturing again)."""
        return [tuple(group.get(k) for k in self.baked_keys) for group in self.optimizer.param_groups]

    def drop(self, layout: tuple[Any, ...]) -> None:
        """Forget the captured graph; the next full batch (after any warm-up) captures again."""
        if self.replay is not None:
            self.short_lived = self.short_lived + 1 if self.replays_since_capture <= 1 else 0
            if self.short_lived >= MAX_RECAPTURES:
                self.enabled = False
                changed = "a hyper-parameter the optimizer reads on the host changes every step"
                fallback(self.notes, "trainer.cuda_graph", changed)
            self.replay = self.outputs = None
            self.optimizer.zero_grad(set_to_none=True)  # drop gradients that live in the old graph's pool
        self.layout = layout
        # Optimizer state is created eagerly, never inside a capture (it would be re-zeroed every replay).
        if self.needs_warmup():
            self.warmup_left = max(self.warmup_left, WARMUP_STEPS)

    def needs_warmup(self) -> bool:
        optimizer = self.optimizer
        return any(p.requires_grad and not optimizer.state.get(p) for group in optimizer.param_groups for p in group["params"])

    def capture(self) -> bool:
        """Record `update` on the static index buffer; False (and eager from then on) if PyTorch refuses."""
        self.optimizer.zero_grad(set_to_none=True)  # backward inside the capture allocates the graph's own grads
        try:
            self.replay, self.outputs = self.recorder.record(lambda: self.update(self.idx), self.tensor_hyperparameters)
        except Exception as error:  # e.g. an op that syncs with the host: not capturable
            self.enabled = False
            self.optimizer.zero_grad(set_to_none=True)
            fallback(self.notes, "trainer.cuda_graph", f"capture failed ({short(error)})")
            return False
        self.replays_since_capture = 0
        self.captures += 1
        record(self.notes, "trainer.cuda_graph", f"on ({self.captures} capture(s))")
        return True

    @contextlib.contextmanager
    def tensor_hyperparameters(self) -> Iterator[None]:
        """During capture, param_groups hold the device tensors; the floats come back afterwards."""
        groups = self.optimizer.param_groups
        floats = [{k: group[k] for k in self.tensor_keys} for group in groups]
        for group, values in zip(groups, self.values):
            group.update(values)
        try:
            yield
        finally:
            for group, saved in zip(groups, floats):
                group.update(saved)

    def refresh_values(self) -> None:
        """Copy what schedules wrote into param_groups since the last replay into the graph's tensors."""
        for group, seen, values in zip(self.optimizer.param_groups, self.seen, self.values):
            for key in self.tensor_keys:
                if group[key] != seen[key]:
                    seen[key] = group[key]
                    current = group[key] if isinstance(group[key], (tuple, list)) else (group[key],)
                    targets = values[key] if isinstance(values[key], tuple) else (values[key],)
                    for target, value in zip(targets, current):
                        target.fill_(float(value))
