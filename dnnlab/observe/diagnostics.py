"""Per-layer diagnostics each epoch: gradient flow, weight norms and activation health.

At the end of every epoch `DiagnosticsHook` runs one forward and backward pass over a fixed probe
batch (1/20 of the training split, at least 64 and at most 256 samples, chosen once from `seed`
with a private generator) and adds to the metrics row, for every named block of the model
(`hidden1`…, `conv1`…, `output`):

- `grad_norm/<layer>`: L2 norm of the gradient of the data loss w.r.t. the layer's weights
  (biases excluded), on the probe batch;
- `weight_norm/<layer>`: L2 norm of the layer's weights;
- `act_mean/<layer>`, `act_std/<layer>`: mean and standard deviation of the output of the block's
  `act` submodule over every probe sample and unit (layers without one, e.g. `output`, have none);
- `dead_frac/<layer>` (activation family `relu` only): fraction of units that output 0 for every
  probe sample (a conv unit is a channel, so every sample and position);
- `sat_frac/<layer>` (family `saturating` only): fraction of units that are saturated, i.e. whose
  output lies within 1 % of the output range from a bound (sigmoid: below 0.01 or above 0.99;
  tanh: beyond ±0.98) for more than half of the probe samples (and positions);

`summary.json` gets `diag_s`, the seconds all probes took, to read against the epochs' `epoch_s`
(a timing in the rows would make two identical runs' rows differ).

The probe runs in eval mode: dropout is off, batch norm uses (and does not update) its running
statistics, nothing draws random numbers, and gradients come from `torch.autograd.grad` rather than
`.grad`. So the probe changes no state: training, exact resume and repeatability are identical with
diagnostics on or off. All statistics stay on the device and are read with one host sync.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from dnnlab.config.choices import ACTIVATION_FAMILIES, require
from dnnlab.engine.hooks import Hook
from dnnlab.models import blocks, weights
from dnnlab.runs.rundir import RunDir
from dnnlab.errors import ConfigError

# Output bounds (low, high) of saturating activations, by module class.
BOUNDS: dict[type[nn.Module], Callable[[nn.Module], tuple[float, float]]] = {
    nn.Sigmoid: lambda m: (0.0, 1.0),
    nn.Tanh: lambda m: (-1.0, 1.0),
    nn.Hardsigmoid: lambda m: (0.0, 1.0),
    nn.Hardtanh: lambda m: (m.min_val, m.max_val),
    nn.Softsign: lambda m: (-1.0, 1.0),
}
# The probe: 1/20 of the training split, between 64 and 256 samples. From 1,280 training samples
# on, its forward + backward pass costs at most 1/20 of an epoch's training passes, and less of the
# epoch, which also steps the optimizer and validates (measured: ≈ 2 % on digits, 20 × 100 MLP).
PROBE_FRACTION, PROBE_MIN, PROBE_MAX = 1 / 20, 64, 256
SAT_BAND = 0.01  # "near a bound": within this fraction of the output range
SAT_MAJORITY = 0.5  # a unit is saturated when near a bound for more than this fraction of samples


def combined_norm(norms: list[float]) -> float:
    """The L2 norm of several tensors from their separate L2 norms."""
    return math.sqrt(sum(n * n for n in norms))


def unit_dims(a: torch.Tensor) -> list[int]:
    """Dimensions of (N, C, …) activations that a unit (feature or channel) reduces over."""
    return [d for d in range(a.dim()) if d != 1]


def dead_fraction(a: torch.Tensor) -> torch.Tensor:
    """Fraction of units whose output is 0 for every sample (and position)."""
    return (a.abs().amax(dim=unit_dims(a)) == 0).float().mean()


def saturated_fraction(a: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Fraction of units within SAT_BAND of the range from a bound on most samples."""
    band = SAT_BAND * (high - low)
    near = (a <= low + band) | (a >= high - band)
    return (near.float().mean(dim=unit_dims(a)) > SAT_MAJORITY).float().mean()


