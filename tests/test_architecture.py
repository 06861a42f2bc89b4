"""docs/ARCHITECTURE.md's worked examples run as they are written: every ``python`` block of the page, in
order, in one namespace, on generated images and the embedded mini model."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from conftest import COLOURS, draw, make_class_folder
from taskres.datasets import DATASETS
from taskres.methods import METHODS

PAGE = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_worked_examples_run_as_written(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKRES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(METHODS, "builtin", dict(METHODS.builtin))  # the examples register into copies
    monkeypatch.setattr("taskres.datasets.DATASETS", dict(DATASETS))
    data = tmp_path / "data"
    make_class_folder(data / "colours", per_class=12)
    rng = np.random.default_rng(3)
    (data / "colour-files").mkdir()
    for name, colour in COLOURS.items():
        for i in range(12):
            draw(colour, rng).save(data / "colour-files" / f"{name}-{i}.png")
    blocks = python_blocks(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) == 3
    namespace = {"DATA": data, "RUNS": tmp_path / "runs"}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), namespace)
    from taskres import datasets, methods

    assert "prototypes" in methods.METHODS and "colour_files" in datasets.DATASETS
    assert namespace["result"].metrics["top1"]["test"] > 50  # four easy colours, taskres on the mini model
