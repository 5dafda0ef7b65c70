"""A study's report: per-arm means and CIs, the claimed comparisons, the verdict; terminal, study.md, study.json, study.png."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
from omegaconf import OmegaConf

from dnnlab.runs.rundir import RunDir
from dnnlab.studies import stats
from dnnlab.studies.metrics import RunMetrics
from dnnlab.studies.spec import Study, StudyError, from_config


def collect(folder: Path) -> tuple[Study, dict[str, dict[int, RunMetrics]], Any]:
    """The study and its runs (arm → seed → run) in `folder`, and the first run's config."""
    runs: dict[str, dict[int, RunMetrics]] = {}
    study, first = None, None
    for job in (RunDir(p, create=False) for p in (sorted(folder.iterdir()) if folder.is_dir() else []) if p.is_dir()):
        config = job.config_path
        if not config.is_file():
            continue
        cfg = OmegaConf.load(config)
        node = cfg.get("study")
        if not node or not node.get("arm"):
            continue
        if study is None:
            hydra = OmegaConf.load(job.launch_path)
            study, first = from_config(str(hydra.hydra.runtime.choices.get("study")), cfg), cfg
        if node.arm in study.arms:
            run = RunMetrics(job.path, cfg, study.target, study.mc_passes)
            run.choices = dict(OmegaConf.load(job.launch_path).hydra.runtime.choices)
            runs.setdefault(str(node.arm), {})[int(cfg.seed)] = run
    if study is None:
        raise StudyError(f"{folder} holds no study runs (no <job>/.hydra/config.yaml with study.arm); give the folder "
                         f"`dnnlab study NAME` wrote, e.g. studies/activations/2026-12-01/10-00-00.")
    return study, {arm: runs.get(arm, {}) for arm in study.arms}, first


def summarize(values: dict[int, float]) -> dict[str, Any]:
    """n, mean, CI and the per-seed values of one arm's metric."""
    mean, ci = stats.mean_ci(list(values.values()))
    seeds = sorted(values)
    return {"n": len(stats.finite(list(values.values()))), "mean": mean, "ci": list(ci),
            "values": [values[s] for s in seeds], "seeds": seeds}


def comparisons(study: Study, values: dict[str, dict[str, dict[int, float]]]) -> list[dict[str, Any]]:
    """Every claimed comparison: adjacent pairs of an order (paired by seed), or an arm against a threshold."""
    found = []
    for e in study.expect:
        sign = 1 if e.mode == "max" else -1
        per_arm = values[e.metric]
        if e.order:
            for a, b in zip(e.order, e.order[1:]):
                diff = stats.paired(per_arm[a], per_arm[b])
                label = f"{a} {'>' if sign > 0 else '<'} {b}"
                found.append(outcome(e.metric, label, f"{a} − {b}", stats.judge(label, list(diff.values()), sign)))
        else:
            sign, bound = (1, e.above) if e.above is not None else (-1, e.below)
            label = f"{e.arm} {'>' if sign > 0 else '<'} {bound:g}"
            found.append(outcome(e.metric, label, e.arm, stats.judge(label, list(per_arm[e.arm].values()), sign, bound)))
    return found


def outcome(metric: str, label: str, of: str, o: stats.Outcome) -> dict[str, Any]:
    return {"metric": metric, "claim": label, "of": of, "n": len(o.values), "values": o.values,
            "mean": o.mean, "ci": list(o.ci), "holds": o.holds}


def common(runs: dict[str, dict[int, RunMetrics]], value: Callable[[RunMetrics], str]) -> str:
    """The value every run shares, or 'per arm: a=…, b=…' when the arms differ."""
    per_arm = {arm: sorted({value(m) for m in seeds.values()}) for arm, seeds in runs.items() if seeds}
    every = {v for values in per_arm.values() for v in values}
    if len(every) <= 1:
        return every.pop() if every else "—"
    return "per arm: " + ", ".join(f"{arm}: {'/'.join(values)}" for arm, values in per_arm.items())


def widths(width: Any) -> str:
    """model.width as the report shows it: `100`, or a per-layer list `[300,100]` (no spaces: it reads as one value)."""
    return "[" + ",".join(map(str, width)) + "]" if OmegaConf.is_list(width) or isinstance(width, list) else str(width)


