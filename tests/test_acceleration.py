"""Tests for dnnlab.engine.acceleration: bf16, torch.compile, channels_last and the CUDA-graph step.

On CPU the CUDA-graph logic runs against `EmulatedGraphs`, which keeps a CUDA graph's contract
(recording runs nothing; each replay redoes the recorded work with the hyper-parameter tensors
swapped in, writing into fixed output tensors) so the bookkeeping around it — static indices, the
schedule's learning rate reaching the graph, the eager last batch, recapture, giving up — is
checked without a GPU. The real capture runs under `pytest -m cuda`.
"""
from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from dnnlab.engine.acceleration import StepGraph, optimizer_blocker
from dnnlab.api import build_trainer, compose, train
from dnnlab.errors import ConfigError
from dnnlab.engine.hooks import Hook
from dnnlab.optim import implementation_for_capture
from dnnlab.runs.rundir import RunDir
from helpers.configs import tiny

SMALL = tiny("trainer.diagnostics=false", "trainer.batch_size=32", "trainer.epochs=3")


@pytest.fixture
def warnings_logged(caplog, monkeypatch):
    """The dnnlab logger's warnings, each once (a run stops it propagating while it prints to the console)."""
    logger = logging.getLogger("dnnlab")
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.WARNING)
    yield lambda text: [r.getMessage() for r in caplog.records if text in r.getMessage()]
    logger.removeHandler(caplog.handler)


class EmulatedGraphs:
    """CPU stand-in for CudaGraphRecorder with a CUDA graph's semantics."""

    def __init__(self, fail: Exception | None = None):
        self.recorded, self.fail = 0, fail

    def warmup(self, step):
        return step()

    def record(self, body, context):
        if self.fail is not None:
            raise self.fail
        self.recorded += 1
        outputs = (torch.zeros(()), torch.zeros((), dtype=torch.long))

        def replay() -> None:
            with context():
                loss, hits = body()
            outputs[0].copy_(loss)
            outputs[1].copy_(hits)

        return replay, outputs


class Metrics(Hook):
    def __init__(self):
        self.rows: list[dict[str, Any]] = []

    def on_epoch_end(self, trainer, metrics):
        self.rows.append(dict(metrics))


def fit(tmp_path, overrides, graphs: EmulatedGraphs | None = None):
    """Train; with `graphs`, through a StepGraph on that recorder. Returns (trainer, summary, epoch rows)."""
    metrics = Metrics()
    trainer = build_trainer(compose([*SMALL, *overrides]), RunDir(tmp_path / ("graph" if graphs else "eager")), [metrics])
    if graphs is not None:
        trainer.use_step_graph(graphs)
    return trainer, trainer.fit(), metrics.rows


