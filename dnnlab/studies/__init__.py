"""`dnnlab study`: the guides' claims as experiments (arms × seeds) that end in a verdict with its uncertainty.

spec (what a study is) → run (one Hydra multirun of dnnlab's train task) → metrics (read from the
run folders) → stats (CIs, bootstrap, verdict) → report (terminal, study.md, study.json, study.png).
"""
from __future__ import annotations

import sys

USAGE = """usage: dnnlab study list
       dnnlab study NAME [OVERRIDES]     run arms × seeds (a Hydra multirun), then write the report
       dnnlab study NAME --report DIR    re-report a study folder

OVERRIDES apply to every arm, e.g. data=mnist1d trainer.epochs=30 study.seeds=5 hydra/launcher=joblib;
hydra.sweep.dir=DIR picks the folder (default studies/NAME/<date>/<time>); the same folder again
skips finished runs and re-reports."""


def list_studies() -> int:
    """One line per study: its name (marked when it is the user's), the claim, the source."""
    from omegaconf import OmegaConf

    from dnnlab.config.catalog import roots
    from dnnlab.errors import one_line
    from dnnlab.studies.spec import from_config, names

    broken = 0
    for name in names():
        path = next(root / "study" / f"{name}.yaml" for root in roots() if (root / "study" / f"{name}.yaml").is_file())
        mark = " (yours)" if not path.is_relative_to(roots()[0]) else ""
        try:
            study = from_config(name, OmegaConf.load(path))
        except Exception as error:  # a user's file that is not valid YAML or not a valid study
            broken += 1
            print(f"dnnlab: error: {path}: {one_line(error)}", file=sys.stderr)
            continue
        print(f"{name}{mark}: {study.claim} [{study.source}]")
    return 2 if broken else 0


def main(argv: list[str]) -> int:
    from dnnlab.studies import report
    from dnnlab.studies.run import run
    from dnnlab.studies.spec import StudyError, check_name

    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "list":
        return list_studies()
    name, rest = argv[0], argv[1:]
    check_name(name)
    if "--report" in rest:
        i = rest.index("--report")
        if i + 1 >= len(rest):
            raise StudyError("--report needs the study folder: dnnlab study NAME --report DIR.")
        report.write(rest[i + 1])
        return 0
    folder, code = run(name, rest)
    report.write(folder)
    if code:
        print("dnnlab: some of the study's runs failed (listed above); the report counts only the others.", file=sys.stderr)
    return code