def describe_setup(cfg: Any, study: Study, runs: dict[str, dict[int, RunMetrics]]) -> dict[str, str]:
    """The data, model and budget the numbers were measured on (what the arms vary is named per arm)."""
    def data(m: RunMetrics) -> str:
        d = m.cfg.data
        subset = [f"limit {d.limit}" if d.get("limit") else "",
                  f"{d.train_fraction:g} of the training labels" if d.get("train_fraction", 1.0) != 1.0 else "",
                  f"classes {list(d.classes)}" if d.get("classes") else ""]
        return str(d.name) + "".join(f", {s}" for s in subset if s)

    def shape(m: RunMetrics) -> str:
        model = m.cfg.model
        return str(model._target_).rsplit(".", 1)[-1] + (f" {model.depth}×{widths(model.width)}" if "depth" in model else "")

    def choice(group: str) -> Callable[[RunMetrics], str]:
        return lambda m: str(m.choices.get(group))

    def optimizer(m: RunMetrics) -> str:
        return f"{m.choices.get('optimizer')} lr {m.cfg.optimizer.lr:g}"

    wall = sum(m.summary.get("wall_s") or 0.0 for seeds in runs.values() for m in seeds.values())
    jobs = sum(len(seeds) for seeds in runs.values())
    model = "; ".join(f"{what} {common(runs, how)}" for what, how in (
        ("architecture", shape), ("initializer", choice("initializer")), ("activation", choice("activation")),
        ("normalization", choice("normalization")), ("optimizer", optimizer), ("schedule", choice("schedule"))))
    return {
        "data": common(runs, data),
        "model": model,
        "budget": (f"{len(study.arms)} arms × {study.seeds} seeds, {common(runs, lambda m: str(m.cfg.trainer.epochs))} epochs, "
                   f"batch {cfg.trainer.batch_size}; {jobs} runs, {wall:.0f} s of training"
                   + (f" (default budget: {study.budget})" if study.budget else "")),
    }


def build(folder: Path) -> tuple[dict[str, Any], dict[str, dict[int, RunMetrics]]]:
    """study.json's content for the study in `folder`."""
    study, runs, cfg = collect(folder)
    values = {m: {arm: {s: r.get(m) for s, r in seeds.items()} for arm, seeds in runs.items()} for m in study.metrics}
    found = comparisons(study, values)
    outcomes = [stats.Outcome(c["claim"], c["values"], c["mean"], tuple(c["ci"]), c["holds"]) for c in found]
    status = {arm: {s: r.status for s, r in seeds.items()} for arm, seeds in runs.items()}
    return {
        "study": study.name, "claim": study.claim, "source": study.source, **describe_setup(cfg, study, runs),
        "metric": study.metric, "expect": [e.describe() for e in study.expect],
        "verdict": stats.verdict(outcomes), "rule": stats.RULE,
        "arms": {arm: summarize(values[study.metric][arm]) for arm in study.arms},
        "metrics": {m: {arm: summarize(values[m][arm]) for arm in study.arms} for m in study.metrics},
        "comparisons": found, "status": status,
    }, runs


def fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.4g}"


def ci_text(ci: list[float]) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def arm_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-arm table: n, then mean [CI] of every metric."""
    header = ["arm", "n", *result["metrics"]]
    rows = []
    for arm in result["arms"]:
        cells = [f"{fmt(result['metrics'][m][arm]['mean'])} {ci_text(result['metrics'][m][arm]['ci'])}" for m in result["metrics"]]
        states = list(result["status"][arm].values())
        bad = {s: states.count(s) for s in set(states) if s not in ("completed", "early_stopped")}
        note = "" if not bad else " (" + ", ".join(f"{k} {v}" for k, v in bad.items()) + ")"
        rows.append([arm, f"{result['arms'][arm]['n']}{note}", *cells])
    return header, rows


def comparison_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["claimed", "metric", "paired difference (or value)", "mean", "95 % bootstrap CI", "n", "holds?"]
    return header, [[c["claim"], c["metric"], c["of"], fmt(c["mean"]), ci_text(c["ci"]), str(c["n"]), c["holds"]]
                    for c in result["comparisons"]]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def markdown(result: dict[str, Any], image: str = "study.png", level: str = "#") -> str:
    """study.md: setup first, then the claim, the per-arm table, the comparisons, the verdict and the rule."""
    return "\n\n".join([
        f"{level} Study `{result['study']}`: {result['verdict'].upper()}",
        f"- data: {result['data']}\n- model: {result['model']}\n- budget: {result['budget']}",
        f"**Claim:** {result['claim']}  \n**Source:** {result['source']}  \n**Expected:** {'; '.join(result['expect'])}",
        "Per arm: mean [95 % CI over seeds, Student t].\n\n" + markdown_table(*arm_rows(result)),
        markdown_table(*comparison_rows(result)),
        f"**Verdict: {result['verdict']}** on this data and budget, nothing more. Rule: {result['rule']}",
        f"![{result['study']}]({image})",
    ]) + "\n"


def html_sections(result: dict[str, Any], image: Path) -> list[Any]:
    """report.html's sections: the same content as study.md, with tables sortable by their means."""
    from dnnlab.commands.report.page import Cell, Image, Items, Paragraph, Row, Section, Table

    header, rows = arm_rows(result)
    arms = [Row([Cell(r[0], r[0]), Cell(r[1], result["arms"][r[0]]["n"]),
                 *(Cell(text, result["metrics"][m][r[0]]["mean"]) for text, m in zip(r[2:], result["metrics"]))])
            for r in rows]
    claims_header, claims = comparison_rows(result)
    compared = [Row([*r[:3], Cell(r[3], c["mean"]), *r[4:]]) for r, c in zip(claims, result["comparisons"])]
    return [
        Section("Setup", [Items([("data", result["data"]), ("model", result["model"]), ("budget", result["budget"])]),
                          Items([("claim", result["claim"]), ("source", result["source"]),
                                 ("expected", "; ".join(result["expect"]))])]),
        Section("Per arm: mean [95 % CI over seeds, Student t]", [Table(header, arms)]),
        Section("Claimed comparisons", [Table(claims_header, compared)]),
        Section(f"Verdict: {result['verdict']}", [Paragraph(f"On this data and budget, nothing more. Rule: {result['rule']}")]),
        Section("Plot", [Image(image)]),
    ]


