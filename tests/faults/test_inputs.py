"""What taskres promises about its inputs: a split file that does not fit the dataset, a bad parameter or a seed
beyond 64 bits ends as one line naming the file or option (exit status 2, nothing written); images of any mode
or size are read or refused in one line; a class left without a usable shot, or a split without a usable image,
is an error and never a result, and the shots recorded are the usable ones; file and folder names that are not
UTF-8 are read; a dataset folder says what it leaves out (images in sub-folders) and refuses what would be
meaningless (a single class, a run folder inside it)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folder
from kit import TINY, _save, colours, fit_args, leftovers, one_line_error, reference_run  # noqa: F401 (fixtures)
from PIL import Image

from taskres.cli import main
from taskres.transforms import MAX_PIXELS_ENV, load_image


# -- split files --------------------------------------------------------------------------------------------
def _edited_split(reference_run: Path, tmp_path: Path, edit) -> Path:
    data = json.loads((reference_run / "splits.json").read_text())
    edit(data)
    path = tmp_path / "split.json"
    path.write_text(json.dumps(data))
    return path


def test_split_file_of_other_class_names_is_refused(colours, reference_run, tmp_path, capsys):
    # the same images (same generator, same dataset name) under other class names, from a classnames.txt
    renamed = make_class_folder(tmp_path / "renamed" / "colours", per_class=6)
    (renamed / "classnames.txt").write_text("blue_thing sky\ngreen_thing grass\nred_thing fire\nyellow_thing sun\n")
    err = one_line_error(fit_args(renamed, tmp_path / "out", "--split-file", str(reference_run / "splits.json")),
                         capsys)
    assert "class 0 is 'blue thing', but 'sky'" in err and "splits.json" in err
    assert not (tmp_path / "out").exists()
    split = _edited_split(reference_run, tmp_path, lambda d: d.update(dataset="dtd"))
    assert "made for dataset 'dtd', not 'colours'" in one_line_error(
        fit_args(colours, tmp_path / "out", "--split-file", str(split)), capsys)


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["train"][0].__setitem__(1, 99), "has label 99, outside 0..3"),
    (lambda d: d["train"][0].__setitem__(0, "/etc/hostname"), "train image /etc/hostname is outside the dataset's"),
    (lambda d: d["train"][0].__setitem__(0, d["train"][0][0] + "/../../../../../../etc/hostname"), "is outside"),
    (lambda d: d["train"][0].__setitem__(0, d["train"][0][0][:-4] + "-gone.png"), "-gone.png does not exist"),
    (lambda d: d["train"][0].__setitem__(1, (d["train"][0][1] + 1) % 4), "but 0 ('blue thing') in dataset"),
    (lambda d: d["train"][1].__setitem__(0, d["train"][0][0]), "is listed twice"),
    (lambda d: d["val"].append(d["train"][0]), "is not in the val split of dataset 'colours'"),
    (lambda d: d.update(train=d["train"][1:]), "has 1 of the file's 2 shots"),
    (lambda d: d.update(shots=1), "has 2 train images, more than the shots 1"),
    (lambda d: d.update(classnames=d["classnames"][:3]), "lists 3 classes, dataset 'colours' has 4"),
    (lambda d: d.pop("train"), "not a few-shot split file"),
])
def test_a_split_file_that_does_not_fit_the_dataset_is_one_line(colours, reference_run, tmp_path, capsys, edit,
                                                                 expected):
    split = _edited_split(reference_run, tmp_path, edit)
    err = one_line_error(fit_args(colours, tmp_path / "out", "--split-file", str(split)), capsys)
    assert expected in err and str(split) in err
    assert not (tmp_path / "out").exists()


def test_shots_and_seed_next_to_a_split_file_must_agree(colours, reference_run, tmp_path, capsys):
    split = str(reference_run / "splits.json")
    err = one_line_error(fit_args(colours, tmp_path / "a", "--split-file", split, "--shots", "3"), capsys)
    assert "--shots 3 disagrees with --split-file" in err and "--shots 2" in err
    err = one_line_error(fit_args(colours, tmp_path / "a", "--split-file", split, "--seed", "5"), capsys)
    assert "--seed 5 disagrees" in err
    assert main(fit_args(colours, tmp_path / "b", "--split-file", split, "--shots", "2", "--seed", "1")) == 0
    assert main(fit_args(colours, tmp_path / "c", "--split-file", split)) == 0
    for run in ("b", "c"):
        config = json.loads((tmp_path / run / "config.json").read_text())
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert config["shots"] == metrics["shots"] == 2 and config["seed"] == metrics["seed"] == 1
        assert (json.loads((tmp_path / run / "splits.json").read_text())["train"] ==
                json.loads((reference_run / "splits.json").read_text())["train"])


def test_metrics_record_the_shots_actually_used(colours, tmp_path, capsys):
    assert main(fit_args(colours, tmp_path / "run", "--shots", "10", "--allow-fewer-shots")) == 0
    assert "10-shot asked, 3 per class used" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["shots"] == 3 and metrics["shots_asked"] == 10
    assert metrics["shots_per_class"] == {"min": 3, "max": 3}


# -- images -------------------------------------------------------------------------------------------------


def test_images_of_every_mode_are_scaled_not_clipped(tmp_path):
    grey16 = _save(Image.fromarray(np.full((6, 5), 30000, np.uint16)), tmp_path / "a16.png")
    assert Image.open(grey16).mode == "I;16"
    palette = Image.new("P", (4, 4), 2)
    palette.putpalette([0, 0, 0, 10, 20, 30, 200, 100, 50] + [0] * 759)
    cases = {
        grey16: (117, 117, 117),  # 30000 / 65535 * 255 (PIL's convert gives 255: white)
        _save(Image.fromarray(np.full((4, 4), 30000, np.int32)), tmp_path / "i.tiff"): (117, 117, 117),
        _save(Image.fromarray(np.full((4, 4), 0.25, np.float32)), tmp_path / "f.tiff"): (64, 64, 64),
        _save(Image.new("LA", (4, 4), (100, 7)), tmp_path / "la.png"): (100, 100, 100),
        _save(palette, tmp_path / "p.png", transparency=0): (200, 100, 50),
        _save(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path / "c.tiff"): (255, 0, 0),
        _save(Image.new("1", (4, 4), 1), tmp_path / "one.png"): (255, 255, 255),
        _save(Image.new("RGBA", (4, 4), (1, 2, 3, 0)), tmp_path / "rgba.png"): (1, 2, 3),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's palette-transparency warning, for one, must not appear
        for path, rgb in cases.items():
            img = load_image(path)
            assert img.mode == "RGB" and tuple(np.asarray(img)[0, 0]) == rgb, path


def test_a_huge_image_is_one_line_with_the_limit_and_no_warning(tmp_path, capsys, monkeypatch):
    from taskres.transforms import ImageError

    huge = _save(Image.new("1", (10000, 10000)), tmp_path / "huge.png")  # 10^8 pixels, 12 kB on disk
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError) as exc:
            load_image(huge)
    message = str(exc.value)
    assert "huge.png" in message and "10000 x 10000" in message and "89,478,485" in message
    assert f"{MAX_PIXELS_ENV}=N" in message and "--" not in message  # the CLI says --max-image-pixels N
    # the option raises (or lowers) the limit; the decoding workers see it through the environment
    root = make_class_folder(tmp_path / "d" / "colours", per_class=4)
    monkeypatch.setenv(MAX_PIXELS_ENV, "")
    err = one_line_error(fit_args(root, tmp_path / "run", "--shots", "1", "--max-image-pixels", "1000"), capsys)
    assert "image too large" in err and "40 x 40 = 1,600 pixels, over the limit of 1,000" in err
    assert main(fit_args(root, tmp_path / "run", "--shots", "1", "--max-image-pixels", "1600")) == 0
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ImageError, match=MAX_PIXELS_ENV):
        load_image(huge)


# -- parameters, file system, umask, names ------------------------------------------------------------------
@pytest.mark.parametrize("extra, expected", [
    (["--set", "epochs=-5"], "--set epochs must be at least 0, not -5"),
    (["--set", "lr=0"], "--set lr must be positive, not 0.0"),
    (["--set", "lr=nan"], "must be a finite number"),
    (["--set", "batch_size=0"], "--set batch_size must be at least 1, not 0"),
    (["--set", "gradient=guess"], "--set gradient must be one of"),
    (["--shots", "0"], "--shots must be a whole number, at least 1"),
    (["--views", "0"], "--views must be a whole number, at least 1"),
    (["--batch-size", "0"], "--batch-size must be a whole number, at least 1"),
    (["--workers", "-1"], "--workers must be a whole number, at least 0"),
    (["--max-image-pixels", "-1"], "--max-image-pixels must be 0"),
])
def test_bad_parameters_are_one_line_before_any_work(colours, tmp_path, capsys, extra, expected):
    assert expected in one_line_error(fit_args(colours, tmp_path / "run", *extra, method="taskres"), capsys)
    assert not (tmp_path / "run").exists() and leftovers(tmp_path, "run") == []


# -- images that cannot be used -----------------------------------------------------------------------------
def _break(path) -> None:
    Path(path).write_bytes(b"not an image")


def test_a_fit_with_every_image_unreadable_is_an_error_not_a_result(tmp_path, capsys):
    broken = make_class_folder(tmp_path / "d" / "colours", per_class=6)
    for image in broken.rglob("*.png"):
        _break(image)
    err = one_line_error(fit_args(broken, tmp_path / "run", "--shots", "2", "--skip-bad-images"), capsys)
    assert "has no usable training image (all 2 of its shots were skipped as unusable; 4 of 4 classes" in err
    assert not (tmp_path / "run").exists() and leftovers(tmp_path, "run") == []
    # bench: the cell is an error record and the sweep exits 1, never an "ok" record with a NaN top-1
    results = tmp_path / "results"
    assert main(["bench", str(results), "--datasets", str(broken), "--methods", "zeroshot", "--shots", "1", *TINY,
                 "--views", "1", "--skip-bad-images", "--quiet"]) == 1
    (record,) = (results / "records").iterdir()
    assert json.loads(record.read_text())["status"] == "error"


def test_a_class_left_without_a_shot_is_named(tmp_path, capsys):
    from taskres.datasets import load_dataset, make_fewshot_split

    folder = make_class_folder(tmp_path / "d" / "colours", per_class=6)
    split = make_fewshot_split(load_dataset(str(folder)), 2, 1)
    for s in split.train:
        if s.label == 2:  # 'red thing': both of its shots unreadable
            _break(s.path)
    err = one_line_error(fit_args(folder, tmp_path / "run", "--shots", "2", "--skip-bad-images"), capsys)
    assert "class 'red thing' of dataset 'colours' has no usable training image (all 2 of its shots" in err
    assert "1 of 4 classes have none" in err


def test_no_usable_test_image_is_an_error(tmp_path, capsys):
    from taskres.datasets import load_dataset

    folder = make_class_folder(tmp_path / "d" / "colours", per_class=6)
    for s in load_dataset(str(folder)).test:
        _break(s.path)
    err = one_line_error(fit_args(folder, tmp_path / "run", "--shots", "1", "--skip-bad-images"), capsys)
    assert "dataset 'colours' has no usable test image (all 8 were skipped as unusable)" in err
    assert main(fit_args(make_class_folder(tmp_path / "ok" / "colours", per_class=6), tmp_path / "run",
                         "--shots", "1")) == 0
    err = one_line_error(["eval", str(tmp_path / "run"), "--dataset", str(folder), "--skip-bad-images", "--quiet"],
                         capsys)
    assert "has no usable test image" in err


def test_shots_per_class_counts_only_usable_shots(tmp_path, capsys):
    from taskres.datasets import load_dataset, make_fewshot_split

    folder = make_class_folder(tmp_path / "d" / "colours", per_class=6)
    split = make_fewshot_split(load_dataset(str(folder)), 3, 1)
    _break(next(s.path for s in split.train if s.label == 0))
    assert main(fit_args(folder, tmp_path / "run", "--shots", "3", "--skip-bad-images")) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["shots_per_class"] == {"min": 2, "max": 3} and metrics["shots"] == 2
    assert metrics["shots_asked"] == 3 and metrics["num_train"] == 11
    assert "3-shot asked, 2-3 per class used" in capsys.readouterr().out


# -- names and numbers --------------------------------------------------------------------------------------
def test_file_and_folder_names_that_are_not_utf8_are_read(tmp_path, capsys):
    import os

    from taskres.datasets import load_dataset

    folder = make_class_folder(tmp_path / "d" / "colours", per_class=6)
    image = os.fsdecode(bytes(folder / "red_thing") + b"/caf\xe9.png")
    os.rename(folder / "red_thing" / "000.png", image)
    os.rename(folder / "blue_thing", os.fsdecode(bytes(folder) + b"/blu\xe9_thing"))
    run = tmp_path / "run"
    assert main(fit_args(folder, run, "--shots", "1")) == 0
    splits = json.loads((run / "splits.json").read_text())
    assert "blu\ufffd thing" in splits["classnames"]  # the undecodable byte shown, the folder kept
    task = load_dataset(str(folder))
    every = [s.path for s in task.train + task.val + task.test]
    assert len(every) == 24 and image in every and sum("blu\udce9_thing" in p for p in every) == 6
    assert sum("blu\udce9_thing" in p for p, _ in splits["eval_test"]) == 2
    assert f"({len(splits['eval_test'])} images)" in capsys.readouterr().out
    assert main(["predict", str(run), image]) == 0
    assert main(fit_args(folder, tmp_path / "again", "--shots", "1")) == 0  # the cache's keys hold them too


@pytest.mark.parametrize("seed", ["99999999999999999999999", str(-2 ** 63)])
def test_a_seed_too_large_for_the_generators_is_one_line(colours, tmp_path, capsys, seed):
    err = one_line_error(fit_args(colours, tmp_path / "run", "--seed", seed), capsys)
    assert f"--seed must be a whole number from -9223372036854775807 to 9223372036854775807, not {seed}" in err
    err = one_line_error(["bench", str(tmp_path / "r"), "--datasets", str(colours), "--methods", "zeroshot",
                          "--shots", "1", "--seeds", seed, *TINY, "--dry-run"], capsys)
    assert "--seeds must be a whole number" in err and not (tmp_path / "r").exists()


# -- dataset folders that say less than they seem to ------------------------------------------------------------
def test_images_in_sub_folders_of_a_class_are_counted_aloud(tmp_path, caplog):
    from taskres.datasets import load_dataset

    folder = make_class_folder(tmp_path / "d" / "colours", per_class=6)
    nested = folder / "red_thing" / "more" / "deeper"
    nested.mkdir(parents=True)
    for i in range(3):
        (folder / "red_thing" / f"00{i}.png").rename(nested / f"00{i}.png")
    with caplog.at_level("WARNING", logger="taskres"):
        task = load_dataset(str(folder))
    lines = [r.getMessage() for r in caplog.records if "sub-folders" in r.getMessage()]
    assert len(lines) == 1 and "3 image(s) in sub-folders of class folders are not read (21 are)" in lines[0]
    assert str(nested / "000.png") in lines[0]
    assert len(task.train + task.val + task.test) == 21


def test_a_single_class_dataset_is_refused(tmp_path, capsys):
    folder = make_class_folder(tmp_path / "d" / "colours", per_class=6, classes={"red": (220, 30, 30)})
    err = one_line_error(fit_args(folder, tmp_path / "run", "--shots", "1"), capsys)
    assert f"dataset folder {folder} has 1 class folder(s): classifying needs at least 2" in err


def test_out_inside_the_dataset_folder_is_refused(colours, tmp_path, capsys):
    from taskres.datasets import load_dataset

    before = [s.path for s in load_dataset(str(colours)).test]
    err = one_line_error(fit_args(colours, colours / "runs" / "first", "--shots", "1"), capsys)
    assert f"--out {colours / 'runs' / 'first'} is inside the dataset folder {colours}" in err
    assert not (colours / "runs").exists() and [s.path for s in load_dataset(str(colours)).test] == before
