"""report.html of a run and of a sweep: self-contained, and rendered by a real headless browser.

The browser (chromium) loads each page, must log nothing to its console, must decode every image, and
leaves a screenshot in tests/artifacts/ (run-report.png, sweep-report.png) for a person to look at.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from browser import render
from conftest import TINY_MODEL
from PIL import Image

from taskres.cli import main
from taskres.atomic import write_json_atomic
from taskres.reports.tables import write_report
from taskres.reports.run import render_run_report

FIT = ["--backbone", TINY_MODEL, "--pretrained", "none", "--shots", "2", "--views", "2", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, class_folder):
    out = tmp_path_factory.mktemp("html") / "run"
    assert main(["fit", "--dataset", str(class_folder), *FIT, "--set", "epochs=2", "--set", "lr=2e-3",
                 "--out", str(out)]) == 0
    return out


def assert_self_contained(html: str) -> None:
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sources and all(s.startswith("data:") for s in sources), [s[:40] for s in sources]
    assert "<link" not in html and "@import" not in html and "http://" not in html and "https://" not in html


def assert_not_blank(png) -> None:
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert pixels.std() > 10, "the screenshot is (nearly) one colour"


def test_run_report_renders_in_a_browser(run):
    metrics = json.loads((run / "metrics.json").read_text())
    ev = metrics["evaluation"]["test"]
    assert ev["worst"], "the fixture run should make mistakes, so that thumbnails are shown"
    html = (run / "report.html").read_text(encoding="utf-8")
    assert_self_contained(html)
    assert html == render_run_report(metrics, __import__("taskres").classifier.load_classifier(run))
    page = render(run / "report.html", "run-report.png")
    assert page.console == [], page.console
    # the confusion matrix and one thumbnail per listed mistake, all decoded
    assert page.images == 1 + len(ev["worst"]) and page.images_ok == page.images
    for heading in ("Per class: method against zero-shot", "Confusion matrix", "Task residual per class",
                    "Most confident mistakes", "Headline"):
        assert heading in page.dom, heading
    assert page.dom.count("<table") >= 4 and all(name in page.dom for name in ev["classnames"])
    assert_not_blank(page.screenshot)


def test_per_class_rows_are_sorted_by_gain_and_zero_shot_has_no_residual(run, class_folder, tmp_path):
    html = (run / "report.html").read_text(encoding="utf-8")
    section = html[html.index("Per class: method against zero-shot"):html.index("Confusion matrix")]
    gains = [float(g) for g in re.findall(r'<span class="[a-z]*">([+-]\d+\.\d\d)</span>', section)]
    assert len(gains) == 4 and gains == sorted(gains, reverse=True)
    assert main(["fit", "--dataset", str(class_folder), *FIT, "--method", "zeroshot", "--out",
                 str(tmp_path / "zs")]) == 0
    zs = (tmp_path / "zs" / "report.html").read_text(encoding="utf-8")
    assert "Task residual per class" not in zs and "Per class: method against zero-shot" in zs


def test_sweep_report_html_renders_in_a_browser(tmp_path):
    records = tmp_path / "res" / "records"
    values = {}
    for dataset in ("dtd", "eurosat"):
        for method, base in (("zeroshot", 40.0), ("taskres", 50.0)):
            for shots in (1, 2, 4):
                for seed in (1, 2):
                    v = base + shots + seed + (5 if dataset == "eurosat" else 0)
                    values.setdefault((dataset, method, shots), []).append(v)
                    write_json_atomic(records / f"{dataset}-{method}-{shots}-{seed}.json", {
                        "name": f"{dataset}-{method}-{shots}-{seed}", "protocol": "fewshot", "status": "ok",
                        "backbone": "RN50", "dataset": dataset, "method": method, "shots": shots, "seed": seed,
                        "scores": {"top1": v}})
    result = write_report(tmp_path / "res")
    page_file = tmp_path / "res" / "report" / "report.html"
    assert page_file in result.files
    html = page_file.read_text(encoding="utf-8")
    assert_self_contained(html)
    mean = np.mean(values[("eurosat", "taskres", 4)])
    assert f"{mean:.2f} ± 0.50" in html  # the table's numbers are the records' mean ± std
    page = render(page_file, "sweep-report.png", height=1600)
    assert page.console == [], page.console
    assert page.images == 1 and page.images_ok == 1  # the few-shot figure
    assert page.dom.count("<table") == 3  # one per shot count
    assert_not_blank(page.screenshot)
