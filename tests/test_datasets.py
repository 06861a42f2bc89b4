"""Dataset readers (CoOp layout, ImageNet family, class folders) and the few-shot protocol."""

from __future__ import annotations

import json

import pytest
from conftest import COLOURS, draw

from taskres.datasets import DatasetError, load_dataset, make_fewshot_split
from taskres.datasets.coop import IMAGENET_TEMPLATES


def test_coop_layout_reader(coop_root):
    task = load_dataset("caltech101", coop_root)
    assert task.classnames == list(COLOURS)
    assert (len(task.train), len(task.val), len(task.test)) == (32, 12, 20)
    assert task.templates == ["a photo of a {}."]
    assert all(s.path.startswith(str(coop_root / "caltech-101" / "101_ObjectCategories")) for s in task.train)


def test_class_folder_reader(class_folder):
    task = load_dataset(str(class_folder))
    assert task.classnames == ["blue thing", "green thing", "red thing", "yellow thing"]  # '_' shown as space
    n = len(task.train) + len(task.val) + len(task.test)
    assert n == 4 * 12 and len(task.train) == 4 * 6
    assert not {s.path for s in task.train} & {s.path for s in task.test}
    assert load_dataset(str(class_folder)).test == task.test  # the split does not depend on the run


def test_class_folder_with_classnames_file(tmp_path):
    from conftest import make_class_folder

    root = make_class_folder(tmp_path / "d", per_class=4)
    (root / "classnames.txt").write_text("red_thing crimson object\ngreen_thing leaf\nblue_thing sky\n")
    with pytest.raises(DatasetError, match="no class name for folder"):
        load_dataset(str(root))
    (root / "classnames.txt").write_text(
        "red_thing crimson object\ngreen_thing leaf\nblue_thing sky\nyellow_thing sun\n")
    assert load_dataset(str(root)).classnames == ["sky", "leaf", "crimson object", "sun"]


def test_fewshot_sampling_is_deterministic_per_seed_and_differs_across_seeds(coop_root):
    task = load_dataset("caltech101", coop_root)
    a, b = make_fewshot_split(task, 4, seed=1), make_fewshot_split(task, 4, seed=1)
    c = make_fewshot_split(task, 4, seed=2)
    assert a.train == b.train and a.val == b.val
    assert a.train != c.train
    per_class = {}
    for s in a.train:
        per_class[s.label] = per_class.get(s.label, 0) + 1
    assert per_class == {i: 4 for i in range(4)}
    assert len(a.val) == 4 * 3  # min(K, 4) = 4 wanted, 3 available per class: CoOp takes all
    assert {s.path for s in a.val} <= {s.path for s in task.val}


def test_val_drawn_from_train_when_no_val_split_is_disjoint_from_shots(tmp_path):
    from taskres.datasets.folder import read_class_folder

    for split, n in (("train", 10), ("test", 3)):
        for name, colour in COLOURS.items():
            d = tmp_path / split / name
            d.mkdir(parents=True)
            import numpy as np

            rng = np.random.default_rng(0)
            for i in range(n):
                draw(colour, rng).save(d / f"{i}.png")
    task = read_class_folder(tmp_path)
    assert task.val == [] and len(task.train) == 40
    split = make_fewshot_split(task, 2, seed=3)
    assert len(split.val) == 4 * 2
    assert not {s.path for s in split.train} & {s.path for s in split.val}


def test_class_with_fewer_images_than_k(coop_root):
    task = load_dataset("caltech101", coop_root)
    with pytest.raises(DatasetError,
                       match=r"class 'red' has 8 image\(s\) in the train split, fewer than FitConfig\.shots=16"):
        make_fewshot_split(task, 16, seed=1)
    split = make_fewshot_split(task, 16, seed=1, allow_fewer=True)
    assert len(split.train) == 32


