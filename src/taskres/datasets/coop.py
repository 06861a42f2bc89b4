"""Readers for the CoOp layout of the 11 benchmark datasets, ImageNet and the four ImageNet shift sets.

Layout and prompt templates follow REFERENCE.md (the CoOp/TaskRes protocol). Each reader takes the
DATA root and returns a :class:`TaskData`; nothing is read until a reader is called.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import DatasetError, Sample, TaskData, classnames_from_map, read_split_json

IMAGENET_TEMPLATES = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "a photo of a {}.",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# name -> (folder under DATA, image folder inside it, split file, template)
SPLIT_JSON_DATASETS: dict[str, tuple[str, str, str, str]] = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", "a photo of a {}."),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json", "a photo of a {}, a type of pet."),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json", "a photo of a {}."),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                       "a photo of a {}, a type of flower."),
    "food101": ("food-101", "images", "split_zhou_Food101.json", "a photo of {}, a type of food."),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json", "a photo of a {}."),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json", "{} texture."),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json", "a centered satellite photo of {}."),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "a photo of a person doing {}."),
}


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} folder not found: {path}")
    return path


def read_split_json_dataset(name: str, root: Path) -> TaskData:
    folder, image_folder, split_file, template = SPLIT_JSON_DATASETS[name]
    base = _require_dir(root / folder, f"dataset {name!r}")
    image_dir = _require_dir(base / image_folder, f"{name} image") if image_folder else base
    splits, names = read_split_json(base / split_file, image_dir)
    task = TaskData(
        name=name,
        classnames=classnames_from_map(names, base / split_file),
        templates=[template],
        **splits,
    )
    task.check_labels()
    return task


def read_fgvc_aircraft(root: Path) -> TaskData:
    base = _require_dir(root / "fgvc_aircraft", "dataset 'fgvc_aircraft'")
    variants_file = base / "variants.txt"
    if not variants_file.is_file():
        raise DatasetError(f"class list not found: {variants_file}")
    classnames = [line.strip() for line in variants_file.read_text().splitlines() if line.strip()]
    label_of = {c: i for i, c in enumerate(classnames)}
    image_dir = _require_dir(base / "images", "fgvc_aircraft image")
    splits = {}
    for split in ("train", "val", "test"):
        path = base / f"images_variant_{split}.txt"
        if not path.is_file():
            raise DatasetError(f"split file not found: {path}")
        items = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            image, _, variant = line.strip().partition(" ")
            if variant not in label_of:
                raise DatasetError(f"{path}:{n}: variant {variant!r} is not in {variants_file}")
            items.append(Sample(str(image_dir / f"{image}.jpg"), label_of[variant]))
        splits[split] = items
    return TaskData("fgvc_aircraft", classnames, ["a photo of a {}, a type of aircraft."], **splits)


def read_classnames_file(path: Path) -> dict[str, str]:
    """``<folder id> <class name with spaces>`` per line (ImageNet's classnames.txt) -> {id: name}."""
    if not path.is_file():
        raise DatasetError(f"class name file not found: {path}")
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        folder, _, name = line.strip().partition(" ")
        if not name:
            raise DatasetError(f"{path}:{n}: expected '<folder> <class name>', got {line.strip()!r}")
        out[folder] = name.strip()
    return out


def list_images(folder: Path) -> list[str]:
    return sorted(
        str(folder / f) for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
    )


def _imagenet_classnames(root: Path, own_dir: Path | None = None) -> dict[str, str]:
    for candidate in ([own_dir / "classnames.txt"] if own_dir else []) + [root / "imagenet" / "classnames.txt"]:
        if candidate.is_file():
            return read_classnames_file(candidate)
    raise DatasetError(f"class name file not found: {root / 'imagenet' / 'classnames.txt'}")


def _read_wnid_folders(image_dir: Path, wnids: list[str], names: dict[str, str]) -> list[Sample]:
    items = []
    for label, wnid in enumerate(wnids):
        folder = image_dir / wnid
        if folder.is_dir():
            items.extend(Sample(p, label) for p in list_images(folder))
    return items


def read_imagenet(root: Path) -> TaskData:
    base = _require_dir(root / "imagenet", "dataset 'imagenet'")
    names = _imagenet_classnames(root, base)
    wnids = list(names)
    train = _read_wnid_folders(_require_dir(base / "images" / "train", "imagenet train"), wnids, names)
    test = _read_wnid_folders(_require_dir(base / "images" / "val", "imagenet val"), wnids, names)
    # ImageNet has no validation split of its own; ours is drawn from train, disjoint from the shots.
    return TaskData("imagenet", [names[w] for w in wnids], list(IMAGENET_TEMPLATES), train, [], test,
                    class_ids=wnids)


def read_imagenet_v2(root: Path) -> TaskData:
    base = _require_dir(root / "imagenetv2", "dataset 'imagenetv2'")
    names = _imagenet_classnames(root, base)
    wnids = list(names)
    image_dir = _require_dir(base / "imagenetv2-matched-frequency-format-val", "imagenetv2 image")
    test = []
    for label in range(len(wnids)):
        folder = image_dir / str(label)
        if folder.is_dir():
            test.extend(Sample(p, label) for p in list_images(folder))
    return TaskData("imagenetv2", [names[w] for w in wnids], list(IMAGENET_TEMPLATES), [], [], test,
                    class_ids=wnids)


def read_imagenet_sketch(root: Path) -> TaskData:
    base = _require_dir(root / "imagenet-sketch", "dataset 'imagenet_sketch'")
    names = _imagenet_classnames(root, base)
    wnids = list(names)
    test = _read_wnid_folders(_require_dir(base / "images", "imagenet-sketch image"), wnids, names)
    return TaskData("imagenet_sketch", [names[w] for w in wnids], list(IMAGENET_TEMPLATES), [], [], test,
                    class_ids=wnids)


def _read_200_class_subset(root: Path, name: str, folder: str, inner: str) -> TaskData:
    base = _require_dir(root / folder, f"dataset {name!r}")
    names = _imagenet_classnames(root, base)
    image_dir = _require_dir(base / inner, f"{name} image")
    wnids = sorted(d for d in os.listdir(image_dir) if (image_dir / d).is_dir())
    unknown = [w for w in wnids if w not in names]
    if unknown:
        raise DatasetError(f"{image_dir}: folders {unknown[:3]} are not ImageNet classes in classnames.txt")
    test = _read_wnid_folders(image_dir, wnids, names)
    return TaskData(name, [names[w] for w in wnids], list(IMAGENET_TEMPLATES), [], [], test, class_ids=wnids)


def read_imagenet_a(root: Path) -> TaskData:
    return _read_200_class_subset(root, "imagenet_a", "imagenet-adversarial", "imagenet-a")


def read_imagenet_r(root: Path) -> TaskData:
    return _read_200_class_subset(root, "imagenet_r", "imagenet-rendition", "imagenet-r")
