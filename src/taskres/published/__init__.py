"""Published few-shot figures, shipped as data with their sources, and ``taskres published`` to list them.

The table is ``fewshot.csv`` beside this file: one row per (method, backbone, dataset, shots) with the
published top-1 (%) and the exact place it was read (repository file or paper table). Names are ours:
``method`` a key of ``taskres.methods.METHODS``, ``dataset`` a registered dataset name or ``average`` (the
mean over the paper's 11 datasets), ``backbone`` the open_clip model name with OpenAI's CLIP weights (the
weights every paper here used). ``shots`` 0 marks a figure that uses no shots (zero-shot CLIP): it stands
beside a zero-shot cell of any shot count. ``SOURCES.md`` says where each source came from and what is
still missing; a figure not found in a nameable source is left out, never estimated.

    taskres published --method taskres --dataset imagenet --backbone RN50 --shots 16
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..datasets import DATASETS

TABLE = Path(__file__).with_name("fewshot.csv")
COLUMNS = ("method", "backbone", "dataset", "shots", "top1", "source")
AVERAGE = "average"  # the dataset name of a figure averaged over the paper's 11 datasets
OPENAI_WEIGHTS = ("openai", "default")  # ``default`` resolves to openai for open_clip model names
OFF_BY = 1.0  # points: a cell further than this from its published figure is marked


@dataclass(frozen=True)
class Published:
    method: str
    backbone: str
    dataset: str
    shots: int
    top1: float
    source: str

    @property
    def cell(self) -> tuple[str, str, str, int]:
        return (self.method, backbone_key(self.backbone), self.dataset, self.shots)


def backbone_key(name: str) -> str:
    """One spelling per architecture: papers write ``ViT-B/16``, open_clip ``ViT-B-16``."""
    return name.strip().replace("/", "-").lower()


def load_published(path: str | Path | None = None) -> list[Published]:
    """Every row of the table, checked: known names, numbers in range, a source, no cell twice."""
    from ..methods import METHODS

    path = Path(path) if path is not None else TABLE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FileNotFoundError(f"published table {path}: {exc.strerror or exc}") from None
    reader = csv.DictReader(text.splitlines())
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ValueError(f"{path}: the header must be {','.join(COLUMNS)}, not {','.join(reader.fieldnames or [])}")
    rows: list[Published] = []
    seen: dict[tuple, int] = {}
    for line, raw in enumerate(reader, start=2):
        where = f"{path}:{line}"
        if None in raw or any(v is None for v in raw.values()):
            raise ValueError(f"{where}: expected {len(COLUMNS)} fields")
        values = {k: v.strip() for k, v in raw.items()}
        if values["method"] not in METHODS:
            raise ValueError(f"{where}: unknown method {values['method']!r} (use the --method names)")
        if values["dataset"] not in DATASETS and values["dataset"] != AVERAGE:
            raise ValueError(f"{where}: unknown dataset {values['dataset']!r} (use the registered names or "
                             f"{AVERAGE!r})")
        try:
            shots, top1 = int(values["shots"]), float(values["top1"])
        except ValueError:
            raise ValueError(f"{where}: shots must be an integer and top1 a number") from None
        if shots < 0 or not 0.0 <= top1 <= 100.0:
            raise ValueError(f"{where}: shots must be >= 0 and top1 a percentage, got {shots} and {top1}")
        if not values["source"] or not values["backbone"]:
            raise ValueError(f"{where}: every figure needs its backbone and its source")
        row = Published(values["method"], values["backbone"], values["dataset"], shots, top1, values["source"])
        if row.cell in seen:
            raise ValueError(f"{where}: the cell {row.cell} is already given on line {seen[row.cell]}")
        seen[row.cell] = line
        rows.append(row)
    return rows


def select(rows: list[Published], *, method: str | None = None, dataset: str | None = None,
           backbone: str | None = None, shots: int | None = None) -> list[Published]:
    """The rows that match every filter given (a zero-shot figure matches any ``shots``)."""
    return [r for r in rows
            if (method is None or r.method == method) and (dataset is None or r.dataset == dataset)
            and (backbone is None or backbone_key(r.backbone) == backbone_key(backbone))
            and (shots is None or r.shots in (shots, 0))]


class PublishedIndex:
    """Look-ups by cell, for the report: which published figure stands beside a result."""

    def __init__(self, rows: list[Published]):
        self._by_cell = {r.cell: r for r in rows}

    def find(self, method: str, backbone_config: dict | None, dataset: str, shots: int) -> Published | None:
        """The figure for a record's cell; only for a backbone with OpenAI's weights, as the papers used."""
        if not backbone_config or str(backbone_config.get("pretrained")) not in OPENAI_WEIGHTS:
            return None
        key = backbone_key(str(backbone_config.get("name", "")))
        return self._by_cell.get((method, key, dataset, shots)) or self._by_cell.get((method, key, dataset, 0))


# -- command line -------------------------------------------------------------------------------------------
def render(rows: list[Published]) -> str:
    """An aligned table with a numbered source per row, and the sources listed below it."""
    sources = list(dict.fromkeys(r.source for r in rows))
    header = ["method", "backbone", "dataset", "shots", "top1", "source"]
    body = [[r.method, r.backbone, r.dataset, str(r.shots) if r.shots else "-", f"{r.top1:.2f}",
             f"[{sources.index(r.source) + 1}]"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(x.ljust(w) if i < 3 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths)))
             for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [""] + [f"[{i}] {s}" for i, s in enumerate(sources, start=1)]
    return "\n".join(lines)


def cmd_published(args) -> int:
    rows = select(load_published(args.table), method=args.method, dataset=args.dataset, backbone=args.backbone,
                  shots=args.shots)
    if not rows:
        print("published: no figure matches these filters (see taskres/published/SOURCES.md for what is "
              "shipped and what is missing)")
        return 1
    print(render(rows))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("published", help="list the published few-shot figures shipped with taskres",
                              description="List published few-shot top-1 figures with their sources. A zero-shot "
                                          "figure (shots -) matches every --shots.")
    p.add_argument("--method", default=None, help="e.g. taskres, coop, tip_adapter_f")
    p.add_argument("--dataset", default=None, help=f"a registered dataset name, or {AVERAGE}")
    p.add_argument("--backbone", default=None, help="e.g. RN50 or ViT-B-16 (ViT-B/16 works too)")
    p.add_argument("--shots", type=int, default=None)
    p.add_argument("--table", default=None, help="another table in the same CSV format (default: the shipped one)")
    p.set_defaults(func=cmd_published)


__all__ = ["AVERAGE", "COLUMNS", "OFF_BY", "TABLE", "Published", "PublishedIndex", "backbone_key",
           "load_published", "render", "select"]