def plot(result: dict[str, Any], runs: dict[str, dict[int, RunMetrics]], path: Path) -> Path:
    """Left: each arm's metric per seed with mean and CI. Right: validation accuracy per epoch, mean and min–max band."""
    from matplotlib.figure import Figure

    from dnnlab.commands.report.plots import save

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    for i, (arm, summary) in enumerate(result["arms"].items()):
        values = np.array(summary["values"], dtype=float)
        left.scatter(i + np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [i] * len(values), values, s=14, alpha=0.6)
        lo, hi = summary["ci"]
        if math.isfinite(summary["mean"]):
            left.errorbar([i], [summary["mean"]], yerr=[[summary["mean"] - lo], [hi - summary["mean"]]], fmt="o", color="black", capsize=4)
        curves = [m.curve("val_acc") for m in runs[arm].values() if m.rows]
        if curves:
            width = max(map(len, curves))
            grid = np.array([c + [math.nan] * (width - len(c)) for c in curves], dtype=float)
            epochs = np.arange(1, width + 1)
            with warnings.catch_warnings():  # an epoch that no seed reached is NaN: a gap in the line
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, low, high = np.nanmean(grid, 0), np.nanmin(grid, 0), np.nanmax(grid, 0)
            right.plot(epochs, mean, label=arm)
            right.fill_between(epochs, low, high, alpha=0.2)
    left.set_xticks(range(len(result["arms"])), list(result["arms"]), rotation=30, ha="right")
    left.set_ylabel(result["metric"])
    left.set_title(f"{result['metric']} per seed; mean and 95 % CI")
    right.set_xlabel("epoch")
    right.set_ylabel("val_acc")
    right.set_title("validation accuracy: mean, min–max over seeds")
    right.legend(fontsize=7)
    fig.suptitle(f"{result['study']}: {result['claim']} — {result['verdict']}", fontsize=10)
    return save(fig, path)


def rich_tables(result: dict[str, Any]) -> list[Any]:
    from rich.markup import escape
    from rich.table import Table

    tables = []
    for title, (header, rows) in ((f"study {result['study']}: {result['claim']}", arm_rows(result)),
                                  ("claimed comparisons", comparison_rows(result))):
        t = Table(title=escape(title), header_style="bold")
        for h in header:
            t.add_column(escape(h))
        for row in rows:
            t.add_row(*map(escape, row))
        tables.append(t)
    return tables


def write(folder: str | Path) -> dict[str, Any]:
    """Write study.json, study.md, report.html and study.png into `folder` and print the tables; returns study.json's content."""
    from dnnlab.observe.console import console
    from dnnlab.commands.evaluate import json_safe
    from dnnlab.commands.report.page import write_html
    from dnnlab.runs.rundir import atomic_write

    folder = Path(folder)
    if not folder.is_dir():
        raise StudyError(f"{folder} is not a folder; give the folder `dnnlab study NAME` wrote (its path is printed at the end).")
    result, runs = build(folder)
    plot(result, runs, folder / "study.png")
    text = json.dumps(json_safe(result), indent=2, ensure_ascii=False)
    atomic_write(folder / "study.json", lambda f: f.write(text), mode="w")
    atomic_write(folder / "study.md", lambda f: f.write(markdown(result)), mode="w")
    write_html(folder / "report.html", f"study {result['study']}: {result['verdict']}", html_sections(result, folder / "study.png"))
    console.print(f"data: {result['data']}\nmodel: {result['model']}\nbudget: {result['budget']}")
    for table in rich_tables(result):
        console.print(table)
    colour = {"supported": "green", "contradicted": "red"}.get(result["verdict"], "yellow")
    console.print(f"verdict: [{colour}]{result['verdict']}[/{colour}]  ({folder / 'study.md'})")
    return result
