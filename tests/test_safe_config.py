"""Opening a run folder someone else sent runs no code (issue 11, item 13).

Each probe plants a payload in a finished run's `.hydra/config.yaml` or in the `config` string of
its checkpoints (which passes torch.load(weights_only=True)); the payload would create a marker
file. `eval`, `export`, `resume=` and `model.pretrained=` must refuse it (exit 2, one paragraph
naming what and where), leave the marker uncreated and write nothing.
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from omegaconf import OmegaConf

from dnnlab.runs import safe_config
from dnnlab.api import compose, train
from dnnlab.cli import main
from dnnlab.errors import UnsafeConfigError
from helpers.configs import tiny
from helpers.folders import snapshot

TINY = tiny("trainer.diagnostics=false", "data.limit=120", "model.depth=1", "model.width=8", "normalization=batchnorm")
RESOLVER = "dnnlab_probe_touch"  # a third-party resolver that runs code, as a plugin might register


class Payload:
    """Unpickling this creates the marker file (what a malicious pickle would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("safe") / "run"
    train(compose(TINY), run_dir=path)
    return path


@pytest.fixture
def probe_resolver(monkeypatch):
    """Register the code-running resolver for one test (then remove it again)."""
    def touch(path: str) -> str:
        Path(path).touch()
        return "x"

    OmegaConf.register_new_resolver(RESOLVER, touch, replace=True)
    monkeypatch.delenv(safe_config.TRUST_ENV, raising=False)
    yield
    OmegaConf.clear_resolver(RESOLVER)


def touch(m: Path) -> list[str]:
    return ["touch", str(m)]


def pickled(m: Path) -> str:
    file = m.with_name("payload.pkl")
    file.write_bytes(pickle.dumps(Payload(m)))
    return str(file)


def script(m: Path) -> str:
    file = m.with_name("payload.py")
    file.write_text(python(m) + "\n")
    return str(file)


def python(m: Path) -> str:
    return f"__import__('pathlib').Path({str(m)!r}).touch()"


# name → (where, command, edit(cfg_dict, marker), words the refusal must contain)
Edit = Callable[[dict, Path], None]


def task(node: Callable[[Path], dict]) -> Edit:
    return lambda cfg, m: cfg["model"].__setitem__("task", node(m))


def weight(node: Callable[[Path], dict]) -> Edit:
    return lambda cfg, m: cfg["initializer"].__setitem__("weight", node(m))


PROBES: dict[str, tuple[str, str, Edit, str]] = {
    "os.system": ("folder", "eval", task(lambda m: {"_target_": "os.system", "_args_": [" ".join(touch(m))]}), "os.system"),
    "subprocess.run": ("folder", "eval", task(lambda m: {"_target_": "subprocess.run", "args": touch(m)}), "subprocess.run"),
    "subprocess.check_call in checkpoint": (
        "checkpoint", "eval", task(lambda m: {"_target_": "subprocess.check_call", "args": touch(m)}), "subprocess.check_call"),
    "builtins.eval": ("folder", "export", task(lambda m: {"_target_": "builtins.eval", "_args_": [python(m)]}), "builtins.eval"),
    "builtins.exec in checkpoint": (
        "checkpoint", "export", task(lambda m: {"_target_": "builtins.exec", "_args_": [python(m)]}), "builtins.exec"),
    "torch.load weights_only=False": (
        "folder", "eval", task(lambda m: {"_target_": "torch.load", "f": pickled(m), "weights_only": False}), "torch.load"),
    "numpy.load allow_pickle in checkpoint": (
        "checkpoint", "eval", task(lambda m: {"_target_": "numpy.load", "file": pickled(m), "allow_pickle": True}), "numpy.load"),
    "joblib.load on resume": ("folder", "resume", task(lambda m: {"_target_": "joblib.load", "filename": pickled(m)}), "joblib.load"),
    "sympy.sympify": ("folder", "eval", task(lambda m: {"_target_": "sympy.sympify", "a": python(m)}), "sympy.sympify"),
    "runpy.run_path": ("folder", "eval", task(lambda m: {"_target_": "runpy.run_path", "path_name": script(m)}), "runpy.run_path"),
    "shutil.copyfile in checkpoint, resume": (
        "checkpoint", "resume", task(lambda m: {"_target_": "shutil.copyfile", "src": script(m), "dst": str(m)}), "shutil.copyfile"),
    "os.system behind a dnnlab module": (
        "folder", "eval", task(lambda m: {"_target_": "dnnlab.data.download.os.system", "_args_": [" ".join(touch(m))]}),
        "dnnlab.data.download.os.system"),
    "nested target under an allowed one": (
        "checkpoint", "resume", weight(lambda m: {"_target_": "subprocess.run", "args": touch(m)}), "initializer.weight._target_"),
    "target in a list under an allowed one": (
        "folder", "eval",
        task(lambda m: {"_target_": "dnnlab.pretrain.Classification",
                        "extra": [{"_target_": "subprocess.run", "args": touch(m)}]}), "model.task.extra.0._target_"),
    "_partial_ on builtins.exec": (
        "folder", "export", weight(lambda m: {"_target_": "builtins.exec", "_partial_": True, "_args_": [python(m)]}),
        "builtins.exec"),
    "_args_ on an allowed target": (
        "folder", "eval", task(lambda m: {"_target_": "dnnlab.pretrain.Classification", "_args_": [1]}), "model.task._args_"),
    "target through an interpolation": (
        "folder", "eval",
        lambda cfg, m: cfg.update(evil="subprocess.run", model={**cfg["model"], "task": {"_target_": "${evil}", "args": touch(m)}}),
        "subprocess.run"),
    "oc.create builds a target": (
        "folder", "eval", lambda cfg, m: cfg["model"].__setitem__(
            "task", "${oc.create:{_target_: subprocess.run, args: [touch, '" + str(m) + "']}}"), "oc.create"),
    "third-party resolver": ("folder", "eval", lambda cfg, m: cfg["data"].__setitem__("root", f"${{{RESOLVER}:{m}}}"), RESOLVER),
    "third-party resolver in checkpoint, resume": (
        "checkpoint", "resume", lambda cfg, m: cfg["data"].__setitem__("name", f"${{{RESOLVER}:{m}}}"), RESOLVER),
    "third-party resolver in checkpoint, pretrained": (
        "checkpoint", "pretrained", lambda cfg, m: cfg["data"].__setitem__("name", f"${{{RESOLVER}:{m}}}"), RESOLVER),
    "target in checkpoint, pretrained": (
        "checkpoint", "pretrained", task(lambda m: {"_target_": "os.system", "_args_": [" ".join(touch(m))]}), "os.system"),
    "hydra callback on resume": (
        "folder", "resume",
        lambda cfg, m: cfg.update(hydra={"callbacks": {"x": {"_target_": "subprocess.run", "args": touch(m)}}}),
        "hydra.callbacks.x._target_"),
}


def plant(run: Path, where: str, edit: Edit, marker: Path) -> None:
    """Apply `edit` to the run's config.yaml, or to the config inside both its checkpoints."""
    if where == "folder":
        file = run / ".hydra" / "config.yaml"
        cfg = OmegaConf.to_container(OmegaConf.load(file))
        edit(cfg, marker)
        file.write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
        return
    for name in ("best", "last"):
        file = run / "checkpoints" / f"{name}.pt"
        state = torch.load(file, weights_only=True)
        cfg = OmegaConf.to_container(OmegaConf.create(state["config"]))
        edit(cfg, marker)
        state["config"] = OmegaConf.to_yaml(OmegaConf.create(cfg))
        torch.save(state, file)
        torch.load(file, weights_only=True)  # the payload is a string: weights_only passes it


def open_run(command: str, run: Path, tmp_path: Path) -> int:
    if command == "eval":
        return main(["eval", str(run), "--device", "cpu"])
    if command == "export":
        return main(["export", str(run), "--fold-bn", "--repeats", "1"])
    if command == "resume":
        return main(["train", f"resume={run}", "trainer.epochs=2"])
    return main(["train", *TINY, f"model.pretrained={run}", f"hydra.run.dir={tmp_path / 'new'}"])


@pytest.mark.parametrize("name", PROBES)
def test_probe_is_refused_and_runs_nothing(name, finished, tmp_path, capsys, probe_resolver):
    where, command, edit, words = PROBES[name]
    run, marker = tmp_path / "run", tmp_path / "marker"
    shutil.copytree(finished, run)
    plant(run, where, edit, marker)
    before = snapshot(run)
    capsys.readouterr()

    assert open_run(command, run, tmp_path) == 2
    err = capsys.readouterr().err
    assert not marker.exists(), f"{name}: the payload ran"
    assert snapshot(run) == before  # nothing written (no eval.json, export/, metrics or config change)
    assert not (tmp_path / "new").exists()
    assert err.startswith("dnnlab: error: dnnlab will not open") and err.count("\n") == 1, err
    source = str(run / ".hydra" / "config.yaml") if where == "folder" else f"the config inside {run / 'checkpoints'}"
    assert source in err and words in err and "--trust-config" in err


def test_a_python_yaml_tag_is_refused_clearly(finished, tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "marker"
    shutil.copytree(finished, run)
    config = run / ".hydra" / "config.yaml"
    config.write_text(config.read_text() + f"evil: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and not (run / "eval.json").exists()
    assert str(config) in err and "not a config dnnlab can read" in err and "Traceback" not in err


def test_trust_config_opts_in_to_the_users_own_targets(finished, tmp_path, monkeypatch):
    """--trust-config (or DNNLAB_TRUST_CONFIG=1) opens a config naming a callable outside the packaged options."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    own = {"_target_": "torch.nn.Hardtanh", "min_val": -1.0}  # the user's own activation: not a packaged option
    plant(run, "folder", lambda cfg, m: cfg["activation"].__setitem__("module", own), tmp_path / "unused")
    plant(run, "checkpoint", lambda cfg, m: cfg["activation"].__setitem__("module", own), tmp_path / "unused")
    monkeypatch.delenv(safe_config.TRUST_ENV, raising=False)
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    monkeypatch.setenv(safe_config.TRUST_ENV, "0")
    assert main(["--trust-config", "eval", str(run), "--device", "cpu"]) == 0  # the flag sets the variable
    assert (run / "eval.json").exists()


def test_allow_list_comes_from_the_packaged_yaml():
    targets, resolvers, keys = safe_config.allowed()
    assert {"torch.optim.NAdam", "torch.nn.ELU", "torch.nn.init.kaiming_normal_", "dnnlab.models.mlp",
            "dnnlab.data.load_digits", "dnnlab.regularization.MaxNorm"} <= targets
    assert not {t for t in targets if not t.startswith(("dnnlab.", "torch."))}
    assert resolvers == {"oc.env"} and keys == {"_target_", "_partial_"}


def every_option() -> list[str]:
    from dnnlab.config.catalog import groups, options

    picks = []
    for group in groups():
        if group in ("hydra", "lr_find"):
            continue
        for option in options(group):
            picks.append(f"{group}=[{option}]" if group == "regularization" else f"{group}={option}")
    return picks


def check_composed(picks: list[str]) -> None:
    """Each pick composed alone passes, as Hydra writes it (.hydra/config.yaml) and as a checkpoint holds it (resolved)."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("dnnlab.conf", version_base="1.3"):
        for pick in picks:
            cfg = hydra_compose("config", overrides=[pick])  # without the hydra node, as config.yaml is
            safe_config.checked(OmegaConf.to_yaml(cfg), f"{pick} (config.yaml)")
            safe_config.checked(OmegaConf.to_yaml(cfg, resolve=True), f"{pick} (checkpoint)")
    GlobalHydra.instance().clear()


@pytest.mark.slow  # 65 Hydra compositions: ~10 s on 2 busy cores
def test_every_packaged_option_passes_the_check():
    picks = every_option()
    assert len(picks) > 60
    check_composed(picks)


def test_every_preset_passes_the_check():
    """The presets combine most groups' less common options (selu, lecun_normal, alpha_dropout, nadam, 1cycle, …)."""
    check_composed([p for p in every_option() if p.startswith("experiment=")])


def test_a_finished_run_still_evaluates_exports_and_resumes(finished, tmp_path, monkeypatch):
    monkeypatch.delenv(safe_config.TRUST_ENV, raising=False)
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert main(["export", str(run), "--fold-bn", "--repeats", "1"]) == 0
    assert main(["train", f"resume={run}", "trainer.epochs=2"]) == 0
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_checked_returns_the_resolved_config():
    cfg = safe_config.checked("a: 1\nb: ${a}\nc: ${oc.env:DNNLAB_PROBE_UNSET,'dflt'}\n", "probe")
    assert OmegaConf.to_container(cfg) == {"a": 1, "b": 1, "c": "dflt"}
    with pytest.raises(UnsafeConfigError, match="oc.decode"):
        safe_config.checked("a: ${oc.decode:'1'}\n", "probe")
