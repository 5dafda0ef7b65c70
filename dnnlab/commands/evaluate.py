"""`dnnlab eval RUN [--mc-dropout N] [--seed S]`: evaluate a run's best checkpoint on the test split.

With `--mc-dropout N` the dropout layers stay active at test time (batch norm keeps its stored
statistics) and the softmax is averaged over N stochastic passes — Monte Carlo dropout (Gal &
Ghahramani 2016; Géron ch. 11) — reported beside the deterministic result, with the mean
predictive entropy as the model's uncertainty. The numbers go to the terminal and RUN/eval.json.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict
from torch import nn

from dnnlab.data import Splits
from dnnlab.models import dropouts
from dnnlab.pretrain import Classification

DATA_ROOT_HELP = "where the run's data set lies here, if not where it lay when training (its fingerprint must match)"


@dataclass
class LoadedRun:
    """A run folder's model (its checkpoint's weights, eval mode), data and task."""

    path: Path
    checkpoint: Path
    cfg: DictConfig
    model: nn.Module
    data: Splits
    task: Classification
    device: torch.device


def load_run(run: str | Path, checkpoint: str = "best", device: str = "auto", data_root: str | Path | None = None) -> LoadedRun:
    """Rebuild RUN's model from its checkpoint's config (checked against RUN/.hydra/config.yaml) and load
    RUN/checkpoints/<checkpoint>.pt; `data_root` replaces data.root (the data must still be the run's)."""
    from dnnlab.runs import record
    from dnnlab.api import build_model, build_regularizers, pick_device, setup_errors
    from dnnlab.data import load_data
    from dnnlab.errors import CheckpointError, RunFolderError
    from dnnlab import transfer
    from dnnlab.pretrain import build_task
    from dnnlab.runs.checkpoints import load_checkpoint, model_mismatch
    from dnnlab.runs.rundir import RunDir

    path = Path(run).expanduser()
    folder = RunDir(path, create=False)
    config, file = folder.config_path, folder.checkpoint_path(checkpoint)
    for needed in (config, file):
        if not needed.is_file():
            raise RunFolderError(f"{run} is not a finished dnnlab run folder: {needed} does not exist. "
                                 f"Give a run folder that `dnnlab train` wrote (e.g. outputs/2026-01-31/12-00-00).")
    state = load_checkpoint(file)
    cfg = record.run_config(config, state, file)  # the values as trained, `${oc.env:…}` included
    with open_dict(cfg):  # the checkpoint has the final weights: no reuse or freezing to redo
        cfg.model.update(transfer.defaults())
        if data_root is not None:
            cfg.data.root = str(data_root)
    with setup_errors():
        target = pick_device(device, option="--device ")
        task = build_task(cfg.model)
        raw = load_data(cfg.data)
        record.check_data(record.recorded_data(state), record.data_record(raw), cfg.data.get("root"), str(file))
        data = task.prepare(raw)
        model = build_model(cfg, data, build_regularizers(cfg))
    state = state["model"]
    problems = model_mismatch(model, state)
    if problems:
        raise CheckpointError(f"{file} does not fit the model its run's config builds: {'; '.join(problems)}.")
    model.load_state_dict(state)
    return LoadedRun(path, file, cfg, model.to(target).eval(), data.to(target), task, target)


def outputs(model: nn.Module, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    """The model's outputs for `x`, in batches, without gradients."""
    with torch.inference_mode():
        return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy −Σ p log p of each row, in nats."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(1)


def scores(loaded: LoadedRun, out: torch.Tensor, probs: torch.Tensor | None = None) -> dict[str, float]:
    """Loss, accuracy and mean predictive entropy of outputs (or of given class probabilities)."""
    y = loaded.data.test_y
    if not isinstance(loaded.task.loss_fn, nn.CrossEntropyLoss):  # a reconstruction: a loss, no classes
        return {"loss": loaded.task.loss_fn(out, y).item(), "acc": math.nan, "mean_entropy": math.nan}
    # Deterministic: the trainer's loss on the logits; MC dropout: the negative log of the averaged probabilities.
    loss = loaded.task.loss_fn(out, y) if probs is None else nn.functional.nll_loss(probs.clamp_min(1e-12).log(), y)
    probs = out.softmax(1) if probs is None else probs
    return {
        "loss": loss.item(),
        "acc": (probs.argmax(1) == y).float().mean().item(),
        "mean_entropy": entropy(probs).mean().item(),
    }


def mc_dropout_probs(model: nn.Module, x: torch.Tensor, passes: int, seed: int) -> torch.Tensor:
    """Softmax averaged over `passes` forward passes with dropout on and batch norm frozen; repeatable by `seed`."""
    layers = dropouts(model)
    model.eval()
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # leaves the caller's random state as it was
        torch.manual_seed(seed)
        for m in layers:
            m.train()  # only dropout samples; batch norm still normalizes with its running statistics
        try:
            return torch.stack([outputs(model, x).softmax(1) for _ in range(passes)]).mean(0)
        finally:
            model.eval()


def evaluate(loaded: LoadedRun, mc_passes: int = 0, seed: int = 0) -> dict[str, Any]:
    """eval.json's content: the deterministic test metrics, and MC dropout's when `mc_passes` > 0."""
    from dnnlab.errors import ConfigError

    out = outputs(loaded.model, loaded.data.test_x)
    result: dict[str, Any] = {
        "run": str(loaded.path), "checkpoint": str(loaded.checkpoint), "split": "test",
        "n": len(loaded.data.test_y), "deterministic": scores(loaded, out),
    }
    if mc_passes:
        if not dropouts(loaded.model):
            raise ConfigError(f"--mc-dropout {mc_passes}: the model of {loaded.path} has no dropout layer to keep "
                              f"active; train it with regularization=[dropout] (or alpha_dropout).")
        if not isinstance(loaded.task.loss_fn, nn.CrossEntropyLoss):
            raise ConfigError(f"--mc-dropout averages class probabilities, but {loaded.path} was trained to "
                              f"reconstruct its inputs (model.task: {loaded.cfg.model.task._target_}).")
        probs = mc_dropout_probs(loaded.model, loaded.data.test_x, mc_passes, seed)
        mc = scores(loaded, out, probs)
        mc["disagreement"] = (probs.argmax(1) != out.argmax(1)).float().mean().item()
        result["mc_dropout"] = {"passes": mc_passes, "seed": seed, **mc}
    return result


def table(result: dict[str, Any]):
    """The terminal table: one row per metric, one column per method."""
    from rich.table import Table

    methods = [m for m in ("deterministic", "mc_dropout") if m in result]
    title = f"{result['run']} — test split ({result['n']} samples)"
    if "mc_dropout" in result:
        title += f", MC dropout: {result['mc_dropout']['passes']} passes, seed {result['mc_dropout']['seed']}"
    t = Table(title=title, header_style="bold")
    t.add_column("metric")
    for m in methods:
        t.add_column(m.replace("_", " "), justify="right")
    for key in ("acc", "loss", "mean_entropy", "disagreement"):
        values = [result[m].get(key) for m in methods]
        if any(v is not None for v in values):
            t.add_row(key, *("—" if v is None or not math.isfinite(v) else f"{v:.4f}" for v in values))
    return t


def json_safe(value: Any) -> Any:
    """`value` with every NaN/inf, however deeply nested, as None (JSON has no NaN)."""
    from dnnlab.runs.rundir import finite_or_none

    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return finite_or_none(value)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def main(argv: list[str]) -> int:
    from dnnlab.observe.console import console
    from dnnlab.errors import writing
    from dnnlab.runs.rundir import RunDir, atomic_write

    parser = argparse.ArgumentParser(prog="dnnlab eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder (holding .hydra/config.yaml and checkpoints/)")
    parser.add_argument("--mc-dropout", type=positive, default=0, metavar="N",
                        help="also average the softmax over N passes with dropout active")
    parser.add_argument("--seed", type=int, default=0, help="seed of MC dropout's masks (default 0)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--data-root", metavar="DIR", help=DATA_ROOT_HELP)
    args = parser.parse_args(argv)
    loaded = load_run(args.run, args.checkpoint, args.device, args.data_root)
    result = evaluate(loaded, args.mc_dropout, args.seed)
    text = json.dumps(json_safe(result), indent=2, ensure_ascii=False)
    console.print(table(result))  # first: a folder that cannot be written must not cost the computed result
    target = RunDir(loaded.path, create=False).eval_path
    with writing(target, after="The result is printed above, not saved."):
        atomic_write(target, lambda f: f.write(text), mode="w")
    return 0
