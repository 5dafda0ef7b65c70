"""report.html (self-contained, escaped, sortable, seed groups expandable), seed bands in val_curves,
the "which settings matter" plots; synthetic sweep folders (bench/report_bench.py's), no training."""
from __future__ import annotations

import html
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dnnlab.cli import main as dnnlab
from dnnlab.commands.report.folders import collect
from dnnlab.commands.report.page import Cell, Image, Items, Paragraph, Row, Section, Table, write_html
from dnnlab.commands.report.plots import axis_layout, sweep_figure

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("report_bench", ROOT / "bench" / "report_bench.py")
report_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report_bench)
EVIL = "<script>alert('x')</script>"


def make_sweep(root: Path, jobs: int = 12, seeds: int = 2, **kw) -> Path:
    return report_bench.make_sweep(root, jobs=jobs, epochs=4, seeds=seeds, **kw)


def set_override(job: Path, key: str, value: str) -> None:
    file = job / ".hydra" / "overrides.yaml"
    items = [i for i in yaml.safe_load(file.read_text()) if not i.startswith(f"{key}=")]
    file.write_text(yaml.safe_dump([*items, f"{key}={value}"]))


def embedded_images(page: str) -> list[str]:
    return re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', page)


def test_sweep_html_is_self_contained_with_one_row_per_seed_group_and_every_plot(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sweep")
    assert dnnlab(["report", str(sweep)]) == 0
    page = (sweep / "report.html").read_text()
    pngs = sorted(p.name for p in sweep.glob("*.png"))
    assert pngs == ["metric_vs_value.png", "parallel_coordinates.png", "val_curves.png"]
    assert len(embedded_images(page)) == len(pngs)
    assert "http://" not in page and "https://" not in page and "src=\"" not in page.replace('src="data:', "")
    assert page.count("<tbody>") == 6 and page.count('<tr class="member" hidden>') == 12  # 6 settings × 2 seeds
    assert "Health" in page and "12 of 12 runs: no problems found" in page


def test_sweep_html_shows_the_verdicts(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    metrics = sweep / "3" / "metrics.jsonl"
    metrics.write_text(metrics.read_text().replace('"dead_frac/hidden1": 0.05', '"dead_frac/hidden1": 0.9'))
    assert dnnlab(["report", str(sweep)]) == 0
    page = (sweep / "report.html").read_text()
    assert "<b>dying_relu</b>" in page and "11 of 12 runs: no problems found" in page
    assert "<p>3</p><ul><li><b>dying_relu</b>" in page


def test_no_group_html_has_one_row_per_job(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    assert dnnlab(["report", str(sweep), "--no-group"]) == 0
    page = (sweep / "report.html").read_text()
    assert page.count("<tbody>") == 12 and '<tr class="member"' not in page


def test_values_from_run_folders_are_escaped(tmp_path):
    """A folder written by someone else cannot put markup or script into the page."""
    sweep = make_sweep(tmp_path / "sweep", extra={"note": EVIL})
    set_override(sweep / "0", "note", '<img src=x onerror="alert(1)">')
    set_override(sweep / "1", EVIL, "1")
    assert dnnlab(["report", str(sweep)]) == 0
    page = (sweep / "report.html").read_text()
    assert page.count("<script>") == 1  # the page's own sorting script, nothing else
    assert "<img src=x" not in page and EVIL not in page
    assert html.escape(EVIL) in page and html.escape('<img src=x onerror="alert(1)">') in page


def test_run_html_embeds_every_plot_and_the_config(tmp_path):
    run = make_sweep(tmp_path / "sweep", jobs=1) / "0"
    (run / ".hydra" / "config.yaml").write_text("optimizer:\n  lr: 0.001  # </pre><script>x</script>\n")
    assert dnnlab(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert len(embedded_images(page)) == len(list(run.glob("*.png"))) == 6
    assert "lr: 0.001" in page and "&lt;/pre&gt;&lt;script&gt;" in page and page.count("<tbody>") == 1


def test_write_html_is_reusable_for_any_report(tmp_path):
    png = make_sweep(tmp_path / "s", jobs=2, seeds=1)
    dnnlab(["report", str(png)])
    page = write_html(tmp_path / "study.html", "a study <1>", [
        Section("Arms", [Table(["arm", "acc"], [Row(["a", Cell("0.9 ± 0.1", 0.9)], members=[["a/0", 0.8], ["a/1", 1.0]]),
                                                Row(["b", None])])]),
        Section("Verdict", [Items([("supported", "a beats b")]), Paragraph("p < 0.05")]),
        Section("Plots", [Image(png / "val_curves.png", "curves")]),
    ]).read_text()
    assert "<title>a study &lt;1&gt;</title>" in page and 'data-sort="0.9" data-num="1"' in page
    assert page.count('<tr class="member" hidden>') == 2 and "p &lt; 0.05" in page and len(embedded_images(page)) == 1


def test_seed_groups_are_drawn_as_mean_and_band(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", jobs=8, seeds=2)
    runs, _ = collect([sweep])
    _, acc_ax = sweep_figure(runs).axes
    assert len(acc_ax.lines) == 4 and len(acc_ax.collections) == 4  # 4 groups: a mean line and a band each
    members = [r for r in runs if r.overrides["optimizer.lr"] == runs[0].overrides["optimizer.lr"]
               and r.overrides["regularization.dropout.rate"] == runs[0].overrides["regularization.dropout.rate"]]
    line = next(l for l in acc_ax.lines if "optimizer.lr=0.0001 " in l.get_label())
    expected = [sum(r.rows[e]["val_acc"] for r in members) / len(members) for e in range(4)]
    assert len(members) == 2 and list(line.get_ydata()) == pytest.approx(expected)
    assert len({tuple(l.get_color()) if not isinstance(l.get_color(), str) else l.get_color() for l in acc_ax.lines}) == 4
    _, ungrouped = sweep_figure(runs, group=False).axes
    assert len(ungrouped.lines) == 8 and not ungrouped.collections


def test_axis_layout_maps_categories_to_positions_and_rates_to_log():
    positions, ticks = axis_layout(["sgd", "adam", "sgd", "nadam"])
    assert positions == [1.0, 0.0, 1.0, 0.5] and [t for _, t in ticks] == ["adam", "nadam", "sgd"]
    positions, ticks = axis_layout(["1e-4", "1e-3", "1e-2"])
    assert positions == pytest.approx([0, 0.5, 1]) and ticks[0][1] == "0.0001" and ticks[-1][1] == "0.01"
    assert axis_layout([0.1, 0.1])[0] == [0.5, 0.5]


def test_a_seed_only_sweep_has_no_settings_plots(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", jobs=3, seeds=3)  # one setting, three seeds
    assert dnnlab(["report", str(sweep)]) == 0
    assert sorted(p.name for p in sweep.glob("*.png")) == ["val_curves.png"]


# ---------------------------------------------------------------------------------------------
# A real browser (Debian's chromium): loads without errors, rows, sorting, expanding, images
# ---------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
ERRORS = "<script>window.__errors=[];addEventListener('error',function(e){__errors.push(String(e.message))});</script>"
PROBE = """<script>addEventListener('load', function () {
  var t = document.querySelector('table'), out = {errors: __errors, rows: t.tBodies.length};
  var th = Array.from(t.tHead.rows[0].cells), i = th.findIndex(function (h) { return h.textContent === 'best_val_acc'; });
  function column() { return Array.from(t.tBodies).map(function (b) { return parseFloat(b.rows[0].cells[i].dataset.sort); }); }
  th[i].click(); out.ascending = column(); th[i].click(); out.descending = column();
  var toggle = document.querySelector('button.toggle');
  if (toggle) { toggle.click(); out.expanded = toggle.closest('tbody').querySelectorAll('tr.member:not([hidden])').length; }
  out.images = Array.from(document.images).map(function (im) { return im.naturalWidth; });
  var pre = document.createElement('pre'); pre.id = '__probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def in_browser(page: Path, tmp_path: Path) -> dict:
    """Open a copy of `page` with an error listener first and a probe script last; the probe's findings."""
    probe = tmp_path / "probe.html"
    text = page.read_text()
    probe.write_text(text.replace("<head>", "<head>" + ERRORS, 1).replace("</body>", PROBE + "</body>", 1))
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                             f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri()],
                            capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="__probe">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
@pytest.mark.parametrize("args, rows", [([], 6), (["--no-group"], 12)])
def test_report_html_in_a_real_browser(tmp_path, args, rows):
    sweep = make_sweep(tmp_path / "sweep", extra={"note": EVIL})
    assert dnnlab(["report", str(sweep), *args]) == 0
    found = in_browser(sweep / "report.html", tmp_path)
    assert found["errors"] == [] and found["rows"] == rows
    assert found["ascending"] == sorted(found["ascending"]) and found["descending"] == sorted(found["ascending"], reverse=True)
    assert found["expanded"] == 2 if not args else "expanded" not in found
    assert len(found["images"]) == 3 and all(w > 0 for w in found["images"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", [[], ["--optuna"]])
def test_report_bench_runs_end_to_end(tmp_path, kind):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "report_bench.py"), "--jobs", "6", "--repeats", "1",
                             "--json", str(out), *kind], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["report_s"] > 0 and data["report_html_kb"] > 0 and "val_curves.png" in data["plots"]
    assert ("param_importances.png" in data["plots"]) == bool(kind)
