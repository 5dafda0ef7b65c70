"""Stacked sweeps against the same jobs trained one after another, in one process run.

    python bench/stacked.py               # the issue's workloads (about 10 minutes on a 2-core CPU)
    python bench/stacked.py --quick       # 2 members, 1 epoch: checks that it runs end to end
    python bench/stacked.py --json out.json --only seeds

For each workload, the same K jobs are trained (a) one after another with `dnnlab.api.train`, the
basic launcher's way, and (b) as one stack with `dnnlab.api.train_stack`, what `hydra/launcher=stacked`
runs. Training time is the sum of the solo runs' `wall_s` against the stack's (every member of a stack
records the stack's wall time, so the stack's is their maximum; members trained one after another by the
stack's fallback record their own, which add up). "With set-up" times both calls whole: composing, building,
the folders, and the stack's speed probe. For the first workload the whole
command is timed too: `dnnlab train -m …` with the basic launcher against the stacked one, each in a
fresh process (start-up, composition, folders, reports included). Model-samples/s: samples each
member trained, summed over members, per second of training.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import machine  # bench/bench.py, beside this script
from dnnlab.api import StackMember, compose, train, train_stack


@dataclass
class Workload:
    name: str
    jobs: list[list[str]]  # one override list per member
    common: list[str]
    command: bool = False  # also time the whole `dnnlab train -m` command
    device: str = "cpu"


def workloads(quick: bool, cuda: bool) -> list[Workload]:
    seeds = [f"seed={k}" for k in range(2 if quick else 8)]
    rates = [f"optimizer.lr={lr:.2g}" for lr in ([1e-3, 3e-3] if quick else [1e-4 * 2 ** i for i in range(8)])]
    quick_common = ["trainer.epochs=1"] if quick else []
    found = [
        Workload("8 seeds, digits 64-100-100-100-10, batch 32", [[s] for s in seeds], quick_common, command=True),
        Workload("8 learning rates, digits 64-100-100-100-10, batch 32", [[r] for r in rates], quick_common),
        Workload("8 seeds, 784-300-100-10, batch 128, 60k samples", [[s] for s in seeds],
                 ["data=synthetic", f"data.n_samples={6000 if quick else 83334}", "data.n_features=784",
                  "data.n_classes=10", "model.depth=2", "model.width=[300,100]", "trainer.batch_size=128",
                  f"trainer.epochs={1 if quick else 2}"]),
    ]
    if cuda:
        members = [f"seed={k}" for k in range(4 if quick else 32)]
        for graph in ("false", "true"):
            found.append(Workload(f"32 seeds, 784-20x100-10, batch 128, cuda, cuda_graph={graph}", [[m] for m in members],
                                  ["data=synthetic", "data.n_samples=20000", "data.n_features=784", "data.n_classes=10",
                                   "model.depth=20", "model.width=100", "trainer.batch_size=128", "trainer.epochs=2",
                                   "trainer.device=cuda", f"trainer.cuda_graph={graph}"], device="cuda"))
    return found


def overrides(w: Workload, job: list[str]) -> list[str]:
    return ["trainer.progress=false", *w.common, *job]


def solo_times(w: Workload, folder: Path) -> tuple[float, float, list[dict]]:
    """(sum of the runs' wall_s, seconds for the whole loop including each run's set-up, summaries)."""
    t0 = time.perf_counter()
    summaries = [train(compose(overrides(w, job)), run_dir=folder / f"solo{k}") for k, job in enumerate(w.jobs)]
    return sum(s["wall_s"] for s in summaries), time.perf_counter() - t0, summaries


def stacked_time(w: Workload, folder: Path) -> tuple[float, float, list[dict]]:
    """(the stack's wall_s, seconds for train_stack including set-up and the speed probe, summaries)."""
    t0 = time.perf_counter()
    members = [StackMember(compose(overrides(w, job)), folder / f"member{k}") for k, job in enumerate(w.jobs)]
    results = train_stack(members)
    elapsed = time.perf_counter() - t0
    failed = [r for r in results if not isinstance(r, dict)]
    if failed:
        raise RuntimeError(f"{w.name}: {failed[0]}")
    solo = results[0].get("stack", {}).get("trained_solo")
    return (sum if solo else max)(r["wall_s"] for r in results), elapsed, results


def command_time(w: Workload, folder: Path, launcher: str) -> float:
    """Seconds for the whole `dnnlab train -m` command of `w`, in a fresh process."""
    sweep = ",".join(job[0].split("=", 1)[1] for job in w.jobs)
    key = w.jobs[0][0].split("=", 1)[0]
    argv = [sys.executable, "-m", "dnnlab.cli", "train", "-m", f"hydra/launcher={launcher}", f"{key}={sweep}",
            f"hydra.sweep.dir={folder / launcher}", *overrides(w, [])]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t0


def measure(w: Workload, quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        solo_s, solo_all_s, solo = solo_times(w, folder)
        stack_s, stack_all_s, stacked = stacked_time(w, folder)
        result = {
            "workload": w.name, "members": len(w.jobs), "solo_train_s": solo_s, "stack_train_s": stack_s,
            "train_speedup": solo_s / stack_s, "solo_with_setup_s": solo_all_s, "stack_with_setup_s": stack_all_s,
            "with_setup_speedup": solo_all_s / stack_all_s,
            "trained_solo": stacked[0].get("stack", {}).get("trained_solo", ""),
            "test_acc_solo": [s["test_acc"] for s in solo], "test_acc_stacked": [s["test_acc"] for s in stacked],
        }
        if w.command:
            basic = command_time(w, folder, "basic")
            stacked_cmd = command_time(w, folder, "stacked")
            result.update(command_basic_s=basic, command_stacked_s=stacked_cmd, command_speedup=basic / stacked_cmd)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 members, 1 epoch")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--only", help="only the workloads whose name contains this text")
    args = parser.parse_args(argv)
    from dnnlab.observe.console import console

    console.quiet = True  # the runs' own tables and bars: this script prints one line per workload
    results = []
    print(machine())
    for w in workloads(args.quick, torch.cuda.is_available()):
        if args.only and args.only not in w.name:
            continue
        r = measure(w, args.quick)
        results.append(r)
        line = (f"{r['workload']}: training {r['solo_train_s']:.1f} s one after another vs {r['stack_train_s']:.1f} s "
                f"stacked = {r['train_speedup']:.2f}×; with set-up (and the speed probe) {r['solo_with_setup_s']:.1f} s vs "
                f"{r['stack_with_setup_s']:.1f} s = {r['with_setup_speedup']:.2f}×")
        if "command_speedup" in r:
            line += (f"; whole command {r['command_basic_s']:.1f} s basic vs {r['command_stacked_s']:.1f} s stacked "
                     f"= {r['command_speedup']:.2f}×")
        if r["trained_solo"]:
            line += f" (the launcher trained them solo: {r['trained_solo']})"
        print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
