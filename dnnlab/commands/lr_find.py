"""`dnnlab lr-find [OVERRIDES]`: the learning-rate range test (Smith 2017; Géron ch. 11).

Train the configured model while the learning rate rises exponentially from `lr_find.start_lr`
to `lr_find.end_lr`, one rate per step; record the loss smoothed by a bias-corrected exponential
moving average; stop once it explodes (> `lr_find.diverge` × its minimum). The suggested rate is
`lr_find.factor` (10) times below the rate at the minimum, where the loss still falls steeply.
Writes lr_find.csv, lr_find.png and lr_find.json into the run folder; saves no model.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from dnnlab.errors import ConfigError

DEFAULTS = {"start_lr": 1e-7, "end_lr": 10.0, "steps": 300, "smoothing": 0.98, "diverge": 4.0, "factor": 10.0}


def settings(cfg: DictConfig) -> dict[str, float]:
    """`cfg.lr_find` over the defaults; ConfigError names a bad one."""
    s = {**DEFAULTS, **OmegaConf.to_container(cfg.get("lr_find") or OmegaConf.create({}), resolve=True)}
    checks = {
        "start_lr": s["start_lr"] > 0,
        "end_lr": s["end_lr"] > s["start_lr"],
        "steps": isinstance(s["steps"], int) and s["steps"] >= 2,
        "smoothing": 0 <= s["smoothing"] < 1,
        "diverge": s["diverge"] > 1,
        "factor": s["factor"] >= 1,
    }
    valid = {"start_lr": "a positive rate", "end_lr": f"a rate above start_lr ({s['start_lr']})",
             "steps": "an integer >= 2", "smoothing": "a number in [0, 1)", "diverge": "a factor > 1",
             "factor": "a factor >= 1"}
    for key, ok in checks.items():
        if not ok:
            raise ConfigError(f"lr_find.{key}={s[key]!r} is not valid; use {valid[key]}")
    return s


def batches(trainer, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches of the training split, epoch after epoch."""
    x, y, size = trainer.data.train_x, trainer.data.train_y, trainer.batch_size
    while True:
        order = torch.randperm(len(y), device=x.device, generator=generator)
        for start in range(0, len(y), size):
            idx = order[start : start + size]
            yield x[idx], y[idx]


def range_test(trainer, s: dict[str, float]) -> list[dict[str, float]]:
    """One row per step: step, lr, loss, smoothed_loss; ends early when the loss explodes."""
    rows: list[dict[str, float]] = []
    ratio = (s["end_lr"] / s["start_lr"]) ** (1 / (s["steps"] - 1))
    average, best = 0.0, math.inf
    data = batches(trainer, trainer.generator)
    for step in range(1, s["steps"] + 1):
        lr = s["start_lr"] * ratio ** (step - 1)
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr
        loss = trainer.train_step(*next(data))[0].item()  # one sync per step: we must see an explosion
        average = s["smoothing"] * average + (1 - s["smoothing"]) * loss
        smoothed = average / (1 - s["smoothing"] ** step)  # bias correction: early steps not pulled to 0
        rows.append({"step": step, "lr": lr, "loss": loss, "smoothed_loss": smoothed})
        if not math.isfinite(smoothed) or smoothed > s["diverge"] * best:
            break
        best = min(best, smoothed)
    return rows


def suggest(rows: list[dict[str, float]], factor: float) -> dict[str, Any]:
    """The rate at the minimum smoothed loss and the suggestion `factor` below it; a warning when the minimum is
    the first rate tried (the loss fell at no rate of the range, so the suggestion is a guess below it)."""
    finite = [r for r in rows if math.isfinite(r["smoothed_loss"])]
    low = min(finite, key=lambda r: r["smoothed_loss"])
    result: dict[str, Any] = {"min_loss_lr": low["lr"], "min_smoothed_loss": low["smoothed_loss"],
                              "suggested_lr": low["lr"] / factor}
    if low is rows[0]:
        result["warning"] = (f"the loss was lowest at the first rate tried (lr_find.start_lr={low['lr']:.3g}): it fell at "
                             f"no rate of the range, so {low['lr'] / factor:.3g} is only a guess below it. Start lower "
                             f"(e.g. lr_find.start_lr={low['lr'] / 1000:.3g}) and look at lr_find.png.")
    return result


