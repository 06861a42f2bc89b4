"""taskres demo: a small bench sweep plus report on the demo tasks; a clear error without them."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
from PIL import Image

from conftest import TINY_MODEL

from taskres import cli
from taskres.demo import DEMO_LR_FACTOR, LR_FACTORS, QUICK_BUDGET, demo_sweep, reference_lr


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
    assert full.shots == [1, 2, 4, 8, 16] and full.seeds == [1, 2, 3] and full.datasets == list(DEMO_TASKS)
    assert full.methods[:2] == ["zeroshot", "taskres"]
    assert sorted(full.methods) == sorted(m for m in METHODS if m != "auto")  # auto refits the others
    quick = demo_sweep(quick=True, seeds=(1, 2), backbone=TINY_MODEL, pretrained="none")
    assert len(quick.shots) < 5 and quick.seeds == [1, 2]
    assert quick.method_params["taskres"]["epochs"] == QUICK_BUDGET["taskres"]["epochs"]
    # Nothing shortened: the only setting the demo changes is the learning rate, and it changes it for
    # every method that has one, by a factor of the one grid (benchmarks/demo_lr.py).
    has_lr = {m for m in METHODS if any(f.name == "lr" for f in dataclasses.fields(METHODS[m].Params))}
    assert set(full.method_params) == has_lr == set(DEMO_LR_FACTOR)
    for m, params in full.method_params.items():
        assert set(params) == {"lr"}
        assert DEMO_LR_FACTOR[m] in LR_FACTORS
        assert params["lr"] == pytest.approx(reference_lr(m) * DEMO_LR_FACTOR[m])
    assert reference_lr("taskres") == 2e-4 and reference_lr("coop") == 0.002  # not RN50: TaskRes's 2e-4
    # `taskres fit` on a demo task without --set lr uses the demo's TaskRes learning rate
    from taskres.methods.taskres import DEMO_TASKRES_LR

    assert DEMO_TASKRES_LR == pytest.approx(full.method_params["taskres"]["lr"])


def test_quick_demo_prints_the_table_and_writes_the_figure(tmp_path, capsys):
    pytest.importorskip("taskres.mini.tasks")
    out = tmp_path / "demo"
    argv = ["demo", "--quick", "--out", str(out), "--tasks", "mini-shapes", "--methods", "zeroshot", "taskres",
            "--backbone", TINY_MODEL, "--pretrained", "none", "--quiet", "--seeds", "1", "2", "3", "--jobs", "2"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "| zeroshot |" in text and "| taskres |" in text and "mini-shapes" in text
    assert "2 worker process(es)" in text and " ± " in text  # mean ± std over the 3 seeds
    png = out / "fewshot__test-tiny.png"
    with Image.open(png) as img:
        assert img.format == "PNG"
        assert json.loads(img.text["taskres:panels"]) == ["Average (1 dataset)", "mini-shapes"]
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert len(records) == 2 * 2 * 3  # 2 methods x 2 quick shot counts x 3 seeds
    assert {r["seed"] for r in records} == {1, 2, 3} and {r["rank"] for r in records} == {0, 1}
