"""``taskres report RESULTS_DIR``: tables and figures from the records a bench wrote, and nothing else.

Per (backbone, dataset, method, shots) the top-1 accuracies of the seeds are summarised as mean ± std (the
population standard deviation over seeds, as CoOp's result parser computes it). Few-shot results also get
the average over the datasets present (the paper averages its 11) and the paper-style figure: top-1 against
shots on a log2 axis, one panel per dataset plus the average, one line per method. Domain generalisation gets
the source, each target and the target average; base-to-new the base, new and harmonic mean (CoCoOp's H:
the harmonic mean of the mean base and mean new accuracies).

Wherever a few-shot cell (or the 11-dataset average) has a published figure (``taskres.published``: same
method, dataset and shots, a backbone of that name with OpenAI's weights), the report puts the figure and
the difference beside it, and marks the cells more than 1 point away.

Writes ``report.md``, ``report.csv``, ``report.json``, ``fewshot__<backbone>.png/.svg`` and ``report.html``
(the tables and figures on one self-contained page, taskres.reports.sweep) into ``RESULTS_DIR/report/`` (or
``--out``).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_path, read_json, write_json_atomic
from ..datasets import PAPER_DATASETS
from ..protocols import PAPER_METHODS, harmonic_mean, safe_name
from ..published import AVERAGE, OFF_BY, PublishedIndex, load_published
from .sweep import write_sweep_html

FIGURE_FORMATS = ("png", "svg")
MAX_FAILED_LISTED = 20
OFF_MARK = "(!)"  # beside a result more than OFF_BY points from its published figure


# -- reading ------------------------------------------------------------------------------------------------
def load_records(results_dir: str | Path, only: set[str] | None = None) -> tuple[list[dict], list[dict]]:
    """The ok and the error records of ``RESULTS_DIR/records`` (optionally only those named in ``only``)."""
    folder = Path(results_dir) / "records"
    if not folder.is_dir():
        raise FileNotFoundError(f"no records folder in {results_dir} (run `taskres bench {results_dir}` first)")
    ok, failed = [], []
    for path in sorted(folder.glob("*.json")):
        if only is not None and path.stem not in only:
            continue
        try:
            record = read_json(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"record {path} is not valid JSON: {exc}") from None
        if not isinstance(record, dict) or "protocol" not in record:
            raise ValueError(f"{path} is not a bench record (no 'protocol')")
        (ok if record.get("status") == "ok" else failed).append(record)
    return ok, failed


# -- statistics ---------------------------------------------------------------------------------------------
def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:  # one seed has no spread to report: no "± 0.00"
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))


def _order(items, preferred) -> list:
    """Preferred names first in their order (the paper's), the rest in order of appearance."""
    items = list(dict.fromkeys(items))
    return [p for p in preferred if p in items] + [x for x in items if x not in preferred]


@dataclass
class Summary:
    fewshot: list[dict] = field(default_factory=list)  # per (backbone, dataset, method, shots)
    fewshot_average: list[dict] = field(default_factory=list)  # per (backbone, method, shots)
    domain: list[dict] = field(default_factory=list)  # per (backbone, source, method, shots)
    base2new: list[dict] = field(default_factory=list)  # per (backbone, dataset, method, shots)
    base2new_average: list[dict] = field(default_factory=list)
    datasets: dict[str, list[str]] = field(default_factory=dict)  # backbone -> few-shot datasets present
    failed: list[dict] = field(default_factory=list)
    num_records: int = 0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _group(records: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


def _sorted_rows(rows: list[dict], datasets_key: str = "dataset") -> list[dict]:
    methods = _order([r["method"] for r in rows], PAPER_METHODS)
    datasets = _order([r.get(datasets_key) for r in rows], PAPER_DATASETS)
    return sorted(rows, key=lambda r: (r["backbone"], datasets.index(r.get(datasets_key)), r["shots"],
                                       methods.index(r["method"])))


def _beside_published(row: dict, figures: list) -> None:
    """Every published figure of a summary row, each with its source and our difference to it.

    ``off``: the row is more than OFF_BY points from every figure (sources that disagree are each kept, never
    averaged: a result close to one of them is not marked).
    """
    row["published"] = [_figure(row["mean"], f) for f in figures]
    row["off"] = bool(row["published"]) and all(p["off"] for p in row["published"])


def _figure(mean: float | None, figure) -> dict:
    diff = mean - figure.value if mean is not None else None
    return {"value": figure.value, "printed": figure.printed, "source": figure.where,
            "provenance": figure.provenance, "difference": diff, "off": diff is not None and abs(diff) > OFF_BY}


def summarise(records: list[dict], failed: list[dict] | None = None,
              published: PublishedIndex | None = None) -> Summary:
    """``published``: the figures to put beside the few-shot results (none when not given)."""
    out = Summary(failed=[{k: r.get(k) for k in ("name", "protocol")} | {"error": r.get("error", {}).get("message")}
                          for r in failed or []], num_records=len(records))
    by_protocol: dict[str, list[dict]] = {}
    for r in records:
        by_protocol.setdefault(r["protocol"], []).append(r)

    # Few-shot: mean ± std over seeds, then the average over datasets.
    configs: dict[str, dict | None] = {}  # backbone label -> its record's backbone_config (name, weights)
    for (bb, ds, m, k), group in _group(by_protocol.get("fewshot", []), ("backbone", "dataset", "method",
                                                                         "shots")).items():
        values = [g["scores"]["top1"] for g in group]
        mean, std = mean_std(values)
        row = {"backbone": bb, "dataset": ds, "method": m, "shots": k, "seeds": [g["seed"] for g in group],
               "values": values, "mean": mean, "std": std}
        configs[bb] = group[0].get("backbone_config")
        _beside_published(row, published.find(m, configs[bb], ds, k) if published else [])
        out.fewshot.append(row)
    out.fewshot = _sorted_rows(out.fewshot)
    for bb in dict.fromkeys(r["backbone"] for r in out.fewshot):
        out.datasets[bb] = _order([r["dataset"] for r in out.fewshot if r["backbone"] == bb], PAPER_DATASETS)
    avg_groups: dict[tuple, list[dict]] = {}
    for row in out.fewshot:
        if row["mean"] is not None:
            avg_groups.setdefault((row["backbone"], row["method"], row["shots"]), []).append(row)
    for (bb, m, k), rows in avg_groups.items():
        mean = sum(r["mean"] for r in rows) / len(rows)
        # The std of the average: over seeds of the per-seed dataset average, when every dataset has those seeds.
        seed_sets = {tuple(r["seeds"]) for r in rows}
        std = None
        if len(seed_sets) == 1 and all(v is not None for r in rows for v in r["values"]):
            per_seed = [sum(r["values"][i] for r in rows) / len(rows) for i in range(len(rows[0]["values"]))]
            std = mean_std(per_seed)[1]
        names = [r["dataset"] for r in rows]
        row = {"backbone": bb, "method": m, "shots": k, "datasets": names, "mean": mean, "std": std,
               "complete": len(names) == len(out.datasets[bb])}
        # a published average is over the paper's 11 datasets: only the same 11 stand beside it
        paper = sorted(names) == sorted(PAPER_DATASETS)
        _beside_published(row, published.find(m, configs[bb], AVERAGE, k) if published and paper else [])
        out.fewshot_average.append(row)
    out.fewshot_average = _sorted_rows(out.fewshot_average, "backbone")

    # Domain generalisation: the source and every target, per method.
    for (bb, ds, m, k), group in _group(by_protocol.get("domain", []), ("backbone", "dataset", "method",
                                                                        "shots")).items():
        targets = list(dict.fromkeys(t for g in group for t in g["details"]["targets"]))
        columns = [ds, *targets, "target_average"]
        stats = {c: mean_std([g["scores"].get(c) for g in group]) for c in columns}
        config = group[0].get("backbone_config")
        out.domain.append({"backbone": bb, "dataset": ds, "method": m, "shots": k, "seeds": [g["seed"] for g in group],
                           "columns": columns, "mean": {c: s[0] for c, s in stats.items()},
                           "std": {c: s[1] for c, s in stats.items()},
                           "published": {c: [_figure(stats[c][0], f) for f in published.find(m, config, c, k)]
                                         for c in columns[:-1]} if published else {}})
    out.domain = _sorted_rows(out.domain)

    # Base-to-new: base and new over seeds, H of the two means.
    for (bb, ds, m, k), group in _group(by_protocol.get("base2new", []), ("backbone", "dataset", "method",
                                                                          "shots")).items():
        row = {"backbone": bb, "dataset": ds, "method": m, "shots": k, "seeds": [g["seed"] for g in group]}
        config = group[0].get("backbone_config")
        row["published"] = {}
        for part in ("base", "new"):
            row[part], row[f"{part}_std"] = mean_std([g["scores"].get(part) for g in group])
            figures = published.find(m, config, ds, k, f"top1_{part}") if published else []
            row["published"][part] = [_figure(row[part], f) for f in figures]
        row["hm"] = _hm(row["base"], row["new"])
        out.base2new.append(row)
    out.base2new = _sorted_rows(out.base2new)
    b2n_groups: dict[tuple, list[dict]] = {}
    for row in out.base2new:
        b2n_groups.setdefault((row["backbone"], row["method"], row["shots"]), []).append(row)
    for (bb, m, k), rows in b2n_groups.items():
        base = mean_std([r["base"] for r in rows])[0]
        new = mean_std([r["new"] for r in rows])[0]
        out.base2new_average.append({"backbone": bb, "method": m, "shots": k, "datasets": [r["dataset"] for r in rows],
                                     "base": base, "new": new, "hm": _hm(base, new)})
    out.base2new_average = _sorted_rows(out.base2new_average, "backbone")
    return out


def _hm(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else harmonic_mean(a, b)


def summarise_records(results_dir: str | Path, only: set[str] | None = None,
                      published: PublishedIndex | None = None) -> Summary:
    return summarise(*load_records(results_dir, only), published=published)


def published_index(table: str | Path | None = None) -> PublishedIndex:
    """The shipped published figures (or those of ``table``), indexed by cell."""
    return PublishedIndex(load_published(table))


# -- Markdown -----------------------------------------------------------------------------------------------
def _fmt(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _off(row: dict) -> str:
    return f" {OFF_MARK}" if row.get("off") else ""


def _published_table(title: str, rows: list[dict], first: str = "dataset") -> list[str]:
    """Our results beside the published figures, one line per figure (a cell that two sources give gets two
    lines, each with its source), for the cells that have one; the sources numbered below.

    ``rows``: dicts with dataset (the column shown first, named ``first``), method, shots, mean, std and
    ``published`` (the figures, as :func:`_figure` makes them).
    """
    rows = [r for r in rows if r.get("published")]
    if not rows:
        return []
    rows = sorted(rows, key=lambda r: (r["dataset"] == AVERAGE, r["shots"]))
    sources = list(dict.fromkeys(f["source"] for r in rows for f in r["published"]))
    body = [[r["dataset"], r["method"], str(r["shots"]), _fmt(r["mean"], r["std"]), f["printed"],
             "–" if f["difference"] is None else f"{f['difference']:+.2f}" + (f" {OFF_MARK}" if f["off"] else ""),
             f"[{sources.index(f['source']) + 1}]"] for r in rows for f in r["published"]]
    off = sum(bool(r["off"]) for r in rows)
    return [f"### Beside the published figures, {title}", "",
            f"Difference = ours - published; {OFF_MARK}: more than {OFF_BY:g} point away ({off} of {len(rows)} "
            "cells are that far from every figure given for them). Published figures are single numbers from "
            "their sources (their seeds and protocol, which may differ from this sweep's); where two sources "
            "give a cell different figures, both are listed.", "",
            *_table([first, "method", "shots", "ours", "published", "difference", "source"], body), "",
            *(f"[{i}] {src}" for i, src in enumerate(sources, start=1)), ""]


def _domain_beside(group: list[dict]) -> list[dict]:
    """Domain rows as rows of the published table: one per (method, source or target) with figures."""
    return [{"dataset": c, "method": r["method"], "shots": r["shots"], "mean": r["mean"][c], "std": r["std"][c],
             "published": figures, "off": bool(figures) and all(f["off"] for f in figures)}
            for r in group for c, figures in r.get("published", {}).items()]


def _base2new_beside(rows: list[dict]) -> list[dict]:
    return [{"dataset": f"{r['dataset']} ({part})", "method": r["method"], "shots": r["shots"], "mean": r[part],
             "std": r[f"{part}_std"], "published": figures, "off": bool(figures) and all(f["off"] for f in figures)}
            for r in rows for part, figures in r.get("published", {}).items()]


def average_label(n: int) -> str:
    return f"Average ({n} dataset{'s' if n != 1 else ''})"


def render_markdown(s: Summary) -> str:
    lines: list[str] = []
    for bb, datasets in s.datasets.items():
        lines += [f"## Few-shot top-1 (%), {bb}", "",
                  f"Mean ± std over seeds. The average is over the {len(datasets)} dataset(s) present: "
                  f"{', '.join(datasets)}" + ("." if len(datasets) == len(PAPER_DATASETS) else
                                              f" (the paper averages {len(PAPER_DATASETS)})."), ""]
        rows = [r for r in s.fewshot if r["backbone"] == bb]
        avgs = {(a["method"], a["shots"]): a for a in s.fewshot_average if a["backbone"] == bb}
        partial = False
        for k in sorted({r["shots"] for r in rows}):
            methods = _order([r["method"] for r in rows if r["shots"] == k], PAPER_METHODS)
            cells = {(r["dataset"], r["method"]): r for r in rows if r["shots"] == k}
            body = []
            for m in methods:
                line = [m] + [_fmt(cells[(d, m)]["mean"], cells[(d, m)]["std"]) + _off(cells[(d, m)])
                              if (d, m) in cells else "–" for d in datasets]
                a = avgs.get((m, k))
                mark = "" if a is None or a["complete"] else "*"
                partial |= bool(mark)
                line.append(_fmt(a["mean"], a["std"]) + mark + _off(a) if a else "–")
                body.append(line)
            lines += [f"**{k} shot{'s' if k > 1 else ''}**", ""]
            lines += _table(["method", *datasets, average_label(len(datasets))], body) + [""]
        if partial:
            lines += ["\\* averaged over fewer datasets (those with results for this method and shot count; see "
                      "report.json).", ""]
        lines += _published_table(bb, rows + [{**a, "dataset": AVERAGE} for a in avgs.values()])
    for bb in dict.fromkeys(r["backbone"] for r in s.domain):
        rows = [r for r in s.domain if r["backbone"] == bb]
        for (ds, k) in dict.fromkeys((r["dataset"], r["shots"]) for r in rows):
            group = [r for r in rows if (r["dataset"], r["shots"]) == (ds, k)]
            columns = group[0]["columns"]
            lines += [f"## Domain generalisation top-1 (%), {bb}: {k}-shot {ds} -> targets", ""]
            header = ["method", f"{ds} (source)", *columns[1:-1], "target average"]
            lines += _table(header, [[r["method"]] + [_fmt(r["mean"].get(c), r["std"].get(c)) for c in columns]
                                     for r in group]) + [""]
            lines += _published_table(f"{bb}: {k}-shot {ds} -> targets", _domain_beside(group), "dataset")
    for bb in dict.fromkeys(r["backbone"] for r in s.base2new):
        rows = [r for r in s.base2new if r["backbone"] == bb]
        lines += [f"## Base-to-new generalisation top-1 (%), {bb}", "",
                  "Base: base-class test images among the base classes; new: new-class test images among the new "
                  "classes; H: harmonic mean of the mean base and mean new accuracies. TaskRes has no residual for "
                  "new classes and uses the frozen text base there; a method with no rule for unseen classes "
                  "shows –.", ""]
        body = [[r["dataset"], r["method"], f"{r['shots']}", _fmt(r["base"], r["base_std"]),
                 _fmt(r["new"], r["new_std"]), _fmt(r["hm"])] for r in rows]
        body += [[f"average ({len(a['datasets'])})", a["method"], f"{a['shots']}", _fmt(a["base"]), _fmt(a["new"]),
                  _fmt(a["hm"])] for a in s.base2new_average if a["backbone"] == bb]
        lines += _table(["dataset", "method", "shots", "base", "new", "H"], body) + [""]
        lines += _published_table(f"{bb}: base-to-new", _base2new_beside(rows), "dataset (part)")
    if s.failed:
        shown = s.failed[:MAX_FAILED_LISTED]  # a backbone that cannot load fails every cell alike
        lines += [f"## Failed cells ({len(s.failed)})", ""] + [f"- {f['name']}: {f['error']}" for f in shown]
        if len(s.failed) > len(shown):
            lines.append(f"- ... and {len(s.failed) - len(shown)} more (see the error records)")
        lines.append("")
    return "\n".join(lines)


# -- CSV ----------------------------------------------------------------------------------------------------
CSV_COLUMNS = ("protocol", "backbone", "dataset", "method", "shots", "metric", "mean", "std", "n_seeds", "seeds",
               "note", "published", "difference", "published_source")


def csv_rows(s: Summary) -> list[dict]:
    rows = []
    for r in s.fewshot:
        rows.append({"protocol": "fewshot", "backbone": r["backbone"], "dataset": r["dataset"], "method": r["method"],
                     "shots": r["shots"], "metric": "top1", "mean": r["mean"], "std": r["std"],
                     "n_seeds": len(r["seeds"]), "seeds": " ".join(map(str, r["seeds"])), "note": "",
                     **_published_columns(r)})
    for a in s.fewshot_average:
        rows.append({"protocol": "fewshot", "backbone": a["backbone"], "dataset": "average", "method": a["method"],
                     "shots": a["shots"], "metric": "top1", "mean": a["mean"], "std": a["std"], "n_seeds": "",
                     "seeds": "", "note": "average over " + " ".join(a["datasets"]), **_published_columns(a)})
    for r in s.domain:
        for c in r["columns"]:
            rows.append({"protocol": "domain", "backbone": r["backbone"], "dataset": r["dataset"],
                         "method": r["method"], "shots": r["shots"], "metric": c, "mean": r["mean"][c],
                         "std": r["std"][c], "n_seeds": len(r["seeds"]), "seeds": " ".join(map(str, r["seeds"])),
                         "note": "source" if c == r["dataset"] else ""})
    for r in s.base2new:
        for part in ("base", "new", "hm"):
            rows.append({"protocol": "base2new", "backbone": r["backbone"], "dataset": r["dataset"],
                         "method": r["method"], "shots": r["shots"], "metric": part, "mean": r[part],
                         "std": r.get(f"{part}_std"), "n_seeds": len(r["seeds"]),
                         "seeds": " ".join(map(str, r["seeds"])),
                         "note": "harmonic mean of the means" if part == "hm" else ""})
    for a in s.base2new_average:
        for part in ("base", "new", "hm"):
            rows.append({"protocol": "base2new", "backbone": a["backbone"], "dataset": "average",
                         "method": a["method"], "shots": a["shots"], "metric": part, "mean": a[part], "std": None,
                         "n_seeds": "", "seeds": "", "note": "average over " + " ".join(a["datasets"])})
    return rows


def _published_columns(row: dict) -> dict:
    """The figures of a row for the CSV: one value each, several joined by " | " in the sources' order."""
    figures = row.get("published") or []
    join = lambda key, fmt: " | ".join(fmt(f[key]) for f in figures) if figures else None  # noqa: E731
    return {"published": join("printed", str),
            "difference": join("difference", lambda d: "" if d is None else f"{d:.4f}"),
            "published_source": join("source", str)}


def write_csv(s: Summary, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in csv_rows(s):
            writer.writerow({k: ("" if v is None else (f"{v:.4f}" if isinstance(v, float) else v))
                             for k, v in row.items()})


# -- figure -------------------------------------------------------------------------------------------------
def _method_styles(methods: list[str]) -> dict[str, dict]:
    """The same colour for a method in every figure: its place in the paper's list, then the others."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    ordered = _order(methods, PAPER_METHODS)
    extras = [m for m in ordered if m not in PAPER_METHODS]
    styles = {}
    for m in ordered:
        i = PAPER_METHODS.index(m) if m in PAPER_METHODS else len(PAPER_METHODS) + extras.index(m)
        styles[m] = {"color": palette[i % len(palette)], "marker": "os^Dv<>phX*P"[i % 12],
                     # zero-shot uses no shots: a flat dashed reference; past 10 methods colours repeat, dotted
                     "linestyle": "--" if m == "zeroshot" else ("-" if i < len(palette) else ":"),
                     "linewidth": 2.4 if m == "taskres" else 1.5}
    return styles


def plot_fewshot(s: Summary, backbone: str):
    """The paper-style figure for one backbone: the average panel first, then one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    datasets = s.datasets[backbone]
    rows = [r for r in s.fewshot if r["backbone"] == backbone and r["mean"] is not None]
    avgs = [a for a in s.fewshot_average if a["backbone"] == backbone]
    panels = [(average_label(len(datasets)), avgs)] + [(d, [r for r in rows if r["dataset"] == d]) for d in datasets]
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.6 * ncols, 3.0 * nrows + 0.6), layout="constrained")
    styles = _method_styles([r["method"] for r in rows])
    shots = sorted({r["shots"] for r in rows})
    for i, (title, data) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for m, style in styles.items():
            pts = sorted((r["shots"], r["mean"], r["std"]) for r in data if r["method"] == m)
            if not pts:
                continue
            x, y, err = zip(*pts)
            ax.plot(x, y, label=m, markersize=4, zorder=3 if m in ("zeroshot", "taskres") else 2, **style)
            if all(e is not None for e in err):
                ax.fill_between(x, [a - e for a, e in zip(y, err)], [a + e for a, e in zip(y, err)],
                                color=style["color"], alpha=0.12, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.minorticks_off()
        ax.set_title(title, fontsize=10, fontweight="bold" if i == 0 else "normal")
        ax.set_xlabel("shots per class", fontsize=8)
        ax.set_ylabel("top-1 (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 7), fontsize=8, frameon=False)
    fig.suptitle(f"Few-shot top-1, {backbone}", fontsize=11)
    return fig, [title for title, _ in panels]


def save_figure(fig, panels: list[str], path_stem: Path, formats=FIGURE_FORMATS) -> list[Path]:
    out = []
    for fmt in formats:
        path = path_stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            # PNG text chunk: the panel titles, so a reader (or a test) can check the layout without pixels.
            meta = {"Software": "taskres report", "taskres:panels": json.dumps(panels)} if fmt == "png" else None
            fig.savefig(tmp, format=fmt, dpi=130, metadata=meta)
        out.append(path)
    return out


# -- the whole report ---------------------------------------------------------------------------------------
@dataclass
class ReportResult:
    summary: Summary
    files: list[Path]
    figures: dict[str, list[str]]  # figure file (png) -> its panel titles
    markdown: str


def write_report(results_dir: str | Path, out_dir: str | Path | None = None, formats=FIGURE_FORMATS,
                 figures: bool = True, only: set[str] | None = None,
                 published: str | Path | bool | None = True) -> ReportResult:
    """Tables and figures of the records in ``results_dir`` (only those named in ``only``, if given).

    ``published``: True for the shipped published figures beside the results, a path for another table in
    the same format, False/None for none.
    """
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir else results_dir / "report"
    index = published_index(None if published is True else published) if published else None
    summary = summarise_records(results_dir, only, published=index)
    markdown = render_markdown(summary)
    files = []
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(f"# Results of {results_dir}\n\n{markdown}")
    files.append(out_dir / "report.md")
    write_csv(summary, out_dir / "report.csv")
    files.append(out_dir / "report.csv")
    write_json_atomic(out_dir / "report.json", summary.to_dict())
    files.append(out_dir / "report.json")
    drawn = {}
    if figures:
        for bb in summary.datasets:
            fig, panels = plot_fewshot(summary, bb)
            paths = save_figure(fig, panels, out_dir / f"fewshot__{safe_name(bb)}", formats)  # a label from a record
            files += paths
            drawn[str(paths[0])] = panels
    files.append(write_sweep_html(out_dir / "report.html", f"Results of {results_dir}", markdown, files,
                                  summary.num_records))
    return ReportResult(summary, files, drawn, markdown)
