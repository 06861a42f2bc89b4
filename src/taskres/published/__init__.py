"""Published figures, shipped as data with their sources, and ``taskres published`` to list them.

The table is ``figures.csv`` beside this file: one published figure a row, with the exact place it was read
(``source``: the paper or repository; ``table``: the table or file inside it), how it came to be there
(``provenance``: the authors' own number, a later paper's rerun, a run log), the source's own name for the
method (``paper_method``) and ours (``method``, a key of ``taskres.methods.METHODS``), the ``backbone`` (with
OpenAI's CLIP weights, the weights every source here used), ``dataset`` (a registered name or ``average``, the
mean over the paper's 11 datasets), ``shots`` (0: a figure that uses no shots, zero-shot CLIP, which stands
beside a cell of any shot count), ``metric`` (``top1``; ``top1_base`` / ``top1_new`` for base-to-new) and the
``value`` as printed. ``SOURCES.md`` says where each source came from and what is still missing.

Two sources may give the same cell different figures (a paper's own number and a later paper's rerun):
both are kept and both are shown, each with its source, never averaged.

    taskres published --method taskres --dataset imagenet --backbone RN50 --shots 16
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..datasets import DATASETS

TABLE = Path(__file__).with_name("figures.csv")
COLUMNS = ("source", "provenance", "table", "method", "paper_method", "backbone", "dataset", "shots", "metric",
           "value", "note")
METRICS = ("top1", "top1_base", "top1_new")
AVERAGE = "average"  # the dataset name of a figure averaged over the paper's 11 datasets
OPENAI_WEIGHTS = ("openai", "default")  # ``default`` resolves to openai for open_clip model names
OFF_BY = 1.0  # points: a cell further than this from its published figure is marked


@dataclass(frozen=True)
class Published:
    method: str
    backbone: str
    dataset: str
    shots: int
    metric: str
    value: float
    printed: str  # the value as its source prints it
    source: str
    table: str
    provenance: str = ""
    paper_method: str = ""
    note: str = ""

    @property
    def cell(self) -> tuple[str, str, str, int, str]:
        return (self.method, backbone_key(self.backbone), self.dataset, self.shots, self.metric)

    @property
    def where(self) -> str:
        """The source and the table or file in it, in one line."""
        return f"{self.source}; {self.table}" if self.table else self.source


def backbone_key(name: str) -> str:
    """One spelling per architecture: papers write ``ViT-B/16``, open_clip ``ViT-B-16``."""
    return name.strip().replace("/", "-").lower()


def load_published(path: str | Path | None = None) -> list[Published]:
    """Every row of the table, checked: known names, numbers in range, a source, no figure twice.

    A cell may hold several figures from different sources; the same cell twice from one source and table
    is an error.
    """
    path = Path(path) if path is not None else TABLE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FileNotFoundError(f"published table {path}: {exc.strerror or exc}") from None
    reader = csv.DictReader(text.splitlines(keepends=True))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ValueError(f"{path}: the header must be {','.join(COLUMNS)}, not {','.join(reader.fieldnames or [])}")
    rows: list[Published] = []
    seen: dict[tuple, int] = {}
    for raw in reader:
        where = f"{path}:{reader.line_num}"
        row = _parse_row(raw, where)
        key = (*row.cell, row.source, row.table)
        if key in seen:
            raise ValueError(f"{where}: the cell {row.cell} from this source and table is already given on line "
                             f"{seen[key]}")
        seen[key] = reader.line_num
        rows.append(row)
    return rows


def _parse_row(raw: dict, where: str) -> Published:
    from ..methods import METHODS

    if None in raw or any(v is None for v in raw.values()):
        raise ValueError(f"{where}: expected {len(COLUMNS)} fields")
    values = {k: v.strip() for k, v in raw.items()}
    if values["method"] not in METHODS:
        raise ValueError(f"{where}: unknown method {values['method']!r} (use the --method names)")
    if values["dataset"] not in DATASETS and values["dataset"] != AVERAGE:
        raise ValueError(f"{where}: unknown dataset {values['dataset']!r} (use the registered names or {AVERAGE!r})")
    if values["metric"] not in METRICS:
        raise ValueError(f"{where}: unknown metric {values['metric']!r} (one of {', '.join(METRICS)})")
    try:
        shots, value = int(values["shots"]), float(values["value"])
    except ValueError:
        raise ValueError(f"{where}: shots must be an integer and value a number") from None
    if shots < 0 or not 0.0 <= value <= 100.0:
        raise ValueError(f"{where}: shots must be >= 0 and value a percentage, got {shots} and {value}")
    if not values["source"] or not values["backbone"]:
        raise ValueError(f"{where}: every figure needs its backbone and its source")
    return Published(values["method"], values["backbone"], values["dataset"], shots, values["metric"], value,
                     values["value"], values["source"], values["table"], values["provenance"],
                     values["paper_method"], values["note"])


def select(rows: list[Published], *, method: str | None = None, dataset: str | None = None,
           backbone: str | None = None, shots: int | None = None, metric: str | None = None) -> list[Published]:
    """The rows that match every filter given (a zero-shot figure matches any ``shots``)."""
    return [r for r in rows
            if (method is None or r.method == method) and (dataset is None or r.dataset == dataset)
            and (backbone is None or backbone_key(r.backbone) == backbone_key(backbone))
            and (shots is None or r.shots in (shots, 0)) and (metric is None or r.metric == metric)]


class PublishedIndex:
    """Look-ups by cell, for the report: which published figures stand beside a result."""

    def __init__(self, rows: list[Published]):
        self._by_cell: dict[tuple, list[Published]] = {}
        for r in rows:
            figures = self._by_cell.setdefault(r.cell, [])
            # one source printing the same figure in two of its tables stands beside a result once
            if not any(f.source == r.source and f.value == r.value for f in figures):
                figures.append(r)

    def find(self, method: str, backbone_config: dict | None, dataset: str, shots: int,
             metric: str = "top1") -> list[Published]:
        """Every source's figure for a record's cell (none for a backbone without OpenAI's weights, which the
        papers used); the figures of that shot count, else those that use no shots."""
        if not backbone_config or str(backbone_config.get("pretrained")) not in OPENAI_WEIGHTS:
            return []
        key = backbone_key(str(backbone_config.get("name", "")))
        return (self._by_cell.get((method, key, dataset, shots, metric))
                or self._by_cell.get((method, key, dataset, 0, metric)) or [])


# -- command line -------------------------------------------------------------------------------------------
def render(rows: list[Published]) -> str:
    """An aligned table with a numbered source per row, and the sources listed below it."""
    sources = list(dict.fromkeys(r.where for r in rows))
    header = ["method", "backbone", "dataset", "shots", "metric", "value", "source"]
    body = [[r.method, r.backbone, r.dataset, str(r.shots) if r.shots else "-", r.metric, r.printed,
             f"[{sources.index(r.where) + 1}]"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(x.ljust(w) if i < 3 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths)))
             for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    provenance = {r.where: r.provenance for r in rows}
    lines += [""] + [f"[{i}] {s}" + (f" ({provenance[s]})" if provenance[s] else "")
                     for i, s in enumerate(sources, start=1)]
    return "\n".join(lines)


__all__ = ["AVERAGE", "COLUMNS", "METRICS", "OFF_BY", "TABLE", "Published", "PublishedIndex", "backbone_key",
           "load_published", "render", "select"]