class DiagnosticsHook(Hook):
    """Adds the per-layer statistics above to every epoch's metrics row."""

    key = "DiagnosticsHook"  # its state in checkpoints: stable, whatever the class is called
    stage = "measure"  # its keys are in the row the run folder writes and early stopping watches

    def __init__(self, family: str = "smooth", probe_size: int | None = None, seed: int = 0):
        require("activation.family", family, ACTIVATION_FAMILIES)
        if probe_size is not None and probe_size < 1:
            raise ConfigError(f"diagnostics probe_size={probe_size} is not valid; it must be a positive integer")
        self.family, self.probe_size, self.seed = family, probe_size, seed
        self.probe: tuple[torch.Tensor, torch.Tensor] | None = None
        self.seconds = 0.0  # spent in the probe, over the whole run (resumes included)

    def on_fit_start(self, trainer) -> None:
        x, y = trainer.data.train_x, trainer.data.train_y
        # A private CPU generator: choosing the probe draws nothing from the training RNGs.
        generator = torch.Generator().manual_seed(self.seed)
        size = self.probe_size or min(PROBE_MAX, max(PROBE_MIN, int(len(y) * PROBE_FRACTION)))
        idx = torch.randperm(len(y), generator=generator)[:size].to(x.device)
        self.probe = (x[idx], y[idx])
        self.blocks = blocks(trainer.model)
        self.bounds = {  # saturating activations' output ranges, by layer
            name: BOUNDS[type(block.act)](block.act) for name, block in self.blocks.items()
            if self.family == "saturating" and type(getattr(block, "act", None)) in BOUNDS
        }

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        if trainer.status == "diverged":
            return  # the weights may hold NaN/inf: statistics of them would mislead the verdicts
        t0 = time.perf_counter()
        metrics.update(self.measure(trainer.model, trainer.loss_fn))
        self.seconds += time.perf_counter() - t0

    def on_fit_end(self, trainer, summary: dict[str, Any]) -> None:
        summary["diag_s"] = self.seconds

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds = state["seconds"]

    def measure(self, model: nn.Module, loss_fn: nn.Module) -> dict[str, float]:
        """Probe forward + backward in eval mode; every statistic, read with one host sync."""
        weights_of = {name: weights(block) for name, block in self.blocks.items()}
        flat = [w for ws in weights_of.values() for w in ws]
        trainable = [w for w in flat if w.requires_grad]  # frozen layers have no gradient to report
        acts, grads = self.probe_pass(model, loss_fn, trainable)
        with torch.no_grad():
            zero = torch.zeros((), device=self.probe[0].device)
            act_stats = {k: v for name, a in acts.items() for k, v in self.activation_stats(name, a).items()}
            norms = [torch.linalg.vector_norm(w) for w in flat]
            norms += [zero if g is None else torch.linalg.vector_norm(g) for g in grads]
            values = torch.stack([*norms, *act_stats.values()]).tolist()
        weight_norm = dict(zip(map(id, flat), values))
        grad_norm = dict(zip(map(id, trainable), values[len(flat):]))
        stats = {}
        for name, ws in weights_of.items():
            if any(id(w) in grad_norm for w in ws):
                stats[f"grad_norm/{name}"] = combined_norm([grad_norm[id(w)] for w in ws if id(w) in grad_norm])
            stats[f"weight_norm/{name}"] = combined_norm([weight_norm[id(w)] for w in ws])
        stats.update(zip(act_stats, values[len(flat) + len(trainable):]))
        return stats

    def probe_pass(
        self, model: nn.Module, loss_fn: nn.Module, weights: list[torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor | None, ...]]:
        """Each block's activation output on the probe, and the loss gradient w.r.t. `weights`."""
        x, y = self.probe
        acts: dict[str, torch.Tensor] = {}
        handles = [
            block.act.register_forward_hook(lambda _m, _i, out, name=name: acts.__setitem__(name, out.detach()))
            for name, block in self.blocks.items() if hasattr(block, "act")
        ]
        was_training = model.training  # the trainer's evaluate() normally left it in eval mode already
        if was_training:
            model.eval()
        try:
            with torch.enable_grad():
                loss = loss_fn(model(x), y)
                grads = torch.autograd.grad(loss, weights, allow_unused=True) if weights else ()
        finally:
            if was_training:
                model.train()
            for handle in handles:
                handle.remove()
        return acts, grads

    def activation_stats(self, name: str, a: torch.Tensor) -> dict[str, torch.Tensor]:
        a = a.float()
        stats = {f"act_mean/{name}": a.mean(), f"act_std/{name}": a.std()}
        if self.family == "relu":
            stats[f"dead_frac/{name}"] = dead_fraction(a)
        elif name in self.bounds:
            stats[f"sat_frac/{name}"] = saturated_fraction(a, *self.bounds[name])
        return stats


def observer_hooks(run: RunDir, diagnostics: bool, activation_family: str, seed: int) -> list[Hook]:
    """Diagnostics (unless `trainer.diagnostics=false`) and health verdicts (stage `measure`: their keys are
    in the rows and the summary the run folder writes)."""
    from dnnlab.observe.health import HealthHook

    hooks: list[Hook] = []
    if diagnostics:
        hooks.append(DiagnosticsHook(activation_family, seed=seed))
    hooks.append(HealthHook(run))
    return hooks


def logger_hooks(cfg: DictConfig, run: RunDir) -> list[Hook]:
    """The `logger` option, given the run folder and the config.

    Stage `report`, after the run folder's hook: a logger sees every row's keys and the finished
    summary (best_val_acc, final losses), e.g. for TensorBoard's HParams view.
    """
    logger = cfg.get("logger")
    if logger is None or logger.get("_target_") is None:
        return []
    # Called outside instantiate so that its errors reach the user unwrapped.
    return [instantiate(logger, _partial_=True)(run_dir=str(run.path), config=cfg)]
