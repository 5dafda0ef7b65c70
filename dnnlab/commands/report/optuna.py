"""An Optuna sweep's own views in `dnnlab report`: the study's best trial, optimization history and
parameter importances (optuna.visualization.matplotlib: static PNGs, no plotly needed).

The study is loaded from the sweep's storage (`hydra.sweeper.storage`) when one was given, so several
sweep folders of one study (several machines, one database) report every trial; without storage it
is rebuilt in memory from the sweep's job folders (each job's params and result). optuna is imported
only when a reported folder is an Optuna sweep. `best_trial` reads the best trial the sweeper wrote
(optimization_results.yaml) without optuna.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from dnnlab.commands.report.folders import Run, job_key
from dnnlab.runs.rundir import RunDir


def same_value(a: Any, b: Any) -> bool:
    """Override values compare as numbers when both are numbers (0.001 == 1e-3), else as text."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def best_trial(path: Path, runs: Sequence[Run]) -> dict[str, Any] | None:
    """An Optuna sweep's best trial (its optimization_results.yaml) and the run folder that holds it."""
    results = path / "optimization_results.yaml"
    if not results.is_file():
        return None
    best = OmegaConf.to_container(OmegaConf.load(results))
    params = best.get("best_params", {})
    match = next((r for r in runs if params and all(same_value(r.overrides.get(k), v) for k, v in params.items())), None)
    return {"value": best.get("best_value"), "params": params, "run": str(match.path) if match else None}


def best_trial_text(trial: dict[str, Any]) -> str:
    params = " ".join(f"{k}={v}" for k, v in trial["params"].items())
    where = f" — run {trial['run']}" if trial["run"] else ""
    study = f" (trial {trial['number']} of {trial['trials']}, {trial['source']})" if "source" in trial else ""
    return f"best trial (Optuna): {trial['value']} with {params}{where}{study}"


@dataclass
class Search:
    """An Optuna study behind one or more reported sweep folders."""

    study: Any  # optuna.Study
    source: str  # "storage <url>" or "rebuilt from N jobs"
    runs: list[Run]


def sweeper_config(path: Path) -> DictConfig | None:
    """The Optuna sweeper config that a sweep folder's first job recorded, else None (not an Optuna sweep)."""
    jobs = sorted((p for p in path.iterdir() if RunDir(p, create=False).launch_path.is_file()), key=job_key) if path.is_dir() else []
    if not jobs:
        return None
    hydra = OmegaConf.load(RunDir(jobs[0], create=False).launch_path).hydra
    sweeper = hydra.get("sweeper") or {}
    if "optuna" not in str(sweeper.get("_target_", "")).lower():
        return None
    return OmegaConf.create({**OmegaConf.to_container(sweeper, resolve=False), "cwd": hydra.runtime.get("cwd")})


def storage_url(sweeper: DictConfig) -> str | None:
    """The sweeper's storage URL, a relative SQLite path made absolute against the sweep's working
    directory; None when there is none or the SQLite file is not there (never create one)."""
    url = sweeper.get("storage")
    if not url:
        return None
    url = str(url)
    if url.startswith("sqlite:///"):
        file = Path(url[len("sqlite:///"):])
        file = file if file.is_absolute() else Path(sweeper.get("cwd") or ".") / file
        return f"sqlite:///{file}" if file.is_file() else None
    return url


def direction(sweeper: DictConfig) -> str:
    value = sweeper.get("direction", "minimize")
    value = value[0] if OmegaConf.is_list(value) else value
    return str(getattr(value, "name", value)).lower()


def load_stored(url: str, sweeper: DictConfig):
    import optuna

    return optuna.load_study(study_name=str(sweeper.get("study_name")), storage=url)


def rebuild(sweeper: DictConfig, runs: Sequence[Run]):
    """An in-memory study with one trial per finished job: its params (from its overrides) and result."""
    import optuna
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    space = OmegaConf.to_container(sweeper.get("params") or {}, resolve=False)
    distributions, _ = create_params_from_overrides([f"{k}={v}" for k, v in space.items()])
    study = optuna.create_study(direction=direction(sweeper))
    for run in runs:
        value = run.metric("best_val_acc")  # what dnnlab's train task returns to the sweeper
        params = {k: param_value(run.overrides.get(k), d) for k, d in distributions.items()}
        if value is None or any(v is None for v in params.values()):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    return study


