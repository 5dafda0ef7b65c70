"""`report.html`: one self-contained page (images as base64 data URIs, a few lines of inline vanilla JS)
with sortable tables, expandable seed groups, verdicts and plots.

Every value that comes from a run folder is escaped here (`html.escape`): a folder may come from
someone else, and an override such as `name=<script>…` must show as text, never run.

The page is built from sections, so any report (run, sweep, study) can use it:

    write_html(path, "title", [Section("Runs", [Table(columns, rows)]), Section("Plots", [Image(png)])])
"""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union


@dataclass
class Cell:
    """A table cell: the text shown and the value a click on its column sorts by (None sorts last)."""

    text: str
    sort: float | str | None = None


@dataclass
class Row:
    """One table row; `members` (e.g. a seed group's jobs) are hidden rows shown by its toggle."""

    cells: list[Any]
    members: list[list[Any]] = field(default_factory=list)


@dataclass
class Table:
    """A table sortable by clicking a column header; cells are `Cell`s or plain values."""

    columns: list[str]
    rows: list[Row]


@dataclass
class Image:
    path: Path
    caption: str = ""


@dataclass
class Paragraph:
    text: str


@dataclass
class Items:
    """A bullet list, e.g. the health verdicts: (bold label, text) pairs."""

    items: list[tuple[str, str]]


@dataclass
class Code:
    text: str


Part = Union[Table, Image, Paragraph, Items, Code]


@dataclass
class Section:
    heading: str
    parts: list[Part]


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;white-space:nowrap}
th{background:#f0f0f0;cursor:pointer;user-select:none}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
tr.member td{background:#fafafa;color:#555}
button.toggle{font-size:11px;margin-right:4px;cursor:pointer}
figure{display:inline-block;margin:.5em}img{max-width:100%;border:1px solid #ddd}
pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:12px}
"""

# Sorting moves whole <tbody>s, so a seed group and its members stay together.
SCRIPT = """
document.addEventListener("click", function (e) {
  var t = e.target;
  if (t.matches("button.toggle")) {
    var open = t.getAttribute("aria-expanded") !== "true";
    t.setAttribute("aria-expanded", open);
    t.textContent = open ? "\\u25BE" : "\\u25B8";
    t.closest("tbody").querySelectorAll("tr.member").forEach(function (r) { r.hidden = !open; });
    return;
  }
  if (!t.matches("th")) return;
  var table = t.closest("table"), col = t.cellIndex, asc = !t.classList.contains("asc");
  table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
  t.classList.add(asc ? "asc" : "desc");
  function key(body) {
    var c = body.rows[0].cells[col], v = c.dataset.sort;
    return v === undefined ? null : (c.dataset.num ? parseFloat(v) : v);
  }
  Array.from(table.tBodies).sort(function (a, b) {
    var x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
  }).forEach(function (body) { table.appendChild(body); });
});
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def as_cell(value: Any) -> Cell:
    """Plain values become cells: numbers sort numerically, text alphabetically, None last."""
    if isinstance(value, Cell):
        return value
    if value is None or value == "":
        return Cell("—")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Cell(f"{value:.4g}" if isinstance(value, float) else str(value), value)
    return Cell(str(value), str(value))


def td(value: Any, prefix: str = "") -> str:
    cell = as_cell(value)
    attrs = ""
    if isinstance(cell.sort, (int, float)) and not isinstance(cell.sort, bool) and math.isfinite(cell.sort):
        attrs = f' data-sort="{cell.sort!r}" data-num="1"'
    elif isinstance(cell.sort, str):
        attrs = f' data-sort="{esc(cell.sort)}"'
    return f"<td{attrs}>{prefix}{esc(cell.text)}</td>"


def table_html(table: Table) -> str:
    head = "".join(f'<th title="click to sort">{esc(c)}</th>' for c in table.columns)
    bodies = []
    for row in table.rows:
        toggle = '<button class="toggle" aria-expanded="false" title="show the jobs">&#9656;</button>' if row.members else ""
        lines = ["<tr>" + "".join(td(v, toggle if i == 0 else "") for i, v in enumerate(row.cells)) + "</tr>"]
        lines += ['<tr class="member" hidden>' + "".join(map(td, m)) + "</tr>" for m in row.members]
        bodies.append("<tbody>" + "".join(lines) + "</tbody>")
    return f"<table><thead><tr>{head}</tr></thead>{''.join(bodies)}</table>"


def image_html(image: Image) -> str:
    """The PNG inline as a data URI, so the page needs no file beside it."""
    data = base64.b64encode(image.path.read_bytes()).decode("ascii")
    caption = image.caption or image.path.stem
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def part_html(part: Part) -> str:
    if isinstance(part, Table):
        return table_html(part)
    if isinstance(part, Image):
        return image_html(part)
    if isinstance(part, Items):
        return "<ul>" + "".join(f"<li><b>{esc(k)}</b> — {esc(v)}</li>" for k, v in part.items) + "</ul>"
    if isinstance(part, Code):
        return f"<pre>{esc(part.text)}</pre>"
    return f"<p>{esc(part.text)}</p>"


def render_html(title: str, sections: Sequence[Section]) -> str:
    body = "".join(f"<section><h2>{esc(s.heading)}</h2>{''.join(map(part_html, s.parts))}</section>" for s in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{body}<script>{SCRIPT}</script></body></html>\n")


def write_html(path: Path, title: str, sections: Sequence[Section]) -> Path:
    """Write one self-contained report page to `path` (no network, no files beside it needed)."""
    from dnnlab.runs.rundir import atomic_write

    text = render_html(title, sections)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))  # never a half-written page
    return path