def plot(rows: list[dict[str, float]], result: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = [r["lr"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(lrs, [r["loss"] for r in rows], color="0.8", lw=0.8, label="loss")
    ax.plot(lrs, [r["smoothed_loss"] for r in rows], color="C0", label="smoothed loss")
    ax.axvline(result["min_loss_lr"], color="0.5", ls=":", label=f"minimum at {result['min_loss_lr']:.2g}")
    ax.axvline(result["suggested_lr"], color="C3", ls="--", label=f"suggested {result['suggested_lr']:.2g}")
    ax.set_xscale("log")
    finite = [r["smoothed_loss"] for r in rows if math.isfinite(r["smoothed_loss"])]
    ax.set_ylim(min(finite) * 0.9, min(max(finite), 4 * finite[0]) * 1.05)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def lr_find(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run the range test for `cfg` and write its files into `run_dir`; returns lr_find.json's content."""
    from dnnlab.api import build_trainer, setup_errors
    from dnnlab.runs.rundir import RunDir, atomic_write

    s = settings(cfg)
    cfg = cfg.copy()
    with open_dict(cfg):  # the test sets the rate itself: no schedule (1cycle would also cycle momentum)
        cfg.schedule = {"_target_": None, "interval": "step"}
    run = RunDir(run_dir)
    with setup_errors():
        trainer = build_trainer(cfg, run)
    run.save_config(cfg)  # only once everything is built: a setup error leaves the folder empty
    rows = range_test(trainer, s)
    result = {**suggest(rows, s["factor"]), "steps": len(rows), "stopped_early": len(rows) < s["steps"], **s}
    with open(run.path / "lr_find.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, result, run.path / "lr_find.png")
    atomic_write(run.path / "lr_find.json", lambda f: json.dump(result, f, indent=2), mode="w")
    return result


def task(cfg: DictConfig) -> None:
    """Hydra task: the range test in Hydra's output folder, the suggestion on the terminal."""
    from dnnlab.api import default_run_dir
    from dnnlab.observe.console import console

    run_dir = default_run_dir()
    result = lr_find(cfg, run_dir)
    console.print(
        f"[bold]suggested learning rate {result['suggested_lr']:.3g}[/bold] "
        f"({result['factor']:g}× below {result['min_loss_lr']:.3g}, where the smoothed loss is lowest; "
        f"{result['steps']} steps) → optimizer.lr={result['suggested_lr']:.3g}\n"
        f"plot and CSV: {run_dir}/lr_find.png, lr_find.csv"
    )
    if "warning" in result:
        console.print(f"[yellow]warning:[/yellow] {result['warning']}", highlight=False)


def main(argv: list[str]) -> int:
    from hydra._internal.utils import get_args_parser  # Hydra's own flags, as `dnnlab train` reads them

    from dnnlab.api import default_run_dir, resume_override
    from dnnlab.cli import hydra_app, preflight, special_flags
    from dnnlab.errors import UserError
    from dnnlab.runs.rundir import remove_stray

    # The lr_find group holds the test's own settings; overrides like lr_find.steps=100 refine it. It goes
    # among the overrides (argparse takes them in one run, Hydra's flags before or after them).
    args = get_args_parser().parse_args(argv)
    at = argv.index(args.overrides[0]) if args.overrides else len(argv)
    argv = [*argv[:at], "+lr_find=default", *argv[at:]]
    args.overrides.insert(0, "+lr_find=default")
    if not special_flags(args):
        if resume_override(args.overrides):
            raise ConfigError("dnnlab lr-find does not continue a run: it trains a fresh copy of the configured model "
                              "for the range test. Drop resume= (give the run's own settings instead, e.g. model.width=…).")
        cfg = preflight(args)  # the same checks and messages as `dnnlab train`, before Hydra makes a folder
        if cfg is not None and args.cfg is None:
            settings(cfg)

    def guarded(cfg: DictConfig) -> None:
        """A user's mistake leaves no folder behind (hydra_app carries it to the one-paragraph report)."""
        try:
            task(cfg)
        except UserError:
            remove_stray(default_run_dir())  # the error came before the test wrote its files
            raise

    hydra_app(guarded, argv, "dnnlab lr-find")
    return 0
