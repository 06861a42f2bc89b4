"""Published figures: the shipped table parses and is clean, ``taskres published`` filters it, and ``taskres
report`` puts the figures beside the results whose cells match."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from taskres import cli
from taskres.datasets import DATASETS, PAPER_DATASETS
from taskres.methods import METHODS
from taskres.published import COLUMNS, TABLE, PublishedIndex, load_published, select
from taskres.reports.tables import write_report


HEADER = ",".join(COLUMNS)


def line(method="taskres", dataset="imagenet", shots="16", value="64.75", source="a paper", table="Table 1",
         metric="top1", backbone="RN50") -> str:
    """One row of a published table in the shipped format."""
    return ",".join([source, "read here", table, method, "TaskRes", backbone, dataset, shots, metric, value, ""])


def test_shipped_table_parses_with_a_source_for_every_row_and_no_figure_twice():
    rows = load_published()
    assert len(rows) >= 640  # Tip-Adapter's exp.log and the TaskRes paper (178), shared/published (470)
    assert all(r.source.strip() and r.table.strip() and r.provenance.strip() for r in rows)
    assert len({(*r.cell, r.source, r.table) for r in rows}) == len(rows)
    assert {r.method for r in rows} <= set(METHODS) and {r.dataset for r in rows} <= set(DATASETS) | {"average"}
    # Tip-Adapter's exp.log: every paper dataset at every shot count for its three methods, zero-shot once each.
    for method in ("clip_adapter", "tip_adapter", "tip_adapter_f"):
        assert {(r.dataset, r.shots) for r in rows if r.method == method and r.backbone == "RN50"
                and "exp.log" in r.table and "Tip-Adapter" in r.source} == {
            (d, k) for d in PAPER_DATASETS for k in (1, 2, 4, 8, 16)}
    assert {r.dataset for r in rows if r.method == "zeroshot" and r.shots == 0} >= set(PAPER_DATASETS)
    # The figures REFERENCE.md quotes from the TaskRes paper (RN50, 16-shot ImageNet), and those the issue names.
    def values(method, dataset, shots, backbone="RN50"):
        return sorted(r.value for r in select(rows, method=method, dataset=dataset, shots=shots, backbone=backbone)
                      if r.shots == shots)
    assert 64.75 in values("taskres", "imagenet", 16) and 62.95 in values("coop", "imagenet", 16)
    assert 63.59 in values("clip_adapter", "imagenet", 16)
    assert values("gda", "dtd", 16) == [66.51]
    assert values("taskres", "imagenet_sketch", 16) == [35.54]
    # Two sources that disagree are both kept: the TaskRes paper's 64.75 and a later paper's rerun.
    assert sorted(set(values("taskres", "imagenet", 16))) == [64.75, 65.41]
    # ... and the report shows each source's figure once (the later paper prints 65.41 in two tables).
    found = PublishedIndex(rows).find("taskres", {"name": "RN50", "pretrained": "openai"}, "imagenet", 16)
    assert sorted(f.value for f in found) == [64.75, 65.41]
    assert {r.metric for r in rows} == {"top1", "top1_base", "top1_new"}
    with open(TABLE, newline="") as fh:  # the raw file: the header is what the loader insists on
        assert tuple(next(csv.reader(fh))) == COLUMNS


def test_the_shared_table_is_shipped_whole():
    """Every row of the published figures handed to the project is in the shipped table, unchanged."""
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "published" / "published-more.csv"
    if not shared.is_file():
        pytest.skip(f"{shared} is not beside this checkout")
    with open(shared, newline="") as fh, open(TABLE, newline="") as ours:
        theirs, shipped = list(csv.DictReader(fh)), list(csv.DictReader(ours))
    assert all(row in shipped for row in theirs) and len(theirs) >= 470


@pytest.mark.parametrize("row, message", [
    (line(), "already given on line 2"),
    (line(method="taskress"), "unknown method 'taskress'"),
    (line(dataset="imagenette"), "unknown dataset 'imagenette'"),
    (line(value="164.75"), "value a percentage"),
    (line(shots="sixteen"), "shots must be an integer"),
    (line(metric="top5"), "unknown metric 'top5'"),
    (line(source=""), "needs its backbone and its source"),
    ("a paper,read,Table 1,taskres,TaskRes,RN50,dtd,16", "expected 11 fields"),
])
def test_a_bad_table_fails_naming_the_file_and_line(tmp_path, row, message):
    table = tmp_path / "mine.csv"
    table.write_text(HEADER + "\n" + line() + "\n" + row + "\n")
    with pytest.raises(ValueError, match=message) as err:
        load_published(table)
    assert f"{table}:3" in str(err.value)


def test_one_cell_from_two_sources_is_two_figures(tmp_path):
    table = tmp_path / "two.csv"
    table.write_text("\n".join([HEADER, line(), line(value="65.41", source="a later paper")]) + "\n")
    rows = load_published(table)
    found = PublishedIndex(rows).find("taskres", {"name": "RN50", "pretrained": "openai"}, "imagenet", 16)
    assert [(f.value, f.source) for f in found] == [(64.75, "a paper"), (65.41, "a later paper")]


def test_published_cli_prints_the_reference_figure(capsys):
    assert cli.main(["published", "--method", "taskres", "--dataset", "imagenet", "--backbone", "RN50",
                     "--shots", "16"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out if line.startswith("taskres ")]
    assert ["taskres", "RN50", "imagenet", "16", "top1", "64.75"] in [r[:6] for r in rows]
    assert ["taskres", "RN50", "imagenet", "16", "top1", "65.41"] in [r[:6] for r in rows]  # a later rerun
    assert any("2211.10277" in line for line in out) and any("NeurIPS 2024" in line for line in out)
    # The two figures the issue names, each printed with its source.
    for args, value, source in ((["--method", "gda", "--dataset", "dtd"], "66.51", "mrflogs/ICLR24, exp.log"),
                                (["--method", "taskres", "--dataset", "imagenet_sketch"], "35.54", "Table 2")):
        assert cli.main(["published", *args, "--backbone", "RN50", "--shots", "16"]) == 0
        out = capsys.readouterr().out.splitlines()
        (row,) = [line.split() for line in out if line.startswith(args[1] + " ")]
        assert row[5] == value and row[6] == "[1]" and source in out[-1] and out[-1].startswith("[1] ")
    # Filters combine; a zero-shot figure (no shots) stands beside every shot count; ViT-B/16 spelling works.
    assert cli.main(["published", "--dataset", "eurosat", "--shots", "4", "--backbone", "RN50"]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    methods = {line.split()[0] for line in lines if line and line[0] != "["}
    assert methods == {"zeroshot", "clip_adapter", "tip_adapter", "tip_adapter_f", "taskres", "gda"}
    assert all(line.split()[3] in ("-", "4") for line in lines if line and line[0] != "[")
    assert cli.main(["published", "--backbone", "ViT-B/16", "--method", "nothing"]) == 1
    assert cli.main(["published", "--method", "gda", "--metric", "top1_new", "--dataset", "dtd"]) == 0
    assert "top1_new" in capsys.readouterr().out


def fake_record(results: Path, backbone: str, pretrained: str, dataset: str, method: str, shots: int, seed: int,
                top1: float, protocol: str = "fewshot", scores: dict | None = None, details: dict | None = None) -> None:
    """A record as a bench writes it, with the fields the report reads."""
    name = f"{backbone}-{pretrained}__{protocol}__{dataset}__{method}__{shots}shot__seed{seed}"
    record = {"format": 1, "name": name, "protocol": protocol, "backbone": f"{backbone}-{pretrained}",
              "dataset": dataset, "method": method, "shots": shots, "seed": seed, "status": "ok",
              "backbone_config": {"name": backbone, "pretrained": pretrained, "device": "cpu", "precision": "fp32"},
              "scores": scores or {"top1": top1}, "details": details or {}}
    (results / "records").mkdir(parents=True, exist_ok=True)
    (results / "records" / f"{name}.json").write_text(json.dumps(record))


def small_table(path: Path) -> Path:
    """Figures of every kind the report places: two sources for one cell, no-shot, domain, base-to-new."""
    path.write_text("\n".join([
        HEADER, line(source="TaskRes paper"), line(value="65.41", source="a later rerun"),
        line(method="coop", value="62.95", source="TaskRes paper"),
        line(method="zeroshot", shots="0", value="60.32", source="Tip-Adapter exp.log"),
        line(dataset="imagenet_sketch", value="35.54", source="a later rerun"),
        line(method="gda", dataset="dtd", metric="top1_base", value="80.63", source="GDA log"),
        line(method="gda", dataset="dtd", metric="top1_new", value="59.82", source="GDA log")]) + "\n")
    return path


def test_report_puts_published_figures_beside_matching_cells(tmp_path, capsys):
    table = small_table(tmp_path / "figures.csv")
    res = tmp_path / "res"
    for seed, (ours_taskres, ours_coop) in enumerate([(64.0, 60.0), (64.5, 59.5), (64.25, 60.5)], start=1):
        fake_record(res, "RN50", "openai", "imagenet", "taskres", 16, seed, ours_taskres)  # mean 64.25: 0.5 away
        fake_record(res, "RN50", "openai", "imagenet", "coop", 16, seed, ours_coop)  # mean 60.0: 2.95 away
        fake_record(res, "RN50", "openai", "imagenet", "zeroshot", 16, seed, 60.0)  # beside the no-shot 60.32
        fake_record(res, "RN50", "openai", "dtd", "taskres", 16, seed, 50.0)  # nothing published for it
        fake_record(res, "RN50", "none", "imagenet", "taskres", 16, seed, 1.0)  # random weights: not comparable
        fake_record(res, "RN50", "openai", "imagenet", "taskres", 16, seed, 0, protocol="domain",
                    scores={"imagenet": 64.0, "imagenet_sketch": 36.0, "target_average": 36.0},
                    details={"targets": ["imagenet_sketch"]})
        fake_record(res, "RN50", "openai", "dtd", "gda", 16, seed, 0, protocol="base2new",
                    scores={"base": 80.0, "new": 62.0})
    assert cli.main(["report", str(res), "--no-figure", "--published", str(table)]) == 0
    out = capsys.readouterr().out
    assert "### Beside the published figures, RN50-openai" in out
    assert "RN50-none" in out and "Beside the published figures, RN50-none" not in out
    section = out.split("### Beside the published figures, RN50-openai\n")[1].split("### ")[0]
    side = section.split("\n[1] ")[0]

    def source_of(row: str) -> str:
        """The source named beside a line of the published table that starts with ``row``."""
        (number,) = re.findall(re.escape(row) + r" \| \[(\d+)\] \|", side)
        return re.search(rf"^\[{number}\] (.*)$", section, re.M).group(1)

    # Two sources for one cell: two lines, each with its own source; the cell is not far from both.
    assert source_of("| imagenet | taskres | 16 | 64.25 ± 0.20 | 64.75 | -0.50") == "TaskRes paper; Table 1"
    assert source_of("| imagenet | taskres | 16 | 64.25 ± 0.20 | 65.41 | -1.16 (!)") == "a later rerun; Table 1"
    assert source_of("| imagenet | coop | 16 | 60.00 ± 0.41 | 62.95 | -2.95 (!)") == "TaskRes paper; Table 1"
    assert source_of("| imagenet | zeroshot | 16 | 60.00 ± 0.00 | 60.32 | -0.32") == "Tip-Adapter exp.log; Table 1"
    assert "| dtd |" not in side  # no published figure, no row
    assert "(1 of 3 cells are that far" in out
    assert "60.00 ± 0.41 (!)" in out and "64.25 ± 0.20 (!)" not in out  # the wide table marks the far cell only
    # Domain generalisation and base-to-new figures stand beside their columns too.
    dg = out.split("### Beside the published figures, RN50-openai: 16-shot imagenet -> targets")[1]
    assert "| imagenet_sketch | taskres | 16 | 36.00 ± 0.00 | 35.54 | +0.46 | [" in dg
    b2n = out.split("### Beside the published figures, RN50-openai: base-to-new")[1]
    assert "| dtd (base) | gda | 16 | 80.00 ± 0.00 | 80.63 | -0.63 | [" in b2n
    assert "| dtd (new) | gda | 16 | 62.00 ± 0.00 | 59.82 | +2.18 (!) | [" in b2n

    with open(res / "report" / "report.csv") as fh:
        rows = {(r["protocol"], r["backbone"], r["dataset"], r["method"]): r for r in csv.DictReader(fh)}
    coop = rows[("fewshot", "RN50-openai", "imagenet", "coop")]
    assert float(coop["published"]) == 62.95 and float(coop["difference"]) == pytest.approx(-2.95)
    both = rows[("fewshot", "RN50-openai", "imagenet", "taskres")]
    assert both["published"] == "64.75 | 65.41" and both["published_source"].count(" | ") == 1
    assert rows[("fewshot", "RN50-openai", "dtd", "taskres")]["published"] == ""
    assert rows[("fewshot", "RN50-none", "imagenet", "taskres")]["published"] == ""
    saved = json.loads((res / "report" / "report.json").read_text())
    (coop,) = [r for r in saved["fewshot"] if r["method"] == "coop"]
    assert coop["off"] is True and coop["published"][0]["source"] == "TaskRes paper; Table 1"

    # --no-published: the plain report.
    assert cli.main(["report", str(res), "--no-figure", "--no-published"]) == 0
    plain = capsys.readouterr().out
    assert "Beside the published figures" not in plain and "(!)" not in plain


def test_the_shipped_figures_stand_beside_a_report_by_default(tmp_path, capsys):
    res = tmp_path / "res"
    fake_record(res, "RN50", "openai", "imagenet", "taskres", 16, 1, 64.0)
    assert cli.main(["report", str(res), "--no-figure"]) == 0
    out = capsys.readouterr().out
    assert "| imagenet | taskres | 16 | 64.00 | 64.75 | -0.75 | [" in out and "2211.10277" in out


def test_a_published_average_stands_beside_the_11_dataset_average_only(tmp_path):
    table = tmp_path / "averages.csv"
    table.write_text(HEADER + "\n" + line(dataset="average", value="70.00", source="a paper's average table") + "\n")
    assert select(load_published(table), dataset="average", shots=16)[0].value == 70.0
    res = tmp_path / "res"
    for i, dataset in enumerate(PAPER_DATASETS):
        fake_record(res, "RN50", "openai", dataset, "taskres", 16, 1, 60.0 + i)  # average 65.0
    fake_record(res, "RN50", "default", "dtd", "taskres", 8, 1, 50.0)  # 8 shots: one dataset, no average figure
    summary = write_report(res, tmp_path / "out", figures=False, published=table).summary
    by_shots = {a["shots"]: a for a in summary.fewshot_average}
    (figure,) = by_shots[16]["published"]
    assert figure["value"] == 70.0 and figure["difference"] == pytest.approx(-5.0)
    assert by_shots[16]["off"] is True
    assert by_shots[8]["published"] == []
    assert PublishedIndex(load_published(table)).find("taskres", {"name": "rn50", "pretrained": "openai"},
                                                      "average", 16)
