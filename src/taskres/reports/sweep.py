"""``RESULTS_DIR/report/report.html``: a sweep's tables and figures as one self-contained page.

The tables are tables.py's own Markdown rendering of the Summary (the same rows and columns as report.md,
so a column added there shows here too), turned into HTML; the figures tables.py drew are inlined as data
URIs (taskres.reports.htmlpage), so the page needs no network and no files beside it.
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

from .htmlpage import data_uri, img, page
from ..atomic import atomic_path

MIME = {".png": "image/png", ".svg": "image/svg+xml"}


def _inline(text: str) -> str:
    """Escape, then the two bits of inline Markdown report.md uses: **bold** and a backslash escape."""
    out = escape(text.replace("\\*", "*"))
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(markdown: str) -> str:
    """report.md's subset of Markdown (## headings, **bold** lines, pipe tables, - lists, paragraphs)."""
    out: list[str] = []
    lines = markdown.splitlines()
    i, open_section = 0, False
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            if open_section:
                out.append("</section>")
            out.append(f"<section><h2>{_inline(line[3:])}</h2>")
            open_section = True
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            head, body = _cells(block[0]), [_cells(r) for r in block[2:]]
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")
            continue
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif re.fullmatch(r"\*\*[^*]+\*\*", line.strip()):
            out.append(f"<h3>{_inline(line.strip()[2:-2])}</h3>")
        elif line.strip():
            out.append(f'<p class="note">{_inline(line)}</p>')
        i += 1
    if open_section:
        out.append("</section>")
    return "\n".join(out)


def render_sweep_html(title: str, markdown: str, figures: list[Path], num_records: int) -> str:
    parts = [f"<h1>{escape(title)}</h1>",
             f'<p class="sub">{num_records} record(s); mean ± std over seeds (tables as in report.md)</p>']
    for path in figures:
        kind, _, backbone = path.stem.partition("__")
        parts.append(f"<section><h2>{escape(kind.replace('fewshot', 'Few-shot'))} figure, {escape(backbone)}</h2>"
                     f"{img(data_uri(path.read_bytes(), MIME[path.suffix]), path.name)}</section>")
    body = markdown_to_html(markdown)
    parts.append(body or "<section><p>No records yet.</p></section>")
    return page(title, "\n".join(parts))


def write_sweep_html(path: Path, title: str, markdown: str, figure_files: list[Path], num_records: int) -> Path:
    """Write the page; the figures are the PNGs tables.py wrote (SVGs where no PNG was asked for)."""
    pngs = [p for p in figure_files if p.suffix == ".png"]
    figures = pngs or [p for p in figure_files if p.suffix == ".svg"]
    with atomic_path(path) as tmp:
        tmp.write_text(render_sweep_html(title, markdown, figures, num_records), encoding="utf-8")
    return path
