"""The practitioner's metrics (taskres.metrics) by hand on small cases, and in fit / eval against zero-shot."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY_MODEL

from taskres.cli import main
from taskres.metrics import (DENSE_CONFUSION_MAX_CLASSES, classification_metrics, dense_confusion,
                             expected_calibration_error, split_evaluation)


def logits_for(pred_probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(pred_probs).log()


def test_metrics_by_hand():
    # 3 classes, 5 images; class 2 has no image.
    probs = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05]]
    labels = torch.tensor([0, 1, 1, 1, 0])
    m = classification_metrics(logits_for(probs), labels)
    # predictions 0, 1, 0, 2, 0: right, right, wrong, wrong, right
    assert m["top1"] == pytest.approx(60.0)
    assert m["top5"] == pytest.approx(100.0)  # k = min(5, 3): everything
    assert m["per_class"] == [pytest.approx(100.0), pytest.approx(100 / 3), None]
    assert m["macro"] == pytest.approx((100 + 100 / 3) / 2)
    assert m["confusion"] == [[2, 0, 0], [1, 1, 1], [0, 0, 0]]
    # 15 bins of width 1/15: confidences 0.7 (bin 10), 0.6 (bin 8), 0.5 (bin 7), 0.5 (bin 7), 0.9 (bin 13)
    # bin 10: |1 - 0.7|, bin 8: |1 - 0.6|, bin 7: |0 - 1.0| (two wrong at 0.5), bin 13: |1 - 0.9|
    want = (0.3 + 0.4 + 1.0 + 0.1) / 5 * 100
    assert m["ece"] == pytest.approx(want)


def test_ece_bin_edges_are_right_closed():
    # confidence exactly 2/3 = 10/15 belongs to bin (9/15, 10/15]; one right, one wrong image there -> |0.5 - 2/3|
    probs = torch.tensor([[2 / 3, 1 / 3], [2 / 3, 1 / 3]])
    assert expected_calibration_error(probs, torch.tensor([0, 1])) == pytest.approx(100 * abs(0.5 - 2 / 3))
    # a perfectly calibrated set: confidence 1, always right
    assert expected_calibration_error(torch.eye(3), torch.arange(3)) == pytest.approx(0.0)


def test_many_classes_store_a_sparse_confusion_that_reads_back():
    c = DENSE_CONFUSION_MAX_CLASSES + 1
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(300, c, generator=g), torch.randint(0, c, (300,), generator=g)
    m = classification_metrics(logits, labels)
    assert "confusion" not in m and len(m["confusion_sparse"]) <= 300
    dense = dense_confusion(m, c)
    assert int(dense.sum()) == 300 and int(dense.diag().sum()) == round(m["top1"] * 3)
    assert torch.equal(dense.sum(1), torch.bincount(labels, minlength=c))


def test_worst_are_the_most_confident_mistakes():
    probs = [[0.2, 0.8], [0.95, 0.05], [0.6, 0.4], [0.1, 0.9]]
    ev = split_evaluation(logits_for(probs), None, torch.tensor([0, 1, 1, 1]), ["a", "b", "c", "d"], ["x", "y"])
    assert [w["image"] for w in ev["worst"]] == ["b", "a", "c"]  # wrong ones, confidence 0.95, 0.8, 0.6
    assert ev["worst"][0]["top3"][0] == ["x", pytest.approx(0.95)] and ev["worst"][0]["label"] == "y"
    assert "zeroshot" not in ev


def same(a, b) -> bool:
    """Equal numbers (to float rounding), lists of them (None allowed) or confusion matrices."""
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is b
    return a == pytest.approx(b, rel=1e-6, abs=1e-9)


FIT = ["--backbone", TINY_MODEL, "--pretrained", "none", "--shots", "2", "--views", "2", "--quiet"]


def test_fit_and_eval_report_the_method_beside_zero_shot(class_folder, tmp_path, capsys):
    assert main(["fit", "--dataset", str(class_folder), *FIT, "--set", "epochs=5", "--set", "lr=1e-2",
                 "--out", str(tmp_path / "taskres")]) == 0
    assert main(["fit", "--dataset", str(class_folder), *FIT, "--method", "zeroshot",
                 "--out", str(tmp_path / "zs")]) == 0
    out = capsys.readouterr().out
    assert "zero-shot" in out and "ECE" in out
    tr = json.loads((tmp_path / "taskres" / "metrics.json").read_text())
    zs = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    ev = tr["evaluation"]["test"]
    assert tr["top1"]["test"] == ev["method"]["top1"]  # the old key is the same number
    # zero-shot beside TaskRes is what the zero-shot method itself scores on the same images
    zs_ev = zs["evaluation"]["test"]
    for key in ("top1", "top5", "macro", "ece", "per_class", "confusion"):
        assert same(ev["zeroshot"][key], zs_ev["method"][key]), key
    assert ev["method"]["confusion"] != ev["zeroshot"]["confusion"]  # the residual changed something
    assert sum(map(sum, ev["method"]["confusion"])) == ev["num_images"] == tr["num_images"]["test"]
    assert ev["classnames"] == ["blue thing", "green thing", "red thing", "yellow thing"]
    # eval recomputes the same numbers from the saved classifier
    assert main(["eval", str(tmp_path / "taskres"), "--dataset", str(class_folder), "--json", "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split() == ["top-1", "top-5", "macro", "ECE"] and lines[2].split()[0] == "method"
    res = json.loads(lines[-1])
    for who in ("method", "zeroshot"):
        for key in ("top1", "top5", "macro", "ece", "per_class", "confusion"):
            assert same(res["evaluation"][who][key], ev[who][key]), (who, key)
    assert not math.isnan(res["evaluation"]["method"]["ece"])
