"""`dnnlab study`: statistics on numbers with known answers, every shipped study in a quick form,
re-runs that skip and re-report, a user's configs/ folder, and clear errors."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from dnnlab.config.catalog import CONF
from dnnlab.studies import main, stats
from dnnlab.studies.spec import StudyError
from helpers.configs import tiny

SHIPPED = sorted(p.stem for p in (CONF / "study").glob("*.yaml"))
# Six or more runs even in the quick form: trained in the slow suite, composed and validated in the default one.
LARGE = {"activations", "batchnorm", "optimizers", "schedules"}
QUICK = tiny("model.width=8", without=["model.depth", "trainer.progress"])  # the arms choose the rest
ISSUE_STUDIES = {"vanishing_gradients", "activations", "initializers", "batchnorm", "optimizers", "schedules", "dropout",
                 "mc_dropout", "max_norm_l2", "early_stopping", "selu", "clipping", "transfer", "pretraining", "bn_folding"}


# ------------------------------------------------------------------------------ statistics
def test_mean_ci_is_student_t():
    mean, (lo, hi) = stats.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) · s / √n with s = 1
    assert mean == 2.0 and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    assert stats.mean_ci([5.0, None, math.nan]) == (5.0, (5.0, 5.0))
    assert all(math.isnan(x) for x in (stats.mean_ci([])[0], *stats.mean_ci([])[1]))


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [0.1, 0.3, -0.2, 0.4, 0.25]
    lo, hi = stats.bootstrap_ci(values)
    assert (lo, hi) == stats.bootstrap_ci(values)  # reproducible reports
    assert lo < sum(values) / len(values) < hi
    assert stats.bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert stats.paired({0: 1.0, 1: 2.0, 2: None}, {0: 0.5, 1: 1.0, 2: 3.0, 3: 1.0}) == {0: 0.5, 1: 1.0}


def test_verdict_rule():
    holds = stats.judge("a > b", [0.02, 0.03, 0.01, 0.025, 0.015], sign=1)
    fails = stats.judge("a > b", [-0.02, -0.03, -0.01, -0.025, -0.015], sign=1)
    unclear = stats.judge("a > b", [0.05, -0.04, 0.01, -0.02, 0.03], sign=1)
    lower = stats.judge("a < b", [-1.0, -2.0, -1.5, -1.2, -1.8], sign=-1)
    assert stats.judge("a > b", [0.5], sign=1).holds == "unclear"  # one seed says nothing
    assert stats.judge("a > b", [0.02, 0.03, 0.01], sign=1).holds == "unclear"  # three agree by chance 1 time in 4
    assert (holds.holds, fails.holds, unclear.holds, lower.holds) == ("holds", "fails", "unclear", "holds")
    assert stats.judge("a > 1", [1.2, 1.3, 1.25, 1.22, 1.28], sign=1, threshold=1.0).holds == "holds"
    assert stats.judge("a < 1e-4", [1e-6, 2e-6, 3e-6, 1e-6, 2e-6], sign=-1, threshold=1e-4).holds == "holds"
    assert stats.verdict([holds, holds]) == "supported"
    assert stats.verdict([holds, unclear]) == "inconclusive"
    assert stats.verdict([holds, unclear, fails]) == "contradicted"
    assert stats.verdict([]) == "inconclusive"


# ------------------------------------------------------------------------- shipped studies
def test_every_issue_study_is_shipped_with_claim_source_and_budget(capsys):
    assert ISSUE_STUDIES <= set(SHIPPED)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SHIPPED)
    for name in SHIPPED:
        text = (CONF / "study" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_\n# ") and "budget:" in text and "source:" in text


def run_quick(name: str, folder, *overrides: str) -> dict:
    assert main([name, *QUICK, *overrides, f"hydra.sweep.dir={folder}"]) in (0, 1)
    return json.loads((folder / "study.json").read_text())


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n
                                  for n in SHIPPED if n != "transfer"])  # transfer: its own test below
def test_every_study_runs_in_a_quick_form(name, tmp_path):
    result = run_quick(name, tmp_path / name, "study.seeds=1")
    assert result["verdict"] in ("supported", "contradicted", "inconclusive")
    assert set(result["arms"]) == set(result["status"])
    assert all(len(seeds) == 1 for seeds in result["status"].values())
    assert all(a["n"] <= 1 and set(a) >= {"n", "mean", "ci", "values"} for a in result["arms"].values())
    assert result["comparisons"] and all(c["holds"] in ("holds", "fails", "unclear") for c in result["comparisons"])
    md = (tmp_path / name / "study.md").read_text().splitlines()
    assert md[2].startswith("- data: ") and md[3].startswith("- model: ") and md[4].startswith("- budget: ") and "× 1 seeds" in md[4]
    assert (tmp_path / name / "study.png").stat().st_size > 10_000


def test_large_studies_compose_and_validate_every_arm():
    from dnnlab.studies.run import preflight
    from dnnlab.studies.spec import load

    for name in sorted(LARGE):
        preflight(load(name, QUICK)[0], QUICK)


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_every_study_pairs_two_seeds(name, tmp_path):
    result = run_quick(name, tmp_path / name, "study.seeds=2")
    assert all(len(seeds) == 2 for seeds in result["status"].values())


def test_a_width_list_reads_as_one_value_in_the_report(tmp_path):
    folder = tmp_path / "s"
    widths = tiny("model.depth=2", "model.width=[8,4]", without=["trainer.progress"])
    assert main(["dropout", *widths, "study.seeds=1", f"hydra.sweep.dir={folder}"]) in (0, 1)
    assert "- model: architecture mlp 2×[8,4];" in (folder / "study.md").read_text()


def test_rerun_skips_finished_runs_and_rereports(tmp_path, capsys):
    folder = tmp_path / "s"
    first = run_quick("dropout", folder, "study.seeds=2")
    assert {a: v["n"] for a, v in first["arms"].items()} == {"dropout": 2, "none": 2}
    runs = sorted(folder.glob("*/summary.json"))
    assert [p.parent.name for p in runs] == ["dropout-0", "dropout-1", "none-0", "none-1"]
    stamps = {p: p.stat().st_mtime_ns for p in runs}
    (folder / "study.json").unlink()
    capsys.readouterr()
    again = run_quick("dropout", folder, "study.seeds=2")
    assert "skipped" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in runs} == stamps  # nothing trained again
    assert again == first  # the same numbers give the same report (the bootstrap is seeded)
    assert main(["dropout", "--report", str(folder)]) == 0
    assert json.loads((folder / "study.json").read_text()) == first


def test_a_study_writes_a_self_contained_report_html(tmp_path):
    folder = tmp_path / "s"
    result = run_quick("dropout", folder, "study.seeds=2")
    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "http://" not in page and "https://" not in page
    assert all(f">{arm}<" in page for arm in result["arms"]) and f"Verdict: {result['verdict']}" in page
    assert result["rule"].split(" (")[0] in page
    (folder / "report.html").unlink()
    from dnnlab.commands.report import main as report_main

    assert report_main([str(folder)]) == 0  # dnnlab report on a study folder is the study's report
    assert f"Verdict: {result['verdict']}" in (folder / "report.html").read_text()


def test_two_stage_study_arms_reuse_the_stage_of_their_seed(tmp_path):
    from omegaconf import OmegaConf

    folder = tmp_path / "t"
    result = run_quick("transfer", folder, "study.seeds=1")
    assert all(states == {"0": "completed"} for states in result["status"].values())
    assert (folder / "stages" / "source-0" / "checkpoints" / "best.pt").is_file()
    cfg = OmegaConf.load(folder / "reused-0" / ".hydra" / "config.yaml")
    assert cfg.model.pretrained == f"{folder}/stages/source-0" and cfg.study.arm == "reused"
    assert OmegaConf.load(folder / "stages" / "source-0" / ".hydra" / "config.yaml").data.classes == [0, 1, 2, 3, 4]
    assert "reused hidden1.linear" in (folder / "reused-0" / "train.log").read_text()


# ----------------------------------------------------------------------- a user's configs/
USER_STUDY = """# @package _global_
# my study: does a second layer help?
study:
  claim: "a second hidden layer helps"
  source: "me"
  arms:
    deep: [model.depth=2]
    shallow: [model.depth=1]
  expect: {better: deep, than: shallow}
  seeds: 1
