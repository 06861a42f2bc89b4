"""taskres demo: a small bench sweep plus report on the demo tasks; a clear error without them."""

from __future__ import annotations

import json
import sys

import pytest
from PIL import Image

from conftest import TINY_MODEL

from taskres import cli
from taskres.demo import QUICK_BUDGET, demo_sweep


def test_demo_without_demo_tasks_fails_clearly(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "taskres.mini.tasks", None)  # as if the module were not shipped
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("taskres: error:") and "demo tasks" in err and "\n" not in err
    assert not (tmp_path / "d").exists()


def test_demo_sweep_covers_every_method_and_the_paper_shots():
    pytest.importorskip("taskres.mini.tasks")
    from taskres.methods import METHODS
    from taskres.mini.tasks import DEMO_TASKS

    full = demo_sweep(backbone=TINY_MODEL, pretrained="none")
    assert full.shots == [1, 2, 4, 8, 16] and full.seeds == [1] and full.datasets == list(DEMO_TASKS)
    assert full.methods[:2] == ["zeroshot", "taskres"] and sorted(full.methods) == sorted(METHODS)
    quick = demo_sweep(quick=True, seeds=(1, 2), backbone=TINY_MODEL, pretrained="none")
    assert len(quick.shots) < 5 and quick.seeds == [1, 2]
    assert quick.method_params["taskres"]["epochs"] == QUICK_BUDGET["taskres"]["epochs"]
    assert set(full.method_params) == {"coop"}  # every other method keeps its reference schedule


def test_quick_demo_prints_the_table_and_writes_the_figure(tmp_path, capsys):
    pytest.importorskip("taskres.mini.tasks")
    out = tmp_path / "demo"
    argv = ["demo", "--quick", "--out", str(out), "--tasks", "mini-shapes", "--methods", "zeroshot", "taskres",
            "--backbone", TINY_MODEL, "--pretrained", "none", "--quiet"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "| zeroshot |" in text and "| taskres |" in text and "mini-shapes" in text
    png = out / "fewshot__test-tiny.png"
    with Image.open(png) as img:
        assert img.format == "PNG"
        assert json.loads(img.text["taskres:panels"]) == ["Average (1 dataset)", "mini-shapes"]
    assert len(list((out / "records").glob("*.json"))) == 2 * 2  # 2 methods x 2 quick shot counts
