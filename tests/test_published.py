"""Published figures: the shipped table parses and is clean, ``taskres published`` filters it, and ``taskres
report`` puts the figures beside the results whose cells match."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from taskres import cli
from taskres.datasets import DATASETS, PAPER_DATASETS
from taskres.methods import METHODS
from taskres.published import COLUMNS, TABLE, PublishedIndex, load_published, select
from taskres.report import write_report


def test_shipped_table_parses_with_a_source_for_every_row_and_no_cell_twice():
    rows = load_published()
    assert len(rows) >= 170
    assert all(r.source.strip() for r in rows)
    assert len({r.cell for r in rows}) == len(rows)
    assert {r.method for r in rows} <= set(METHODS) and {r.dataset for r in rows} <= set(DATASETS) | {"average"}
    # Tip-Adapter's exp.log: every paper dataset at every shot count for its three methods, zero-shot once each.
    for method in ("clip_adapter", "tip_adapter", "tip_adapter_f"):
        assert {(r.dataset, r.shots) for r in rows if r.method == method and r.backbone == "RN50"} == {
            (d, k) for d in PAPER_DATASETS for k in (1, 2, 4, 8, 16)}
    assert {r.dataset for r in rows if r.method == "zeroshot" and r.shots == 0} == set(PAPER_DATASETS)
    # The figures REFERENCE.md quotes from the TaskRes paper (RN50, 16-shot ImageNet).
    by_cell = {r.cell: r.top1 for r in rows}
    assert by_cell[("taskres", "rn50", "imagenet", 16)] == 64.75
    assert by_cell[("coop", "rn50", "imagenet", 16)] == 62.95
    assert by_cell[("clip_adapter", "rn50", "imagenet", 16)] == 63.59
    with open(TABLE, newline="") as fh:  # the raw file: the header is what the loader insists on
        assert tuple(next(csv.reader(fh))) == COLUMNS


@pytest.mark.parametrize("row, message", [
    ("taskres,RN50,imagenet,16,64.75,again", "already given on line 2"),
    ("taskress,RN50,imagenet,16,64.75,x", "unknown method 'taskress'"),
    ("taskres,RN50,imagenette,16,64.75,x", "unknown dataset 'imagenette'"),
    ("taskres,RN50,dtd,16,164.75,x", "top1 a percentage"),
    ("taskres,RN50,dtd,sixteen,64.75,x", "shots must be an integer"),
    ("taskres,RN50,dtd,16,64.75,", "needs its backbone and its source"),
    ("taskres,RN50,dtd,16", "expected 6 fields"),
])
def test_a_bad_table_fails_naming_the_file_and_line(tmp_path, row, message):
    table = tmp_path / "mine.csv"
    table.write_text(",".join(COLUMNS) + "\ntaskres,RN50,imagenet,16,64.75,paper\n" + row + "\n")
    with pytest.raises(ValueError, match=message) as err:
        load_published(table)
    assert f"{table}:3" in str(err.value)


def test_published_cli_prints_the_reference_figure(capsys):
    assert cli.main(["published", "--method", "taskres", "--dataset", "imagenet", "--backbone", "RN50",
                     "--shots", "16"]) == 0
    out = capsys.readouterr().out.splitlines()
    (row,) = [line for line in out if line.startswith("taskres ")]
    assert row.split()[:5] == ["taskres", "RN50", "imagenet", "16", "64.75"]
    assert any("2211.10277" in line for line in out)  # its source is printed with it
    # Filters combine; a zero-shot figure (no shots) stands beside every shot count; ViT-B/16 spelling works.
    assert cli.main(["published", "--dataset", "eurosat", "--shots", "4"]) == 0
    methods = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:] if line and line[0] != "["]
    assert methods == ["zeroshot", "clip_adapter", "tip_adapter", "tip_adapter_f"]
    assert cli.main(["published", "--backbone", "ViT-B/16", "--method", "nothing"]) == 1


def fake_record(results: Path, backbone: str, pretrained: str, dataset: str, method: str, shots: int, seed: int,
                top1: float) -> None:
    """A record as a bench writes it, with the fields the report reads."""
    name = f"{backbone}-{pretrained}__{dataset}__{method}__{shots}shot__seed{seed}"
    record = {"format": 1, "name": name, "protocol": "fewshot", "backbone": f"{backbone}-{pretrained}",
              "dataset": dataset, "method": method, "shots": shots, "seed": seed, "status": "ok",
              "backbone_config": {"name": backbone, "pretrained": pretrained, "device": "cpu", "precision": "fp32"},
              "scores": {"top1": top1}, "details": {}}
    (results / "records").mkdir(parents=True, exist_ok=True)
    (results / "records" / f"{name}.json").write_text(json.dumps(record))


def test_report_puts_published_figures_beside_matching_cells(tmp_path, capsys):
    res = tmp_path / "res"
    for seed, (ours_taskres, ours_coop) in enumerate([(64.0, 60.0), (64.5, 59.5), (64.25, 60.5)], start=1):
        fake_record(res, "RN50", "openai", "imagenet", "taskres", 16, seed, ours_taskres)  # mean 64.25: 0.5 away
        fake_record(res, "RN50", "openai", "imagenet", "coop", 16, seed, ours_coop)  # mean 60.0: 2.95 away
        fake_record(res, "RN50", "openai", "imagenet", "zeroshot", 16, seed, 60.0)  # beside the no-shot 60.32
        fake_record(res, "RN50", "openai", "dtd", "taskres", 16, seed, 50.0)  # nothing published for it
        fake_record(res, "RN50", "none", "imagenet", "taskres", 16, seed, 1.0)  # random weights: not comparable
    assert cli.main(["report", str(res), "--no-figure"]) == 0
    out = capsys.readouterr().out
    assert "### Beside the published figures, RN50-openai" in out
    assert "RN50-none" in out and "Beside the published figures, RN50-none" not in out
    side = out.split("### Beside the published figures, RN50-openai")[1].split("\n[1] ")[0]
    assert "| imagenet | taskres | 16 | 64.25 ± 0.20 | 64.75 | -0.50 | [" in side
    assert "| imagenet | coop | 16 | 60.00 ± 0.41 | 62.95 | -2.95 (!) | [" in side
    assert "| imagenet | zeroshot | 16 | 60.00 ± 0.00 | 60.32 | -0.32 | [" in side
    assert "| dtd |" not in side  # no published figure, no row
    assert "(1 of 3 cells)" in out and "2211.10277" in out and "Tip-Adapter exp.log" in out
    assert "60.00 ± 0.41 (!)" in out  # the wide table marks the far cell too

    with open(res / "report" / "report.csv") as fh:
        rows = {(r["backbone"], r["dataset"], r["method"]): r for r in csv.DictReader(fh)}
    assert float(rows[("RN50-openai", "imagenet", "coop")]["published"]) == 62.95
    assert float(rows[("RN50-openai", "imagenet", "coop")]["difference"]) == pytest.approx(-2.95)
    assert rows[("RN50-openai", "dtd", "taskres")]["published"] == ""
    assert rows[("RN50-none", "imagenet", "taskres")]["published"] == ""
    saved = json.loads((res / "report" / "report.json").read_text())
    (coop,) = [r for r in saved["fewshot"] if r["method"] == "coop"]
    assert coop["off"] is True and "2211.10277" in coop["published_source"]

    # --no-published: the plain report.
    assert cli.main(["report", str(res), "--no-figure", "--no-published"]) == 0
    plain = capsys.readouterr().out
    assert "Beside the published figures" not in plain and "(!)" not in plain


def test_a_published_average_stands_beside_the_11_dataset_average_only(tmp_path):
    table = tmp_path / "averages.csv"
    table.write_text(",".join(COLUMNS) + "\ntaskres,RN50,average,16,70.00,a paper's average table\n")
    assert select(load_published(table), dataset="average", shots=16)[0].top1 == 70.0
    res = tmp_path / "res"
    for i, dataset in enumerate(PAPER_DATASETS):
        fake_record(res, "RN50", "openai", dataset, "taskres", 16, 1, 60.0 + i)  # average 65.0
    fake_record(res, "RN50", "default", "dtd", "taskres", 8, 1, 50.0)  # 8 shots: one dataset, no average figure
    summary = write_report(res, tmp_path / "out", figures=False, published=table).summary
    by_shots = {a["shots"]: a for a in summary.fewshot_average}
    assert by_shots[16]["published"] == 70.0 and by_shots[16]["difference"] == pytest.approx(-5.0)
    assert by_shots[16]["off"] is True
    assert by_shots[8]["published"] is None
    assert PublishedIndex(load_published(table)).find("taskres", {"name": "rn50", "pretrained": "openai"},
                                                      "average", 16) is not None
