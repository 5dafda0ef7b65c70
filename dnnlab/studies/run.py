"""Running a study: its arms × seeds as one Hydra multirun of dnnlab's train task, then its report.

Each arm (and each stage) becomes an option of a generated config group `study_arm`, written into
the study folder's `.study/` and put on Hydra's search path for this sweep. So one multirun
`+study_arm=a,b,c seed=range(0,N)` covers every arm and seed, any launcher runs it, the user's
overrides apply to every job after the arm's own, and each job's `.hydra/` records exactly what it
trained (`study.arm` names its arm). Stages (`study.stages`) are a multirun of their own, run first
into `stages/`; an arm points at a stage's run of the same seed with the value `stage:NAME`.
"""
from __future__ import annotations

import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from dnnlab.studies.spec import Study, StudyError, load

GROUP = "study_arm"
SUBDIR = "${study.arm}-${seed}"
STAGES = "stages"


def sweep_dir(name: str, overrides: Sequence[str]) -> tuple[Path, list[str]]:
    """The study folder (hydra.sweep.dir=DIR, else studies/NAME/<date>/<time>) and the other overrides."""
    from dnnlab.config.overrides import parse_overrides

    rest, folder = [], None
    for line, override in zip(overrides, parse_overrides(overrides)):
        if override.key_or_group == "hydra.sweep.dir":
            folder = Path(str(override.value()))
        else:
            rest.append(line)
    return folder or Path("studies") / name / datetime.now().strftime("%Y-%m-%d/%H-%M-%S"), rest


def check_overrides(overrides: Sequence[str]) -> None:
    """A study's sweep is its arms × seeds: other sweeps or a fixed seed would mix its pairs."""
    from dnnlab.config.overrides import parse_overrides

    for override in parse_overrides(overrides):
        if override.is_sweep_override():
            raise StudyError(f"{override.input_line}: a study sweeps its own arms and seeds; give every other key one "
                             f"value (run the study once per value to compare them).")
        if override.key_or_group in ("seed", "hydra.sweep.subdir", "study.arm", "study.arms", "resume"):
            raise StudyError(f"{override.input_line}: a study sets {override.key_or_group} itself; use study.seeds=N for "
                             f"the number of seeds, or edit study.arms in a copy of the study (configs/study/).")


def check_arms_kept(study: Study, overrides: Sequence[str]) -> None:
    """A user override of a key that the arms set would make every arm the same: refuse it."""
    from dnnlab.config.overrides import parse_overrides

    varied = {o.key_or_group.lstrip("+~"): arm for arm, lines in study.arms.items() for o in parse_overrides(lines)}
    for override in parse_overrides(overrides):
        key = override.key_or_group.lstrip("+~")
        clash = next((k for k in varied if k == key or k.startswith(key + ".") or key.startswith(k + ".")), None)
        if clash is not None:
            raise StudyError(f"{override.input_line}: the arms of study {study.name} set {clash} themselves (e.g. arm "
                             f"{varied[clash]}), and an override applies to every arm after its own, so every arm would "
                             f"train the same and the comparison would be of nothing. Drop it, or copy the study into "
                             f"configs/study/ and change its arms.")


def option(arm: str, overrides: Sequence[str], folder: Path, stages: Sequence[str]) -> str:
    """The `study_arm` option for one arm: its group overrides in the defaults list, its values in the body."""
    from dnnlab.config.catalog import groups
    from dnnlab.config.overrides import parse_overrides

    defaults: list[Any] = []
    body = OmegaConf.create({})
    for override in parse_overrides(overrides):
        key, value = override.key_or_group, override.value()
        if override.is_delete() or override.is_sweep_override():
            raise StudyError(f"study arm {arm}: {override.input_line} is not valid in an arm: give key=value or group=option.")
        if isinstance(value, str) and value.startswith("stage:"):
            stage = value.removeprefix("stage:")
            if stage not in stages:
                raise StudyError(f"study arm {arm}: {override.input_line} names no stage; study.stages: {', '.join(stages) or 'none'}.")
            value = f"{folder / STAGES}/{stage}-${{seed}}"
        if "." not in key and key in groups():
            defaults.append({f"override /{key}": value})
        else:
            OmegaConf.update(body, key, value, force_add=True)
    OmegaConf.update(body, "study.arm", arm, force_add=True)
    body = OmegaConf.merge({"defaults": [*defaults, "_self_"]}, body)
    return "# @package _global_\n" + OmegaConf.to_yaml(body)


def write_options(study: Study, folder: Path, root: Path) -> None:
    """Every arm's and stage's option in root/study_arm/."""
    group = root / GROUP
    group.mkdir(parents=True, exist_ok=True)
    for name, overrides in study.arms.items():
        (group / f"{name}.yaml").write_text(option(name, overrides, folder, list(study.stages)))
    for name, overrides in study.stages.items():
        (group / f"stage-{name}.yaml").write_text(option(name, overrides, folder, []))


def job_overrides(study: Study, options: Sequence[str], root: Path, folder: Path, user: Sequence[str]) -> list[str]:
    return [f"study={study.name}", f"+{GROUP}={','.join(options)}", f"seed=range(0,{study.seeds})",
            f"hydra.searchpath=[file://{root.resolve()}]", f"hydra.sweep.dir={folder}", f"hydra.sweep.subdir={SUBDIR}", *user]


def preflight(study: Study, user: Sequence[str]) -> None:
    """Compose and validate every arm's and stage's first job before anything is written.

    The arm's overrides go on the command line here, where Hydra rejects a misspelt key (in the
    generated option file it would add one).
    """
    from dnnlab.config import schema
    from dnnlab.api import compose
    from dnnlab.errors import ConfigError

    plain = [o for o in user if not o.lstrip("+~").startswith("hydra")]
    jobs = [("arm", n, o) for n, o in study.arms.items()] + [("stage", n, o) for n, o in study.stages.items()]
    for kind, name, overrides in jobs:
        try:
            job = [f"study={study.name}", *(o for o in overrides if "stage:" not in o), *plain]
            cfg = compose(job)
            schema.validate(cfg)
            schema.check_file_keys(cfg, job)
        except ConfigError as error:
            raise StudyError(f"study {study.name}, {kind} {name}: {error}") from None


def launch(study: Study, options: Sequence[str], root: Path, folder: Path, user: Sequence[str]) -> int:
    """One Hydra multirun of dnnlab's train task over options × seeds; 1 when a job failed."""
    from dnnlab import cli

    cli.SweepReport.outcome = []
    cli.hydra_app(cli.train_task, ["-m", *job_overrides(study, options, root, folder, user)], "dnnlab study")
    return cli.sweep_exit_code()


def run(name: str, overrides: Sequence[str]) -> tuple[Path, int]:
    """Run (or continue) study NAME into its folder; returns the folder and 1 when a job failed."""
    check_overrides([o for o in overrides if not o.startswith("hydra.sweep.dir=")])
    folder, user = sweep_dir(name, overrides)
    study, _ = load(name, user)
    check_arms_kept(study, user)
    with tempfile.TemporaryDirectory() as scratch:
        write_options(study, folder, Path(scratch))  # every arm converts to an option
    preflight(study, user)
    root = folder / ".study"
    shutil.rmtree(root / GROUP, ignore_errors=True)
    write_options(study, folder, root)  # the options the jobs compose: kept with the study
    code = 0
    if study.stages:
        code |= launch(study, [f"stage-{n}" for n in study.stages], root, folder / STAGES, user)
    code |= launch(study, list(study.arms), root, folder, user)
    return folder, code