def assert_same_training(a: list[dict], b: list[dict], tol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        for key in ("lr", "train_loss", "train_acc", "val_loss", "val_acc"):
            assert row_a[key] == pytest.approx(row_b[key], rel=tol, abs=tol), key


# ------------------------------------------------------------------------ CUDA graph, emulated
def test_graph_replays_follow_a_per_step_schedule(tmp_path):
    """SGD + momentum with exponential decay every step: one capture, and the same numbers as eager."""
    overrides = ["optimizer=momentum", "optimizer.lr=0.05", "schedule=exponential", "schedule.s=20"]
    _, _, eager = fit(tmp_path, overrides)
    graphs = EmulatedGraphs()
    trainer, summary, graphed = fit(tmp_path, overrides, graphs)
    assert len(trainer.data.train_y) % 32 != 0  # so the eager last batch is exercised too
    assert graphs.recorded == 1 and summary["fast_path"]["trainer.cuda_graph"] == "on (1 capture(s))"
    assert_same_training(graphed, eager)


def test_a_graph_that_missed_the_schedule_would_be_caught(tmp_path, monkeypatch):
    """Control: if the new learning rate did not reach the graph's tensor, training would differ."""
    overrides = ["optimizer=momentum", "optimizer.lr=0.05", "schedule=exponential", "schedule.s=20"]
    _, _, eager = fit(tmp_path, overrides)
    monkeypatch.setattr(StepGraph, "refresh_values", lambda self: None)
    _, _, stale = fit(tmp_path, overrides, EmulatedGraphs())
    with pytest.raises(AssertionError):
        assert_same_training(stale, eager)


def test_graph_step_holds_every_regularizer_and_clipping(tmp_path):
    """Max-norm, L2, dropout, batch norm and clipping all live inside the recorded step: same numbers as eager."""
    overrides = ["regularization=[max_norm,l2,dropout]", "regularization.max_norm.r=0.5", "normalization=batchnorm",
                 "optimizer=nesterov", "optimizer.lr=0.1", "optimizer.clip_norm=0.5", "optimizer.clip_value=0.1"]
    _, _, eager = fit(tmp_path, overrides)
    graphs = EmulatedGraphs()
    _, _, graphed = fit(tmp_path, overrides, graphs)
    assert graphs.recorded == 1
    assert_same_training(graphed, eager)


def test_resumed_graph_run_continues_like_an_uninterrupted_one(tmp_path):
    """The restored learning rate reaches the graph's tensor (the schedule was part-way through)."""
    overrides = ["optimizer=momentum", "optimizer.lr=0.05", "schedule=exponential", "schedule.s=20", "trainer.epochs=4"]
    _, _, whole = fit(tmp_path, overrides)
    first, _, _ = fit(tmp_path / "a", [*overrides, "trainer.epochs=2"], EmulatedGraphs())
    metrics = Metrics()
    second = build_trainer(compose([*SMALL, *overrides]), RunDir(tmp_path / "b"), [metrics])
    second.use_step_graph(EmulatedGraphs())  # built before the restore, as in dnnlab train
    second.load_state_dict(first.state_dict())
    second.fit()
    assert_same_training(metrics.rows, whole[2:])


def test_graph_recaptures_when_blocks_unfreeze(tmp_path):
    overrides = ["model.freeze=1", "model.unfreeze_at=1", "model.unfrozen_lr_scale=0.5"]
    _, _, eager = fit(tmp_path, overrides)
    graphs = EmulatedGraphs()
    _, _, graphed = fit(tmp_path, overrides, graphs)
    assert graphs.recorded == 2
    assert_same_training(graphed, eager)


def test_graph_gives_up_when_a_host_value_changes_every_step(tmp_path, warnings_logged):
    """1cycle cycles Adam's betas each step; the fused kernel reads them on the host, so no graph can hold them."""
    overrides = ["optimizer=adam", "schedule=1cycle"]
    _, _, eager = fit(tmp_path, overrides)
    graphs = EmulatedGraphs()
    _, summary, graphed = fit(tmp_path, overrides, graphs)
    assert graphs.recorded == 3
    assert "changes every step" in summary["fast_path"]["trainer.cuda_graph"]
    assert len(warnings_logged("trainer.cuda_graph")) == 1
    assert_same_training(graphed, eager)


def test_failed_capture_falls_back_to_eager(tmp_path, warnings_logged):
    _, _, eager = fit(tmp_path, [])
    failing = EmulatedGraphs(fail=RuntimeError("operation not permitted when stream is capturing"))
    _, summary, graphed = fit(tmp_path, [], failing)
    assert summary["status"] == "completed"
    assert "capture failed (RuntimeError: operation not permitted" in summary["fast_path"]["trainer.cuda_graph"]
    assert warnings_logged("cuda_graph") == [
        "trainer.cuda_graph is off: capture failed (RuntimeError: operation not permitted when stream is capturing)."]
    assert_same_training(graphed, eager)


# ------------------------------------------------------------------------ CUDA graph, config level
def test_cuda_graph_on_cpu_runs_eagerly_and_says_why(tmp_path, warnings_logged):
    summary = train(compose([*SMALL, "trainer.cuda_graph=true"]), run_dir=tmp_path / "g")
    plain = train(compose(SMALL), run_dir=tmp_path / "p")
    assert summary["fast_path"] == {"trainer.cuda_graph": "off: a CUDA graph needs a CUDA device (this run is on cpu)"}
    assert len(warnings_logged("trainer.cuda_graph")) == 1
    assert summary["test_acc"] == plain["test_acc"] and summary["test_loss"] == plain["test_loss"]


def test_the_builder_and_the_trainer_ask_one_capture_decision(tmp_path, monkeypatch):
    """build_trainer builds the optimizer capturable, and the trainer captures, on the same answer."""
    from dnnlab.engine import acceleration

    asked = []
    decide = acceleration.capture_blocker
    monkeypatch.setattr(acceleration, "capture_blocker", lambda *a: asked.append(a) or decide(*a))
    trainer = build_trainer(compose([*SMALL, "trainer.cuda_graph=true"]), RunDir(tmp_path / "g"))
    assert len(asked) == 2 and asked[0] == asked[1] == (True, torch.device("cpu"), False)
    assert trainer.notes["fast_path"]["trainer.cuda_graph"] == f"off: {decide(*asked[0])}"
    assert decide(False, torch.device("cuda"), False) and decide(True, torch.device("cuda"), "default")
    assert decide(True, torch.device("cuda"), False) is None


def test_capture_needs_a_capturable_or_fused_optimizer():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert "torch.optim.Adagrad has no capturable or fused CUDA implementation" in optimizer_blocker(torch.optim.Adagrad(params))
    assert optimizer_blocker(torch.optim.SGD(params, fused=True)) is None
    assert implementation_for_capture(torch.optim.Adam) == {"capturable": True, "foreach": True}
    assert implementation_for_capture(torch.optim.SGD) == {"fused": True}


# ------------------------------------------------------------------------ precision
class OutputDtypes(Hook):
    def on_fit_start(self, trainer):
        self.dtypes = set()
        trainer.model.hidden1.linear.register_forward_hook(lambda m, i, out: self.dtypes.add(out.dtype))


def test_bf16_autocasts_the_forward_pass_and_still_learns(tmp_path):
    probe = OutputDtypes()
    cfg = compose(["trainer.progress=false", "trainer.diagnostics=false", "trainer.epochs=5", "trainer.precision=bf16",
                   "model.depth=2"])
    summary = build_trainer(cfg, RunDir(tmp_path), [probe]).fit()
    assert probe.dtypes == {torch.bfloat16} and summary["fast_path"] == {"trainer.precision": "bf16"}
    assert summary["test_acc"] > 0.9


def test_fp32_is_the_default_and_runs_no_autocast(tmp_path):
    probe = OutputDtypes()
    build_trainer(compose(SMALL + ["trainer.epochs=1"]), RunDir(tmp_path), [probe]).fit()
    assert probe.dtypes == {torch.float32}


# ------------------------------------------------------------------------ compile
def test_compile_runs_the_model_through_dynamo(tmp_path, monkeypatch):
    """trainer.compile=true routes training and evaluation through torch.compile (here with the
    aot_eager backend, which traces forward and backward like inductor but needs no C++ build)."""
    from torch._dynamo.utils import counters

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: real_compile(model, backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    _, _, eager = fit(tmp_path, [])
    _, summary, compiled = fit(tmp_path / "c", ["trainer.compile=true"])
    assert counters["frames"]["ok"] >= 2  # train and eval modes at least
    assert summary["fast_path"] == {"trainer.compile": "on (default)"}
    assert_same_training(compiled, eager, tol=1e-4)


def test_compile_failure_falls_back_to_eager(tmp_path, monkeypatch, warnings_logged):
    def broken(model, mode=None):
        def call(x):
            raise RuntimeError("InductorError: no working C++ compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    _, _, eager = fit(tmp_path, [])
    _, summary, compiled = fit(tmp_path / "c", ["trainer.compile=max-autotune"])
    assert summary["fast_path"]["trainer.compile"].startswith("off: torch.compile failed (RuntimeError: InductorError")
    assert len(warnings_logged("trainer.compile")) == 1
    assert_same_training(compiled, eager)


@pytest.mark.slow
def test_compile_with_inductor_on_cpu(tmp_path):
    _, _, eager = fit(tmp_path, [])
    _, summary, compiled = fit(tmp_path / "c", ["trainer.compile=true"])
    assert summary["fast_path"] == {"trainer.compile": "on (default)"}
    assert_same_training(compiled, eager, tol=1e-3)


# ------------------------------------------------------------------------ channels_last
def test_channels_last_converts_the_cnn_and_its_images(tmp_path):
    cnn = ["model=cnn", "model.depth=1", "model.width=4", "model.dense=16", "trainer.epochs=2"]
    _, _, nchw = fit(tmp_path, cnn)
    trainer, summary, nhwc = fit(tmp_path / "cl", [*cnn, "trainer.channels_last=true"])
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer.data.train_x.is_contiguous(memory_format=torch.channels_last)
    assert summary["fast_path"] == {"trainer.channels_last": "on"}
    assert_same_training(nhwc, nchw, tol=1e-4)


def test_channels_last_on_an_mlp_says_it_does_nothing(tmp_path):
    _, summary, _ = fit(tmp_path, ["trainer.channels_last=true", "trainer.epochs=1"])
    assert summary["fast_path"] == {"trainer.channels_last": "off: channels_last speeds up convolutions and this "
                                                               "model has none (model=cnn has)"}


# ------------------------------------------------------------------------ validation
@pytest.mark.parametrize("override, valid", [
    ("trainer.precision=fp16", "one of fp32, bf16"),
    ("trainer.compile=fast", "true, false or a torch.compile mode: default, reduce-overhead"),
    ("trainer.cuda_graph=maybe", "true or false"),
])
def test_bad_fast_path_values_are_named(tmp_path, override, valid):
    with pytest.raises(ConfigError) as error:
        train(compose([*SMALL, override]), run_dir=tmp_path)
    assert override.split("=")[0] in str(error.value) and valid in str(error.value)


# ------------------------------------------------------------------------ on a GPU (pytest -m cuda)
def gpu(test):
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


DIGITS_GPU = ["trainer.device=cuda", "trainer.progress=false", "trainer.epochs=8", "trainer.batch_size=64"]


def run_gpu(tmp_path, name, overrides):
    metrics = Metrics()
    trainer = build_trainer(compose([*DIGITS_GPU, *overrides]), RunDir(tmp_path / name), [metrics])
    return trainer, trainer.fit(), metrics.rows


@gpu
@pytest.mark.parametrize("optimizer, schedule", [("adam", "1cycle"), ("nadam", "exponential"), ("momentum", "piecewise"),
                                                 ("rmsprop", "none"), ("adamw", "performance")])
def test_cuda_graph_captures_once_and_learns_like_eager(tmp_path, optimizer, schedule):
    overrides = [f"optimizer={optimizer}", f"schedule={schedule}"]
    _, eager, eager_rows = run_gpu(tmp_path, "eager", overrides)
    trainer, graphed, graph_rows = run_gpu(tmp_path, "graph", [*overrides, "trainer.cuda_graph=true"])
    assert graphed["fast_path"] == {"trainer.cuda_graph": "on (1 capture(s))"}
    assert [r["lr"] for r in graph_rows] == pytest.approx([r["lr"] for r in eager_rows], rel=1e-6)
    assert graphed["test_acc"] > 0.9 and abs(graphed["test_acc"] - eager["test_acc"]) < 0.03
    assert trainer.step == eager["steps"]


@gpu
def test_cuda_graph_keeps_max_norm_clipping_dropout_and_batchnorm(tmp_path):
    overrides = ["regularization=[max_norm,dropout]", "regularization.max_norm.r=1.0", "normalization=batchnorm",
                 "optimizer=nesterov", "optimizer.clip_norm=1.0", "trainer.cuda_graph=true"]
    trainer, summary, _ = run_gpu(tmp_path, "graph", overrides)
    assert summary["fast_path"] == {"trainer.cuda_graph": "on (1 capture(s))"}
    assert summary["test_acc"] > 0.85
    from dnnlab.models import weights
    assert all(bool((w.norm(dim=1) <= 1.0 + 1e-4).all()) for w in weights(trainer.model, hidden_only=True))


@gpu
def test_cuda_graph_recaptures_after_unfreezing_on_gpu(tmp_path):
    overrides = ["model.freeze=1", "model.unfreeze_at=2", "model.unfrozen_lr_scale=0.1", "trainer.cuda_graph=true"]
    _, summary, _ = run_gpu(tmp_path, "graph", overrides)
    assert summary["fast_path"] == {"trainer.cuda_graph": "on (2 capture(s))"}
    assert summary["test_acc"] > 0.85


@gpu
def test_adagrad_cannot_be_captured_and_says_so(tmp_path):
    _, summary, _ = run_gpu(tmp_path, "graph", ["optimizer=adagrad", "trainer.cuda_graph=true", "trainer.epochs=1"])
    assert "torch.optim.Adagrad has no capturable or fused CUDA implementation" in summary["fast_path"]["trainer.cuda_graph"]


@gpu
@pytest.mark.parametrize("option", ["trainer.precision=bf16", "trainer.compile=true", "trainer.compile=reduce-overhead"])
def test_fast_paths_learn_on_gpu(tmp_path, option):
    _, summary, _ = run_gpu(tmp_path, "fast", [option])
    assert not any(state.startswith("off") for state in summary["fast_path"].values())
    assert summary["test_acc"] > 0.9


@gpu
def test_channels_last_cnn_with_bf16_on_gpu(tmp_path):
    overrides = ["model=cnn", "model.depth=1", "model.width=16", "model.dense=32", "trainer.channels_last=true",
                 "trainer.precision=bf16"]
    _, summary, _ = run_gpu(tmp_path, "cnn", overrides)
    assert summary["fast_path"] == {"trainer.channels_last": "on", "trainer.precision": "bf16"}
    assert summary["test_acc"] > 0.85


@gpu
def test_resumed_graph_run_continues(tmp_path):
    """A resume rebuilds the graph (capturable optimizer state loaded from the checkpoint) and keeps going."""
    overrides = [*DIGITS_GPU, "trainer.cuda_graph=true", "trainer.epochs=3"]
    train(compose(overrides), run_dir=tmp_path / "run")
    summary = train(compose([f"resume={tmp_path / 'run'}", "trainer.epochs=6"]), run_dir=tmp_path / "run")
    assert summary["epochs"] == 6 and summary["fast_path"] == {"trainer.cuda_graph": "on (1 capture(s))"}
    assert summary["test_acc"] > 0.9