def param_value(text: str | None, distribution) -> Any:
    """A job's override text as a value of `distribution` (None when it has none or it is out of range)."""
    if text is None:
        return None
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return next((c for c in choices if same_value(c, text)), None)
    value = float(text)
    value = int(value) if "Int" in type(distribution).__name__ else value
    return value if distribution._contains(distribution.to_internal_repr(value)) else None


def searches(paths: Sequence[Path], runs: Sequence[Run]) -> list[Search]:
    """One Search per distinct study among the Optuna sweep folders in `paths` (none: optuna not imported)."""
    found: dict[tuple, Search] = {}
    for path in paths:
        sweeper = sweeper_config(path)
        if sweeper is None:
            continue
        mine = [r for r in runs if r.path.parent == path.resolve()]
        url = storage_url(sweeper)
        key = (url, str(sweeper.get("study_name"))) if url else (str(path.resolve()),)
        if key in found:
            found[key].runs.extend(mine)
            continue
        quiet_optuna()
        study = load_stored(url, sweeper) if url else rebuild(sweeper, mine)
        found[key] = Search(study, f"storage {url}" if url else f"rebuilt from {len(mine)} jobs", list(mine))
    return list(found.values())


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def best(search: Search) -> dict[str, Any] | None:
    """The study's best trial and the reported run folder that holds it (the shape of report.best_trial)."""
    import optuna

    complete = [t for t in search.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return None
    trial = search.study.best_trial
    match = next((r for r in search.runs if all(same_value(r.overrides.get(k), v) for k, v in trial.params.items())), None)
    return {"value": trial.value, "params": trial.params, "run": str(match.path) if match else None,
            "trials": len(complete), "source": search.source, "number": trial.number}


def plots(search: Search, out: Path, suffix: str = "") -> tuple[list[Path], list[str]]:
    """Optuna's optimization history and its parameter importances as PNGs in `out`, and a note
    for each that could not be drawn (e.g. too few finished trials)."""
    from matplotlib import rc_context

    written, notes = [], []
    for name, draw in (("optimization_history", history_figure), ("param_importances", importance_figure)):
        try:  # rc_context: optuna's views switch pyplot's global style to ggplot, this undoes it
            with warnings.catch_warnings(), rc_context():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib views experimental
                fig = draw(search.study)
                written.append(save_figure(fig, out / f"{name}{suffix}.png"))
        except (ValueError, RuntimeError, ImportError, ZeroDivisionError) as error:
            notes.append(f"Optuna's {name.replace('_', ' ')} could not be drawn for this study: {error}")
    return written, notes


def history_figure(study):
    """optuna.visualization.matplotlib's optimization history (drawn through pyplot, headless)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # no window
    from optuna.visualization.matplotlib import plot_optimization_history

    return plot_optimization_history(study).figure


def importance_figure(study):
    """optuna.importance's scores as bars.

    Not optuna's own plot_param_importances: in optuna 2.x (what hydra-optuna-sweeper allows) it calls
    matplotlib.cm.get_cmap, gone since matplotlib 3.9, and its default fANOVA evaluator fails on current
    scikit-learn trees; mean decrease in impurity (the same random forest) works.
    """
    from matplotlib.figure import Figure
    from optuna.importance import MeanDecreaseImpurityImportanceEvaluator, get_param_importances

    scores = get_param_importances(study, evaluator=MeanDecreaseImpurityImportanceEvaluator(seed=0))
    fig = Figure(figsize=(7, 0.5 * len(scores) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    names = list(scores)[::-1]
    ax.barh(names, [scores[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance (mean decrease in impurity)", title=f"parameter importances ({len(study.trials)} trials)")
    ax.grid(alpha=0.3, axis="x")
    return fig


def save_figure(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if fig.canvas is None or type(fig.canvas).__name__ == "FigureCanvasBase":
        FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)
    return path
