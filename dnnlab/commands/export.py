"""`dnnlab export RUN --fold-bn [--precision bf16|fp16]`: a low-latency copy of a run's best model.

`--fold-bn` folds every batch norm into an adjacent linear/conv layer (Géron ch. 11, "fold the BN
layers into the previous layer"; Jacob et al. 2018): at inference BN is the affine map
y = γ(x − μ)/√(σ² + ε) + β = s·x + t, so
  * BN right after a layer (`normalization=batchnorm`): W' = s·W (row-wise), b' = s·(b − μ) + β;
  * BN after the activation (`normalization=batchnorm_after`) feeds the next linear layer through
    dropout (the identity at inference): W' = W·diag(s), b' = b + W·t — exact for a Linear. Before
    a conv layer or a max-pool it is not exact (zero padding, and max does not commute with a
    negative scale), so such a BN is kept and reported as not folded.
The folded model must match the original within 1e-5 (max |Δ| of the outputs on the test split, in
float32; times the largest |output| when that exceeds 1); both are timed at batch 1 and 256 (median of repeated runs). `--precision` also casts
the folded model to bfloat16 or float16 and reports the accuracy change. Results: RUN/export.json;
files: RUN/export/model.pt (state dict) and RUN/export/model.pt2 (torch.export program).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dnnlab.commands.evaluate import DATA_ROOT_HELP, LoadedRun, load_run, outputs, scores
from dnnlab.models import BATCH_NORMS, DROPOUTS, WEIGHTED, leaves
from dnnlab.runs.rundir import RunDir

TOLERANCE = 1e-5
# Modules that are the identity on a BN1d's (N, C) output at inference: BN may fold across them.
IDENTITY_AT_INFERENCE = (*DROPOUTS, nn.Identity, nn.Flatten)
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


def bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """BN at inference as y = s·x + t, in float64."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)
    return s, beta - mean * s


