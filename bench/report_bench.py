"""How long `dnnlab report` takes on a big sweep: N synthetic job folders (no training), one report.

    python bench/report_bench.py               # 50 jobs × 20 epochs, 4 settings × seeds; best of 3
    python bench/report_bench.py --optuna      # the same as an Optuna sweep (study rebuilt, its two plots)
    python bench/report_bench.py --jobs 8 --repeats 1 --json out.json

The folders look like a real sweep's (`metrics.jsonl` with per-layer diagnostics, `summary.json`,
`.hydra/overrides.yaml`): optimizer × lr × dropout rate × seed. The timing is the whole command in a
fresh process (imports included), as a user would run it: terminal table, report.md, report.html and
every plot (validation curves with seed bands, parallel coordinates, metric against value).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from dnnlab.runs.rundir import RunDir

LAYERS = ("hidden1", "hidden2", "hidden3", "output")


def job_rows(rng: random.Random, epochs: int, lr: float, dropout: float) -> list[dict]:
    """A plausible learning curve whose end point depends on the settings (so the plots say something)."""
    ceiling = 0.95 - 0.08 * abs(math.log10(lr) + 2.5) - 0.2 * dropout
    rows = []
    for epoch in range(1, epochs + 1):
        acc = ceiling * (1 - math.exp(-epoch / 4)) + rng.gauss(0, 0.01)
        row = {"epoch": epoch, "step": 50 * epoch, "lr": lr, "train_loss": 2.3 * (1 - acc) + 0.05,
               "train_acc": acc + 0.02, "val_loss": 2.3 * (1 - acc) + 0.1, "val_acc": acc,
               "epoch_s": 0.5, "samples_per_s": 2000.0}
        for i, layer in enumerate(LAYERS):
            row.update({f"grad_norm/{layer}": 0.1 * (i + 1), f"weight_norm/{layer}": 5.0, f"act_mean/{layer}": 0.2,
                        f"act_std/{layer}": 0.5, f"dead_frac/{layer}": 0.05})
        rows.append(row)
    return rows


SPACE = {"optimizer.lr": "tag(log, interval(1e-4, 1e-1))", "regularization.dropout.rate": "interval(0.0, 0.5)"}
OPTUNA = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


def make_sweep(root: Path, jobs: int = 50, epochs: int = 20, seeds: int = 2, extra: dict | None = None,
               optuna: bool = False, storage: str | None = None) -> Path:
    """A sweep folder of `jobs` finished job folders 0…jobs-1; `extra` overrides are added to every job;
    `optuna`: each job's .hydra/hydra.yaml records an Optuna sweeper over SPACE (with `storage`)."""
    rng = random.Random(0)
    grid = itertools.product(("sgd", "adam", "nadam"), (1e-4, 1e-3, 1e-2, 3e-2, 1e-1), (0.0, 0.2, 0.4), range(seeds))
    for job, (optimizer, lr, dropout, seed) in zip(range(jobs), itertools.cycle(grid)):
        run = RunDir(root / str(job))
        rows = job_rows(rng, epochs, lr, dropout)
        for row in rows:
            run.append_metrics(row)
        overrides = {"optimizer": optimizer, "optimizer.lr": lr, "regularization.dropout.rate": dropout, "seed": seed,
                     **(extra or {})}
        (run.path / ".hydra").mkdir()
        (run.path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in overrides.items()]))
        if optuna:
            sweeper = {"_target_": OPTUNA, "direction": "maximize", "study_name": "s", "storage": storage, "params": SPACE}
            hydra = {"hydra": {"sweeper": sweeper, "runtime": {"cwd": str(root.parent)}}}
            (run.path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
        run.write_summary({"status": "completed", "epochs": epochs, "test_acc": rows[-1]["val_acc"] - 0.01,
                           "test_loss": rows[-1]["val_loss"], "best_val_acc": max(r["val_acc"] for r in rows),
                           "final_val_acc": rows[-1]["val_acc"], "wall_s": 0.5 * epochs, "health": []})
    return root


def time_report(sweep: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dnnlab.cli", "report", str(sweep)], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--optuna", action="store_true", help="an Optuna sweep: also its study rebuilt, its plots")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep = make_sweep(Path(tmp) / "sweep", args.jobs, args.epochs, optuna=args.optuna)
        times = [time_report(sweep) for _ in range(args.repeats)]
        html_kb = (sweep / "report.html").stat().st_size / 1024
        plots = sorted(p.name for p in sweep.glob("*.png"))
    result = {"jobs": args.jobs, "epochs": args.epochs, "optuna": args.optuna, "report_s": min(times), "all_s": times,
              "report_html_kb": round(html_kb, 1), "plots": plots}
    kind = "Optuna sweep" if args.optuna else "grid sweep"
    print(f"dnnlab report, {kind} of {args.jobs} jobs × {args.epochs} epochs: {min(times):.2f} s (best of {len(times)}), "
          f"report.html {html_kb:.0f} KiB, plots: {', '.join(plots)}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
