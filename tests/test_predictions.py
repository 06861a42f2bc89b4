"""Predictions for programs: `taskres predict RUN ... --json / --csv` for files, folders and file lists, bad
images as in fit, and the Python predict giving the same numbers."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from conftest import TINY_MODEL
from taskres import load_classifier, predict
from taskres.cli import main
from taskres.transforms import load_image

TINY = ["--backbone", TINY_MODEL, "--pretrained", "none"]


@pytest.fixture(scope="module")
def run(class_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    assert main(["fit", "--dataset", str(class_folder), *TINY, "--shots", "2", "--views", "2", "--out", str(out),
                 "--quiet", "--set", "epochs=3"]) == 0
    return out


def test_predict_json_is_valid_json_with_the_top_classes(run, class_folder, capsys):
    image = sorted((class_folder / "red_thing").iterdir())[0]
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--json", "--top", "3"]) == 0
    out = json.loads(capsys.readouterr().out)  # stdout holds the JSON alone
    assert [row["path"] for row in out] == [str(image)]
    top = out[0]["top"]
    names = load_classifier(run).classnames
    assert len(top) == 3 and all(t["class"] in names for t in top)
    probs = [t["probability"] for t in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_folder_file_list_bad_images_and_csv(run, class_folder, tmp_path, capsys):
    folder = class_folder / "blue_thing"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    listing = tmp_path / "list.txt"
    good = sorted((class_folder / "green_thing").iterdir())[:2]
    listing.write_text(f"# two green ones and a broken file\n{good[0]}\n\n{good[1]}\nbroken.png\n")
    n_folder = len(list(folder.iterdir()))

    # without --skip-bad-images: one line naming the image, as fit does
    assert main(["predict", str(run), "--file-list", str(listing), "--json", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "--skip-bad-images" in err[0]

    out_csv = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(folder), "--file-list", str(listing), "--json", "--csv", str(out_csv),
                 "--skip-bad-images", "--top", "2"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert "predicting" in captured.err  # the progress bar, on stderr
    assert len(rows) == n_folder + 3 and rows[-1]["path"] == str(bad) and rows[-1]["top"] is None
    assert "broken.png" in rows[-1]["error"]
    assert [r["path"] for r in rows[n_folder:n_folder + 2]] == [str(p) for p in good]
    with open(out_csv, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["path"] for r in table] == [r["path"] for r in rows]
    for r, j in zip(table, rows):
        if j["top"] is None:
            assert r["class_1"] == "" and r["error"]
        else:
            assert r["class_1"] == j["top"][0]["class"] and r["class_2"] == j["top"][1]["class"]
            assert float(r["probability_1"]) == pytest.approx(j["top"][0]["probability"], rel=1e-5)


def test_python_predict_equals_the_classifier_on_the_backbones_own_preprocessing(run, class_folder, tiny_backbone):
    images = [str(sorted((class_folder / f"{c}_thing").iterdir())[0]) for c in ("red", "yellow")]
    rows = predict(run, images, k=4)
    clf = load_classifier(run)
    with torch.no_grad():
        want = clf.predict_proba(tiny_backbone.encode_images(torch.stack([tiny_backbone.preprocess(load_image(p))
                                                                          for p in images])))
    for row, expected in zip(rows, want.double()):
        assert row["image"] in images
        for name, p in row["top"]:
            assert p == pytest.approx(float(expected[clf.classnames.index(name)]), abs=1e-6)
    with pytest.raises(ValueError, match="no images given"):
        predict(run, [])
