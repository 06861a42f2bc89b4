"""taskres report: numbers equal the per-cell metrics' mean and std, the figure has the paper's panels."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_MODEL, make_coop_dataset
from test_bench import FAST, make_mixed_folder

from taskres import bench, cli
from taskres.cli.bench import sweep_from_args
from taskres.reports.tables import load_records, plot_fewshot, summarise_records, write_report


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A finished sweep: 2 datasets x 2 shot counts x 2 seeds x 2 methods."""
    root = tmp_path_factory.mktemp("report")
    coop = make_coop_dataset(root / "coop", per_class=(8, 3, 10), seed=5)
    mixed = make_mixed_folder(root / "mixed")
    args = cli.build_parser().parse_args([
        "bench", str(root / "res"), "--datasets", "caltech101", str(mixed), "--data-root", str(coop),
        "--shots", "1", "2", "--seeds", "1", "2", "--methods", "zeroshot", "taskres", "--backbone", TINY_MODEL,
        "--pretrained", "none", "--cache-dir", str(root / "cache"), *FAST])
    sweep, _ = sweep_from_args(args)
    summary = bench.run_sweep(sweep, root / "res", progress=False)
    assert summary.ok and len(summary.ran) == 16
    return root / "res"


def per_cell_metrics(results) -> dict[tuple, list[float]]:
    """Straight from the run folders' metrics.json (not the records the report reads), grouped over seeds."""
    groups: dict[tuple, list[float]] = {}
    for path in sorted((results / "runs").glob("*/metrics.json")):
        m = json.loads(path.read_text())
        dataset = path.parent.name.split("__")[1]
        groups.setdefault((dataset, m["method"], m["shots"]), []).append(m["top1"]["test"])
    return groups


def test_report_numbers_are_mean_and_std_over_seeds(results, tmp_path):
    out = tmp_path / "out"
    report = write_report(results, out)
    expected = per_cell_metrics(results)
    assert len(expected) == 8 and all(len(v) == 2 for v in expected.values())
    rows = {(r["dataset"], r["method"], r["shots"]): r for r in report.summary.fewshot}
    assert set(rows) == set(expected)
    for key, values in expected.items():
        assert rows[key]["mean"] == pytest.approx(np.mean(values))
        assert rows[key]["std"] == pytest.approx(np.std(values))  # population std over seeds
    assert any(r["std"] > 0 for r in rows.values()), "seeds never differ: the std check tests nothing"

    # The average panel/column: the mean over the datasets of their means, per method and shots.
    for a in report.summary.fewshot_average:
        means = [np.mean(expected[(d, a["method"], a["shots"])]) for d in ("caltech101", "mixed")]
        assert a["mean"] == pytest.approx(np.mean(means)) and a["datasets"] == ["caltech101", "mixed"]

    # The same numbers in the CSV and JSON files.
    with open(out / "report.csv") as fh:
        table = list(csv.DictReader(fh))
    for row in table:
        if row["dataset"] != "average":
            assert float(row["mean"]) == pytest.approx(np.mean(expected[(row["dataset"], row["method"],
                                                                         int(row["shots"]))]), abs=1e-4)
    assert sum(r["dataset"] == "average" for r in table) == 4
    saved = json.loads((out / "report.json").read_text())
    assert saved["fewshot"] == json.loads(json.dumps(report.summary.fewshot))
    md = (out / "report.md").read_text()
    assert "Average (2 datasets)" in md and "caltech101, mixed" in md and "the paper averages 11" in md


def test_figure_has_one_panel_per_dataset_plus_the_average(results, tmp_path):
    report = write_report(results, tmp_path / "out")
    (png,) = report.figures
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > 400
        panels = json.loads(img.text["taskres:panels"])
    assert panels == ["Average (2 datasets)", "caltech101", "mixed"]
    assert "<svg" in (tmp_path / "out" / "fewshot__test-tiny.svg").read_text()[:500]
    fig, titles = plot_fewshot(report.summary, "test-tiny")
    assert len(fig.axes) == 3 and [ax.get_title() for ax in fig.axes] == titles
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    # one line per method in each panel
    assert all(sorted(line.get_label() for line in ax.get_lines()) == ["taskres", "zeroshot"] for ax in fig.axes)


def test_report_skips_failed_and_flags_partial_averages(results, tmp_path, capsys):
    copy = tmp_path / "res"
    shutil.copytree(results / "records", copy / "records")
    for p in (copy / "records").glob("test-tiny__mixed__taskres__2shot__*.json"):
        record = json.loads(p.read_text())
        p.write_text(json.dumps({**record, "status": "error", "scores": None,
                                 "error": {"type": "TrainingError", "message": "loss became nan"}}))
    ok, failed = load_records(copy)
    assert len(ok) == 14 and len(failed) == 2
    s = summarise_records(copy)
    (avg,) = [a for a in s.fewshot_average if a["method"] == "taskres" and a["shots"] == 2]
    assert avg["datasets"] == ["caltech101"] and not avg["complete"]
    assert cli.main(["report", str(copy), "--no-figure"]) == 0
    out = capsys.readouterr().out
    assert "Failed cells (2)" in out and "loss became nan" in out and "averaged over fewer datasets" in out


def test_report_without_records_fails_in_one_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("taskres: error:") and str(tmp_path) in err


def test_one_seed_has_no_std_and_the_table_shows_no_spread():
    from taskres.reports.tables import _fmt, mean_std

    assert mean_std([71.5]) == (71.5, None)
    assert mean_std([70.0, 72.0]) == (71.0, 1.0)
    assert _fmt(*mean_std([71.5])) == "71.50"  # not "71.50 ± 0.00"