"""


def test_user_configs_folder_extends_groups(tmp_path, monkeypatch, capsys):
    from dnnlab.api import compose
    from dnnlab.config.catalog import main as list_main
    from dnnlab.studies.spec import names

    (tmp_path / "configs" / "study").mkdir(parents=True)
    (tmp_path / "configs" / "experiment").mkdir()
    (tmp_path / "configs" / "study" / "mine.yaml").write_text(USER_STUDY)
    (tmp_path / "configs" / "experiment" / "tiny.yaml").write_text("# @package _global_\n# my tiny net\nmodel: {depth: 1, width: 5}\n")
    monkeypatch.chdir(tmp_path)
    assert compose(["experiment=tiny"]).model.width == 5
    assert "mine" in names()
    assert list_main(["study"]) == 0 and "(yours) my study" in capsys.readouterr().out
    result = run_quick("mine", tmp_path / "out")
    assert set(result["arms"]) == {"deep", "shallow"}
    other = tmp_path / "elsewhere"
    (other / "experiment").mkdir(parents=True)
    (other / "experiment" / "env.yaml").write_text("# @package _global_\n# from the env\nmodel: {width: 6}\n")
    monkeypatch.setenv("DNNLAB_CONFIGS", str(other))
    assert compose(["experiment=env"]).model.width == 6


def test_user_study_errors_are_clear(tmp_path, monkeypatch):
    (tmp_path / "configs" / "study").mkdir(parents=True)
    (tmp_path / "configs" / "study" / "bad.yaml").write_text(USER_STUDY.replace("than: shallow", "than: shalow"))
    (tmp_path / "configs" / "study" / "typo.yaml").write_text(USER_STUDY.replace("model.depth=1", "model.depht=1"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudyError, match="names the arm 'shalow', which is not in study.arms. Did you mean shallow?"):
        main(["bad"])
    with pytest.raises(StudyError, match=r"arm shallow: .*model.depht is not a config key. Did you mean model.depth"):
        main(["typo", "hydra.sweep.dir=out"])
    assert not (tmp_path / "out").exists()  # nothing written before the error


def test_a_user_study_naming_no_metric_is_refused_before_training(tmp_path, monkeypatch):
    (tmp_path / "configs" / "study").mkdir(parents=True)
    (tmp_path / "configs" / "study" / "m.yaml").write_text(USER_STUDY + "  metric: tset_acc\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudyError, match="the metric 'tset_acc' is neither .* Did you mean test_acc?"):
        main(["m", "hydra.sweep.dir=out"])
    assert not (tmp_path / "out").exists()


def test_an_override_of_what_the_arms_vary_is_refused(tmp_path):
    with pytest.raises(StudyError, match="activation=relu: the arms of study activations set activation themselves"):
        main(["activations", "activation=relu", f"hydra.sweep.dir={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()


def test_study_list_shows_every_readable_study_and_names_the_broken_ones(tmp_path, monkeypatch, capsys):
    (tmp_path / "configs" / "study").mkdir(parents=True)
    (tmp_path / "configs" / "study" / "good.yaml").write_text(USER_STUDY)
    (tmp_path / "configs" / "study" / "arms.yaml").write_text(USER_STUDY.replace("than: shallow", "than: c"))
    (tmp_path / "configs" / "study" / "yaml.yaml").write_text(USER_STUDY + "  arms: [\n")
    monkeypatch.chdir(tmp_path)
    assert main(["list"]) == 2
    out, err = capsys.readouterr()
    assert "good (yours): a second hidden layer helps" in out and "activations: " in out
    assert "arms.yaml" in err and "yaml.yaml" in err and "Traceback" not in err


def test_a_closed_pipe_ends_a_listing_quietly(tmp_path):
    shell = f"{sys.executable} -m dnnlab.cli study list | head -1"
    result = subprocess.run(shell, shell=True, capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.startswith("activations: ") and result.stderr == ""


# ------------------------------------------------------------------------------- errors
def test_unknown_study_and_bad_overrides_exit_2_with_one_paragraph(tmp_path):
    def dnnlab(*args):
        return subprocess.run([sys.executable, "-m", "dnnlab.cli", "study", *args], capture_output=True, text=True, cwd=tmp_path)

    result = dnnlab("activatons")
    assert result.returncode == 2 and "There is no study 'activatons'. Did you mean activations?" in result.stderr
    assert "Valid: " in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(StudyError, match="a study sweeps its own arms and seeds"):
        main(["dropout", "optimizer=adam,sgd"])
    with pytest.raises(StudyError, match="study.seeds=0 is not valid"):
        main(["dropout", "study.seeds=0"])
    with pytest.raises(StudyError, match="holds no study runs"):
        main(["dropout", "--report", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_a_misspelt_model_key_in_a_user_experiment_is_one_paragraph(tmp_path, monkeypatch, capsys):
    from dnnlab.cli import main as cli_main

    (tmp_path / "configs" / "experiment").mkdir(parents=True)
    (tmp_path / "configs" / "experiment" / "ybad.yaml").write_text("# @package _global_\nmodel: {depht: 3}\n")
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", "experiment=ybad", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "model.depht is not a config key. Did you mean model.depth?" in err and "input_shape" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]  # nothing written