def test_missing_split_file_and_folder(tmp_path, coop_root):
    with pytest.raises(DatasetError, match="folder not found: .*oxford_pets"):
        load_dataset("oxford_pets", tmp_path)
    (tmp_path / "oxford_pets" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="split file not found: .*split_zhou_OxfordPets.json"):
        load_dataset("oxford_pets", tmp_path)
    (tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json").write_text("{not json")
    with pytest.raises(DatasetError, match="split_zhou_OxfordPets.json is not valid JSON"):
        load_dataset("oxford_pets", tmp_path)
    with pytest.raises(DatasetError, match=r"needs FitConfig\.data_root "):
        load_dataset("dtd")
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        load_dataset("nope")


def test_templates_and_alpha_per_dataset(tmp_path):
    root = tmp_path
    (root / "oxford_flowers" / "jpg").mkdir(parents=True)
    (root / "oxford_flowers" / "split_zhou_OxfordFlowers.json").write_text(json.dumps(
        {"train": [["a.jpg", 0, "rose"]], "val": [], "test": [["b.jpg", 1, "tulip"]]}))
    task = load_dataset("oxford_flowers", root)
    assert task.templates == ["a photo of a {}, a type of flower."]
    assert task.classnames == ["rose", "tulip"]


def _fake_imagenet(root, wnids, names, per_class=3):
    import numpy as np

    rng = np.random.default_rng(0)
    colours = list(COLOURS.values())
    (root / "imagenet").mkdir(parents=True)
    (root / "imagenet" / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in zip(wnids, names)))
    dirs = {"train": root / "imagenet/images/train", "val": root / "imagenet/images/val",
            "sketch": root / "imagenet-sketch/images", "a": root / "imagenet-adversarial/imagenet-a",
            "r": root / "imagenet-rendition/imagenet-r"}
    for key, base in dirs.items():
        for i, w in enumerate(wnids):
            if key in ("a", "r") and i % 2:
                continue  # the shift sets hold a subset of the classes
            (base / w).mkdir(parents=True)
            for j in range(per_class):
                draw(colours[i % 4], rng).save(base / w / f"{j}.jpg")
    for i in range(len(wnids)):
        d = root / "imagenetv2/imagenetv2-matched-frequency-format-val" / str(i)
        d.mkdir(parents=True)
        draw(colours[i % 4], rng).save(d / "0.jpeg")


def test_imagenet_family_readers(tmp_path):
    wnids, names = ["n01", "n02", "n03", "n04"], ["tench", "goldfish", "great white shark", "tiger shark"]
    _fake_imagenet(tmp_path, wnids, names)
    inet = load_dataset("imagenet", tmp_path)
    assert inet.classnames == names and inet.templates == IMAGENET_TEMPLATES
    assert len(inet.train) == 12 and len(inet.test) == 12 and inet.val == []
    assert len(load_dataset("imagenetv2", tmp_path).test) == 4
    assert len(load_dataset("imagenet_sketch", tmp_path).test) == 12
    a = load_dataset("imagenet_a", tmp_path)
    assert a.class_ids == ["n01", "n03"] and a.classnames == ["tench", "great white shark"]
    assert sorted({s.label for s in a.test}) == [0, 1]
    assert load_dataset("imagenet-r", tmp_path).class_ids == ["n01", "n03"]


def test_fgvc_aircraft_reader(tmp_path):
    base = tmp_path / "fgvc_aircraft"
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("707-320\nA300B4\n")
    for split in ("train", "val", "test"):
        (base / f"images_variant_{split}.txt").write_text("0001 707-320\n0002 A300B4\n")
    task = load_dataset("fgvc_aircraft", tmp_path)
    assert task.classnames == ["707-320", "A300B4"]
    assert task.train[1].path.endswith("images/0002.jpg") and task.train[1].label == 1
    (base / "images_variant_val.txt").write_text("0003 Boeing 999\n")
    with pytest.raises(DatasetError, match="variant 'Boeing 999' is not in"):
        load_dataset("fgvc_aircraft", tmp_path)
