"""Throughput benchmark: dnnlab's trainer versus hand-written PyTorch loops, in one process.

    python bench/bench.py              # full workloads (minutes on a 2-core CPU)
    python bench/bench.py --quick      # small versions, end to end in well under a minute
    python bench/bench.py --json out.json --device cuda

    python bench/bench.py --variants "dnnlab,cuda graph"   # only these dnnlab variants

Loops compared on the same model, data, optimizer (Adam) and batch size, each doing E epochs of
training plus a validation pass per epoch: (a) dnnlab's Trainer through its Python API, run folder
and checkpoints included, in each of its VARIANTS (fast paths: bf16, torch.compile, CUDA graph,
channels_last); (b) a lean hand-written loop (data on the device, batches by index, one host sync
per epoch) with PyTorch's default Adam, and the same with fused Adam (what dnnlab's
`optimizer.implementation=auto` picks); on CUDA also the whole step captured by hand in one CUDA
graph; (c) a typical DataLoader loop (per-batch host→device copies, loss.item() per step); (d)
PyTorch Lightning when installed. Prints samples/s and the ratio to (b).

dnnlab is timed over E epochs after a first one that warms up (compiles, captures); a variant
that falls back reports why instead of a number.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import torch
from torch import nn

from dnnlab.api import build_model, build_trainer, compose
from dnnlab.data import Splits
from dnnlab.engine.hooks import Hook
from dnnlab.runs.rundir import RunDir


@dataclass
class Workload:
    name: str
    overrides: list[str]
    input_shape: tuple[int, ...]
    batch_size: int
    n_train: int
    n_val: int = field(default=0)

    def __post_init__(self):
        self.n_val = self.n_val or self.n_train // 10


def workloads(quick: bool) -> list[Workload]:
    n = 6_000 if quick else 60_000
    return [
        Workload("mlp 784-300-100-10, batch 128", ["model.depth=2", "model.width=300"], (784,), 128, n),
        Workload("mlp 20x100 elu, batch 128", ["model.depth=20", "model.width=100", "activation=elu"], (784,), 128, n),
        Workload("mlp 20x100 elu, batch 1024", ["model.depth=20", "model.width=100", "activation=elu"], (784,), 1024, n),
        Workload("cnn 32x32x3, batch 128", ["model=cnn", "model.depth=2", "model.width=32", "model.dense=128"], (3, 32, 32), 128, n // 6),
    ]


def random_splits(w: Workload, device: torch.device) -> Splits:
    g = torch.Generator().manual_seed(0)
    def part(n):
        return torch.randn(n, *w.input_shape, generator=g), torch.randint(0, 10, (n,), generator=g)
    (tx, ty), (vx, vy), (sx, sy) = part(w.n_train), part(w.n_val), part(w.n_val)
    return Splits(tx, ty, vx, vy, sx, sy, n_classes=10, input_shape=w.input_shape, name="random").to(device)


def config(w: Workload, epochs: int, device: str, extra: list[str]):
    base = [f"trainer.batch_size={w.batch_size}", f"trainer.epochs={epochs}", f"trainer.device={device}",
            "trainer.progress=false", "optimizer=adam"]
    return compose([*base, *w.overrides, *extra])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def lean_loop(model: nn.Module, data: Splits, batch_size: int, epochs: int, fused: bool = False) -> float:
    """The hand-written limit: device-resident data, index batches, one .item() per epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)
    loss_fn = nn.CrossEntropyLoss()
    n, dev = len(data.train_y), data.train_x.device
    sync(dev)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        total = torch.zeros((), device=dev)
        for idx in torch.randperm(n, device=dev).split(batch_size):
            loss = loss_fn(model(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        model.eval()
        with torch.no_grad():
            val = loss_fn(model(data.val_x), data.val_y)
        (total + val).item()
    sync(dev)
    return n * epochs / (time.perf_counter() - start)


def dataloader_loop(model: nn.Module, data: Splits, batch_size: int, epochs: int) -> float:
    """What most tutorials write: a DataLoader over CPU tensors, .to(device) and .item() every step."""
    from torch.utils.data import DataLoader, TensorDataset

    dev = data.train_x.device
    train = DataLoader(TensorDataset(data.train_x.cpu(), data.train_y.cpu()), batch_size=batch_size, shuffle=True)
    val = DataLoader(TensorDataset(data.val_x.cpu(), data.val_y.cpu()), batch_size=1024)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    sync(dev)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        running = 0.0
        for x, y in train:
            x, y = x.to(dev), y.to(dev)
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item()
        model.eval()
        with torch.no_grad():
            for x, y in val:
                loss_fn(model(x.to(dev)), y.to(dev)).item()
    sync(dev)
    return len(data.train_y) * epochs / (time.perf_counter() - start)


def graph_loop(model: nn.Module, data: Splits, batch_size: int, epochs: int) -> float:
    """The hand-written GPU limit: the whole step (forward, backward, capturable Adam) in one CUDA graph,
    replayed on a static index buffer; full batches only (PyTorch's "whole network capture" recipe)."""
    dev = data.train_x.device
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    loss_fn = nn.CrossEntropyLoss()
    idx = torch.arange(batch_size, device=dev)

    def step() -> torch.Tensor:
        loss = loss_fn(model(data.train_x[idx]), data.train_y[idx])
        loss.backward()
        opt.step()
        return loss.detach()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    opt.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()
    n = len(data.train_y)
    full = n // batch_size
    sync(dev)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        total = torch.zeros((), device=dev)
        order = torch.randperm(n, device=dev)
        for b in range(full):
            idx.copy_(order[b * batch_size : (b + 1) * batch_size])
            graph.replay()
            total += static_loss
        model.eval()
        with torch.no_grad():
            val = loss_fn(model(data.val_x), data.val_y)
        (total + val).item()
    sync(dev)
    return full * batch_size * epochs / (time.perf_counter() - start)


class EpochClock(Hook):
    """Time from the end of the first (warm-up) epoch to the end of the last; each end follows a host sync."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_epoch_end(self, trainer, metrics) -> None:
        self.ends.append(time.perf_counter())


def dnnlab_loop(w: Workload, data: Splits, epochs: int, device: str, extra: list[str]) -> float | str:
    """dnnlab's Trainer via the Python API, run folder, checkpoints and hooks included; samples/s over
    `epochs` epochs after a warm-up one, or the reason a fast path did not apply."""
    cfg = config(w, epochs + 1, device, extra)
    clock = EpochClock()
    with tempfile.TemporaryDirectory() as tmp:
        summary = build_trainer(cfg, RunDir(tmp), [clock], data=data).fit()
    off = [f"{key} {why}" for key, why in summary.get("fast_path", {}).items() if why.startswith("off")]
    if off:
        return "; ".join(off)
    return len(data.train_y) * epochs / (clock.ends[-1] - clock.ends[0])


def lightning_loop(model: nn.Module, data: Splits, batch_size: int, epochs: int) -> float | None:
    try:
        import lightning.pytorch as pl
    except ImportError:
        return None
    from torch.utils.data import DataLoader, TensorDataset

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net, self.loss_fn = model, nn.CrossEntropyLoss()

        def training_step(self, batch, _):
            x, y = batch
            return self.loss_fn(self.net(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", self.loss_fn(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    train = DataLoader(TensorDataset(data.train_x.cpu(), data.train_y.cpu()), batch_size=batch_size, shuffle=True)
    val = DataLoader(TensorDataset(data.val_x.cpu(), data.val_y.cpu()), batch_size=1024)
    accel = "gpu" if data.train_x.is_cuda else "cpu"
    trainer = pl.Trainer(max_epochs=epochs, accelerator=accel, devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(Module(), train, val)
    return len(data.train_y) * epochs / (time.perf_counter() - start)


def fresh_model(w: Workload, data: Splits, device: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(config(w, 1, device, []), data).to(data.train_x.device)


# dnnlab's configurations measured: name → overrides. Fast paths that cannot apply report why.
VARIANTS: dict[str, list[str]] = {
    "dnnlab": [],
    "dnnlab no-diag": ["trainer.diagnostics=false"],
    "optimizer foreach": ["optimizer.implementation=foreach"],
    "optimizer loop": ["optimizer.implementation=loop"],
    "bf16": ["trainer.precision=bf16"],
    "compile": ["trainer.compile=true"],
    "compile reduce-overhead": ["trainer.compile=reduce-overhead"],
    "cuda graph": ["trainer.cuda_graph=true"],
    "cuda graph bf16": ["trainer.cuda_graph=true", "trainer.precision=bf16"],
    "channels_last": ["trainer.channels_last=true"],
}
CPU_VARIANTS = ("dnnlab", "dnnlab no-diag", "bf16", "compile", "cuda graph", "channels_last")


def measure(w: Workload, device: str, epochs: int, repeats: int, variants: dict[str, list[str]]) -> dict:
    """samples/s of every loop on workload `w`: the best of `repeats` rounds, each round running every loop
    once, so a slow spell of a shared machine hits all loops alike instead of one."""
    dev = torch.device(device)
    data = random_splits(w, dev)
    size = w.batch_size
    loops: dict[str, Callable[[], float | str | None]] = {
        "lean": lambda: lean_loop(fresh_model(w, data, device), data, size, epochs),
        "lean fused": lambda: lean_loop(fresh_model(w, data, device), data, size, epochs, fused=True),
    }
    if dev.type == "cuda":
        loops["graph by hand"] = lambda: graph_loop(fresh_model(w, data, device), data, size, epochs)
    loops["dataloader"] = lambda: dataloader_loop(fresh_model(w, data, device), data, size, epochs)
    for label, extra in variants.items():
        loops[label] = lambda extra=extra: dnnlab_loop(w, data, epochs, device, extra)
    loops["lightning"] = lambda: lightning_loop(fresh_model(w, data, device), data, size, epochs)
    lean_loop(fresh_model(w, data, device), data, size, 1)  # warm-up (allocator, kernels) before anything is timed
    runs: dict[str, list[float | str | None]] = {label: [] for label in loops}
    for _ in range(repeats):
        for label, loop in loops.items():
            runs[label].append(loop())
    return {label: best(results) for label, results in runs.items()}


def best(results: list[float | str | None]) -> float | str | None:
    """The fastest run; a fast path's reason for being off, or None (not installed), when there is no number."""
    numbers = [r for r in results if isinstance(r, float)]
    return max(numbers) if numbers else results[0]


def startup_seconds() -> dict[str, float]:
    """Wall time of `dnnlab train experiment=smoke` in a fresh process (imports included), and the floor
    every PyTorch training script pays on this machine: importing torch and building one optimizer
    (which imports torch._dynamo)."""
    floor = "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])"
    commands = {"smoke": [sys.executable, "-m", "dnnlab.cli", "train", "experiment=smoke"],
                "torch_floor": [sys.executable, "-c", floor]}
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, cwd=tmp, check=True, capture_output=True)
            times[name] = time.perf_counter() - start
    return times


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small workloads, 1 repeat")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--only", help="run only the workloads whose name contains this text")
    parser.add_argument("--variants", help=f"comma-separated dnnlab variants (default: all on CUDA, "
                                           f"{', '.join(CPU_VARIANTS)} on CPU); known: {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else 3)
    repeats = 1 if args.quick else 3
    names = args.variants.split(",") if args.variants else list(VARIANTS if args.device.startswith("cuda") else CPU_VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    variants = {n: VARIANTS[n] for n in names}
    results = {"machine": machine(), "device": args.device, "epochs": epochs, "workloads": {}}
    for w in (w for w in workloads(args.quick) if not args.only or args.only in w.name):
        row = measure(w, args.device, epochs, repeats, variants)
        results["workloads"][w.name] = row
    startup = startup_seconds()
    results["startup_smoke_s"], results["startup_torch_floor_s"] = startup["smoke"], startup["torch_floor"]
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def print_table(results: dict) -> None:
    """One row per loop, one column per workload; fast paths that were off are footnoted with the reason."""
    from rich.console import Console
    from rich.table import Table

    rows = results["workloads"]
    table = Table(title=f"samples/s (ratio to lean) — {results['machine']}, {results['device']}")
    table.add_column("loop")
    for name in rows:
        table.add_column(name, justify="right")
    notes: list[str] = []
    for loop in dict.fromkeys(c for row in rows.values() for c in row):
        table.add_row(loop, *(cell(row.get(loop), row["lean"], notes) for row in rows.values()))
    out = Console()
    out.print(table)
    for i, note in enumerate(notes, 1):
        out.print(f"[{i}] {note}")
    out.print(f"start-up: dnnlab train experiment=smoke takes {results['startup_smoke_s']:.2f} s; importing torch and "
              f"building an optimizer alone takes {results['startup_torch_floor_s']:.2f} s")


def cell(value: float | str | None, lean: float, notes: list[str]) -> str:
    if value is None:
        return "not installed"
    if isinstance(value, str):
        if value not in notes:
            notes.append(value)
        return f"off [{notes.index(value) + 1}]"
    return f"{value:,.0f} ({value / lean:.2f}×)"


if __name__ == "__main__":
    sys.exit(main())
