"""Small pieces for self-contained HTML pages: one stylesheet, escaped tables, images as data URIs.

The pages (a run's report.html, a sweep's report.html) load nothing from the network: the CSS is inline and
every picture is a base64 ``data:`` URI, so a page can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import io
from html import escape

STYLE = """
:root { --fg:#1d2330; --muted:#5d6778; --line:#e3e7ee; --bg:#f6f7fb; --card:#fff; --up:#1f9d55; --down:#d64545;
        --accent:#3558d4; }
* { box-sizing:border-box; }
body { margin:0; background:var(--bg); color:var(--fg); font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
       "DejaVu Sans",sans-serif; }
main { max-width:1120px; margin:0 auto; padding:24px 28px 48px; }
h1 { font-size:22px; margin:0 0 4px; }
h2 { font-size:17px; margin:0 0 10px; }
.sub { color:var(--muted); margin:0 0 18px; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:18px 20px;
          margin:0 0 18px; }
.note { color:var(--muted); font-size:12.5px; margin:6px 0 10px; }
.cards { display:flex; gap:12px; flex-wrap:wrap; margin:0 0 18px; }
.card { flex:1 1 170px; background:var(--card); border:1px solid var(--line); border-radius:10px; padding:12px 16px; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .v { font-size:26px; font-weight:650; }
.card .d { font-size:13px; color:var(--muted); }
.up { color:var(--up); } .down { color:var(--down); }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { padding:5px 8px; border-bottom:1px solid var(--line); text-align:right; white-space:nowrap; }
th { font-weight:600; color:var(--muted); font-size:12.5px; background:#fafbfd; }
th:first-child, td:first-child, th.l, td.l { text-align:left; white-space:normal; }
.bar { position:relative; width:220px; height:12px; background:#f0f2f6; border-radius:3px; }
.bar span { position:absolute; top:0; height:12px; border-radius:3px; }
.bar .mid { position:absolute; left:50%; top:-2px; width:1px; height:16px; background:#9aa3b2; }
.two { display:grid; grid-template-columns:minmax(0,1.15fr) minmax(0,1fr); gap:18px; align-items:start; }
.stack img.fig { max-width:820px; margin:0 auto 8px; }
img.fig { max-width:100%; height:auto; display:block; }
.grid { display:grid; grid-template-columns:repeat(auto-fill,minmax(160px,1fr)); gap:12px; }
.thumb { border:1px solid var(--line); border-radius:8px; padding:8px; background:#fbfcfe; }
.thumb img { width:100%; aspect-ratio:1; object-fit:cover; border-radius:5px; image-rendering:pixelated;
             display:block; background:#eee; }
.thumb .t { font-size:12.5px; margin:6px 0 2px; }
.thumb ol { margin:0; padding-left:18px; font-size:12px; color:var(--muted); }
.thumb li.hit { color:var(--up); font-weight:600; }
details summary { cursor:pointer; color:var(--accent); margin:8px 0; }
"""


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body><main>\n{body}\n</main></body></html>\n")


def table(header: list[str], rows: list[list[str]], raw: bool = False, left: int = 1) -> str:
    """An HTML table; cells are escaped unless ``raw`` (cells already HTML); the first ``left`` columns (text)
    are left-aligned, the others (numbers) right-aligned."""
    cell = (lambda c: c) if raw else (lambda c: escape(str(c)))
    cls = lambda i: ' class="l"' if i < left else ""  # noqa: E731
    head = "".join(f"<th{cls(i)}>{escape(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{cell(c)}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def figure_uri(fig, dpi: int = 110) -> str:
    """A matplotlib figure as an inline PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return data_uri(buf.getvalue(), "image/png")


def img(uri: str, alt: str, cls: str = "fig") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{escape(alt)}">'
