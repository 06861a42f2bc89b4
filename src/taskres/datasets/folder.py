"""Any folder with one sub-folder per class, with or without its own train/val/test split folders."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

from .base import DatasetError, Sample, TaskData
from .coop import IMAGE_EXTENSIONS, list_images, read_classnames_file

log = logging.getLogger("taskres")

CLASSNAMES_FILE = "classnames.txt"
# The CoOp code base splits datasets that ship without a split 50/20/30 (train/val/test).
SPLIT_FRACTIONS = (0.5, 0.2)
SPLIT_SEED = 0  # the split is fixed; the run seed only chooses the few shots inside train


def _class_folders(folder: Path) -> list[str]:
    return sorted(d for d in os.listdir(folder) if (folder / d).is_dir() and not d.startswith("."))


def _display_names(folders: list[str], root: Path, classnames_file: Path | None) -> list[str]:
    path = classnames_file or (root / CLASSNAMES_FILE)
    if classnames_file is not None or path.is_file():
        mapping = read_classnames_file(path)
        missing = [f for f in folders if f not in mapping]
        if missing:
            raise DatasetError(f"{path} has no class name for folder(s) {missing[:5]}")
        return [mapping[f] for f in folders]
    return [_readable(f).replace("_", " ") for f in folders]


def _readable(name: str) -> str:
    """A folder name as text: a name that is not UTF-8 (Python holds its bytes as surrogate escapes, which no
    text encoder, page or figure takes) shows its undecodable bytes as U+FFFD; the folder keeps its name."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _read_split_folder(folder: Path, class_folders: list[str]) -> list[Sample]:
    items = []
    for label, cls in enumerate(class_folders):
        if (folder / cls).is_dir():
            items.extend(Sample(p, label) for p in list_images(folder / cls))
    return items


def _unread_nested_images(folders: list[Path]) -> tuple[int, str | None]:
    """Images in sub-folders of class folders (not read: a class is the images directly in its folder), and
    the first one; a sub-folder may hold rejects or another split, so it is named rather than guessed at."""
    count, first = 0, None
    for folder in folders:
        for sub in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
            for dirpath, dirnames, files in os.walk(sub):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                images = sorted(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
                count += len(images)
                first = first or (os.path.join(dirpath, images[0]) if images else None)
    return count, first


def _check_classes(root: Path, classes: list[str], class_dirs: list[Path], read: int) -> None:
    """Say what the folder layout leaves out or makes meaningless: one line, before any work."""
    if len(classes) < 2:
        raise DatasetError(f"dataset folder {root} has {len(classes)} class folder(s): classifying needs at least 2 "
                           "(every image of a single class is trivially right)")
    nested, first = _unread_nested_images(class_dirs)
    if nested:
        log.warning("dataset folder %s: %d image(s) in sub-folders of class folders are not read (%d are), e.g. %s; "
                    "move them into their class folder to use them", root, nested, read, first)


def read_class_folder(root: Path, classnames_file: Path | None = None,
                      templates: list[str] | None = None) -> TaskData:
    """Class names come from folder names (``_`` shown as a space) or from ``classnames.txt``.

    With ``train/`` and ``test/`` (and optionally ``val/``) sub-folders those splits are used; otherwise
    the images are split per class, 50/20/30, with a fixed seed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    templates = templates or ["a photo of a {}."]
    if (root / "train").is_dir() and (root / "test").is_dir():
        class_folders = sorted(set(_class_folders(root / "train")) | set(_class_folders(root / "test")))
        if not class_folders:
            raise DatasetError(f"{root / 'train'} has no class sub-folders")
        splits = {s: _read_split_folder(root / s, class_folders) if (root / s).is_dir() else []
                  for s in ("train", "val", "test")}
    else:
        class_folders = _class_folders(root)
        if not class_folders:
            raise DatasetError(f"{root} has no class sub-folders (expected one folder of images per class)")
        rng = random.Random(SPLIT_SEED)
        splits = {"train": [], "val": [], "test": []}
        for label, cls in enumerate(class_folders):
            images = list_images(root / cls)
            if not images:
                raise DatasetError(f"class folder {root / cls} holds no images")
            rng.shuffle(images)
            n_train = max(1, round(len(images) * SPLIT_FRACTIONS[0]))
            n_val = round(len(images) * SPLIT_FRACTIONS[1])
            splits["train"] += [Sample(p, label) for p in images[:n_train]]
            splits["val"] += [Sample(p, label) for p in images[n_train:n_train + n_val]]
            splits["test"] += [Sample(p, label) for p in images[n_train + n_val:]]
    split_dirs = [root / s for s in ("train", "val", "test")] if (root / "train").is_dir() else [root]
    _check_classes(root, class_folders, [d / c for d in split_dirs for c in class_folders if (d / c).is_dir()],
                   sum(len(v) for v in splits.values()))
    names = _display_names(class_folders, root, classnames_file)
    return TaskData(root.name, names, list(templates), class_ids=class_folders, **splits)
