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
from typing import Any, Callable, Sequence

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


def unit_dims(a: torch.Tensor, lead: int = 0) -> list[int]:
    """Dimensions of (N, C, …) activations that a unit (feature or channel) reduces over; `lead` leading member
    dimensions (a stack's (K, N, C, …)) are kept too."""
    return [d for d in range(lead, a.dim()) if d != lead + 1]


def dead_fraction(a: torch.Tensor, lead: int = 0) -> torch.Tensor:
    """Fraction of units whose output is 0 for every sample (and position)."""
    return (a.abs().amax(dim=unit_dims(a, lead)) == 0).float().mean(-1)


def saturated_fraction(a: torch.Tensor, low: float, high: float, lead: int = 0) -> torch.Tensor:
    """Fraction of units within SAT_BAND of the range from a bound on most samples."""
    band = SAT_BAND * (high - low)
    near = (a <= low + band) | (a >= high - band)
    return (near.float().mean(dim=unit_dims(a, lead)) > SAT_MAJORITY).float().mean(-1)


def spread(a: torch.Tensor, lead: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of every value, per leading member index."""
    if not lead:
        return a.mean(), a.std()
    values = a.flatten(lead)
    return values.mean(-1), values.std(-1)


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
        self.given: tuple[dict[str, float], float] | None = None  # see `give`
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
        given, self.given = self.given, None
        if trainer.status == "diverged":
            return  # the weights may hold NaN/inf: statistics of them would mislead the verdicts
        t0 = time.perf_counter()
        stats, seconds = given or (self.measure(trainer.model, trainer.loss_fn), None)
        metrics.update(stats)
        self.seconds += time.perf_counter() - t0 if seconds is None else seconds

    def give(self, stats: dict[str, float], seconds: float) -> None:
        """This epoch's statistics, measured by someone else (a stack measures all its members in one probe pass)."""
        self.given = (stats, seconds)

    def on_fit_end(self, trainer, summary: dict[str, Any]) -> None:
        summary["diag_s"] = self.seconds

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds = state["seconds"]

    def measure(self, model: nn.Module, loss_fn: nn.Module) -> dict[str, float]:
        """Probe forward + backward in eval mode; every statistic, read with one host sync."""
        weights_of = {name: weights(block) for name, block in self.blocks.items()}
        trainable = [w for ws in weights_of.values() for w in ws if w.requires_grad]  # frozen layers have no gradient
        acts, grads = probe_pass(model, self.blocks, self.probe, loss_fn, trainable)
        return self.statistics(weights_of, trainable, grads, acts)[0]

    def statistics(self, weights_of: dict[str, list[torch.Tensor]], trainable: list[torch.Tensor],
                   grads: tuple[torch.Tensor | None, ...], acts: dict[str, torch.Tensor], lead: int = 0) -> list[dict[str, float]]:
        """The metrics of each block's weights (`weights_of`), their gradients and activations, read with one host sync.

        `lead` = 1: stacked tensors (a member dimension first), one dict per member; else a list of one dict.
        """
        flat = [w for ws in weights_of.values() for w in ws]
        with torch.no_grad():
            norm = (lambda t: torch.linalg.vector_norm(t.flatten(1), dim=1)) if lead else torch.linalg.vector_norm
            zero = torch.zeros(flat[0].shape[:lead], device=flat[0].device)
            act_stats = {k: v for name, a in acts.items() for k, v in self.activation_stats(name, a, lead).items()}
            norms = [norm(w) for w in flat] + [zero if g is None else norm(g) for g in grads]
            table = torch.stack([*norms, *act_stats.values()]).tolist()
        return [self.assemble(weights_of, flat, trainable, act_stats, values) for values in (zip(*table) if lead else [table])]

    @staticmethod
    def assemble(weights_of: dict[str, list[torch.Tensor]], flat: list[torch.Tensor], trainable: list[torch.Tensor],
                 act_stats: dict[str, Any], values: Sequence[float]) -> dict[str, float]:
        """The metrics row entries from `values`: weight norms (of `flat`), gradient norms (of `trainable`), activations."""
        values = list(values)
        weight_norm = dict(zip(map(id, flat), values))
        grad_norm = dict(zip(map(id, trainable), values[len(flat):]))
        stats = {}
        for name, ws in weights_of.items():
            if any(id(w) in grad_norm for w in ws):
                stats[f"grad_norm/{name}"] = combined_norm([grad_norm[id(w)] for w in ws if id(w) in grad_norm])
            stats[f"weight_norm/{name}"] = combined_norm([weight_norm[id(w)] for w in ws])
        stats.update(zip(act_stats, values[len(flat) + len(trainable):]))
        return stats

    def activation_stats(self, name: str, a: torch.Tensor, lead: int = 0) -> dict[str, torch.Tensor]:
        """The statistics of block `name`'s activations `a` (with `lead` leading member dimensions: one value per member)."""
        a = a.float()
        mean, std = spread(a, lead)
        stats = {f"act_mean/{name}": mean, f"act_std/{name}": std}
        if self.family == "relu":
            stats[f"dead_frac/{name}"] = dead_fraction(a, lead)
        elif name in self.bounds:
            stats[f"sat_frac/{name}"] = saturated_fraction(a, *self.bounds[name], lead=lead)
        return stats


def probe_pass(model: nn.Module, blocks_of: dict[str, nn.Module], probe: tuple[torch.Tensor, torch.Tensor],
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], weights: list[torch.Tensor],
               ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor | None, ...]]:
    """Each block's activation output on the probe (x, y), and the gradient of the loss w.r.t. `weights`, in eval mode."""
    x, y = probe
    acts: dict[str, torch.Tensor] = {}
    handles = [
        block.act.register_forward_hook(lambda _m, _i, out, name=name: acts.__setitem__(name, out.detach()))
        for name, block in blocks_of.items() if hasattr(block, "act")
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