@torch.no_grad()
def set_affine(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Give `layer` new weight and bias (adding a bias where it had none), in its own dtype."""
    layer.weight.copy_(weight.to(layer.weight.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=layer.weight.dtype, device=layer.weight.device))
    layer.bias.copy_(bias.to(layer.bias.dtype))


def bias_of(layer: nn.Module) -> torch.Tensor:
    return layer.bias.double() if layer.bias is not None else torch.zeros(layer.weight.shape[0], dtype=torch.float64, device=layer.weight.device)


def fold_into_previous(layer: nn.Module, bn: nn.Module) -> None:
    """BN(Wx + b) = (s·W)x + s·(b − μ) + β."""
    s, t = bn_affine(bn)
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    set_affine(layer, layer.weight.double() * s.view(shape), bias_of(layer) * s + t)


def fold_into_next(layer: nn.Linear, bn: nn.Module) -> None:
    """W·BN(h) + b = (W·diag(s))h + (W·t + b)."""
    s, t = bn_affine(bn)
    weight = layer.weight.double()
    set_affine(layer, weight * s.view(1, -1), weight @ t + bias_of(layer))


def name_of(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def fold_bn(model: nn.Module) -> tuple[nn.Module, list[str], list[dict[str, str]]]:
    """A copy of `model` with every foldable BN folded away; also what was folded and what was not, and why."""
    model = copy.deepcopy(model).eval()
    folded, kept = [], []
    sequence = leaves(model)
    for i, (parent, attr, bn) in enumerate(sequence):
        if not isinstance(bn, BATCH_NORMS):
            continue
        where = name_of(model, bn)
        if not bn.track_running_stats or bn.running_mean is None:
            kept.append({"layer": where, "why": "it normalizes with batch statistics at inference (no running statistics)"})
            continue
        previous = sequence[i - 1][2] if i else None
        if isinstance(previous, WEIGHTED) and previous.weight.shape[0] == bn.num_features:
            fold_into_previous(previous, bn)
            folded.append(f"{where} → {name_of(model, previous)}")
        else:
            j = i + 1
            while j < len(sequence) and isinstance(sequence[j][2], IDENTITY_AT_INFERENCE):
                j += 1
            after = sequence[j][2] if j < len(sequence) else None
            if isinstance(bn, nn.BatchNorm1d) and isinstance(after, nn.Linear) and after.in_features == bn.num_features:
                fold_into_next(after, bn)
                folded.append(f"{where} → {name_of(model, after)} (the next layer)")
            else:
                what = type(after).__name__ if after is not None else "the end of the model"
                kept.append({"layer": where, "why": f"it follows the activation and is followed by {what}, "
                                                    f"which it cannot be folded into exactly"})
                continue
        setattr(parent, attr, nn.Identity())
    return model, folded, kept


def median_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median wall time of one forward pass, in milliseconds (after warm-up)."""
    cuda = x.device.type == "cuda"
    times = []
    with torch.inference_mode():
        for i in range(repeats + max(3, repeats // 10)):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize()
            if i >= max(3, repeats // 10):  # the first passes warm caches and allocators
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def latencies(model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median latency at batch 1 and 256 (test inputs, repeated to fill the batch)."""
    big = x[torch.arange(256, device=x.device) % len(x)]
    return {"batch_1": median_ms(model, x[:1], repeats), "batch_256": median_ms(model, big, repeats)}


def save(model: nn.Module, example: torch.Tensor, folder: Path, stem: str) -> dict[str, str]:
    """The state dict, and a torch.export program with a dynamic batch size (when torch can export it)."""
    from dnnlab.runs.rundir import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    files = {"state_dict": str(folder / f"{stem}.pt")}
    atomic_write(folder / f"{stem}.pt", lambda f: torch.save(model.state_dict(), f))
    try:
        program = torch.export.export(model, (example[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, folder / f"{stem}.pt2")
        files["program"] = str(folder / f"{stem}.pt2")
    except Exception as error:  # torch.export is optional: the state dict is the export
        files["program"] = f"not written: torch.export failed ({type(error).__name__}: {error})"
    return files


def reduced_precision(loaded: LoadedRun, model: nn.Module, name: str, repeats: int, reference: dict[str, float]) -> dict[str, Any]:
    """Cast `model` and the inputs to bf16/fp16: the test accuracy change, output drift and latency."""
    dtype = PRECISIONS[name]
    low = copy.deepcopy(model).to(dtype)
    x = loaded.data.test_x.to(dtype)
    out = outputs(low, x).float()
    metrics = scores(loaded, out)
    files = save(low, x, loaded.path / "export", f"model_{name}")
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "test_acc_fp32": reference["acc"], "test_acc": metrics["acc"], "acc_change": metrics["acc"] - reference["acc"],
        "test_loss_fp32": reference["loss"], "test_loss": metrics["loss"],
        "max_abs_diff": (out - outputs(model, loaded.data.test_x)).abs().max().item(),
        "latency_ms": latencies(low, x, repeats), "files": files,
    }


def export(loaded: LoadedRun, fold: bool = True, precision: str | None = None, repeats: int = 100) -> dict[str, Any]:
    """export.json's content; writes the exported files into RUN/export/."""
    original = loaded.model.eval()
    exported, folded, kept = fold_bn(original) if fold else (copy.deepcopy(original).eval(), [], [])
    x = loaded.data.test_x
    reference_out = outputs(original, x)
    diff = (outputs(exported, x) - reference_out).abs().max().item()
    # float32 keeps ~7 digits: outputs far above 1 get a proportionally larger allowance.
    tolerance = TOLERANCE * max(1.0, reference_out.abs().max().item())
    before, after = latencies(original, x, repeats), latencies(exported, x, repeats)
    reference = scores(loaded, outputs(exported, x))
    result: dict[str, Any] = {
        "run": str(loaded.path), "checkpoint": str(loaded.checkpoint), "fold_bn": fold,
        "folded": folded, "not_folded": kept, "n_test": len(x),
        "max_abs_diff": diff, "tolerance": tolerance, "within_tolerance": diff <= tolerance,
        "test_acc": reference["acc"],
        "latency_ms": {"original": before, "exported": after},
        "speedup": {k: before[k] / after[k] for k in before},
        "repeats": repeats, "device": str(loaded.device), "threads": torch.get_num_threads(),
        "files": save(exported, x, RunDir(loaded.path, create=False).export_dir, "model"),
    }
    if precision:
        result["precision"] = reduced_precision(loaded, exported, precision, repeats, reference)
    return result


def summary_table(result: dict[str, Any]):
    from rich.table import Table

    t = Table(title=f"{result['run']} — exported ({len(result['folded'])} batch norms folded)", header_style="bold")
    t.add_column("latency (median ms)")
    t.add_column("original", justify="right")
    t.add_column("exported", justify="right")
    t.add_column("speed-up", justify="right")
    if "precision" in result:
        t.add_column(result["precision"]["dtype"], justify="right")
    for batch in ("batch_1", "batch_256"):
        row = [batch.replace("_", " "), f"{result['latency_ms']['original'][batch]:.4f}",
               f"{result['latency_ms']['exported'][batch]:.4f}", f"{result['speedup'][batch]:.2f}×"]
        if "precision" in result:
            row.append(f"{result['precision']['latency_ms'][batch]:.4f}")
        t.add_row(*row)
    return t


def main(argv: list[str]) -> int:
    from dnnlab.observe.console import console
    from dnnlab.commands.evaluate import json_safe, positive
    from dnnlab.runs.rundir import atomic_write

    parser = argparse.ArgumentParser(prog="dnnlab export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder (holding .hydra/config.yaml and checkpoints/best.pt)")
    parser.add_argument("--fold-bn", action="store_true", help="fold batch norm into the adjacent linear/conv layers")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), help="also cast to bfloat16 or float16")
    parser.add_argument("--repeats", type=positive, default=100, help="timed forward passes per latency (default 100)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--data-root", metavar="DIR", help=DATA_ROOT_HELP)
    args = parser.parse_args(argv)
    loaded = load_run(args.run, args.checkpoint, args.device, args.data_root)
    result = export(loaded, args.fold_bn, args.precision, args.repeats)
    text = json.dumps(json_safe(result), indent=2, ensure_ascii=False)
    atomic_write(RunDir(loaded.path, create=False).export_path, lambda f: f.write(text), mode="w")
    console.print(summary_table(result))
    for item in result["not_folded"]:
        console.print(f"[yellow]not folded:[/yellow] {item['layer']}: {item['why']}")
    if "precision" in result:
        p = result["precision"]
        console.print(f"{p['dtype']}: test accuracy {p['test_acc_fp32']:.4f} → {p['test_acc']:.4f} "
                      f"({p['acc_change']:+.4f}), max |Δ| of outputs {p['max_abs_diff']:.3g}")
    if not result["within_tolerance"]:
        console.print(f"[red]The exported model's outputs differ from the original's by up to {result['max_abs_diff']:.3g} "
                      f"(> {result['tolerance']:.3g}); export.json records it. Do not deploy it.[/red]")
        return 1
    console.print(f"max |Δ| {result['max_abs_diff']:.3g} ≤ {result['tolerance']:.3g}; files in {loaded.path / 'export'}")
    return 0
