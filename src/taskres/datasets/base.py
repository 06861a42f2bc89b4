"""What every dataset reader returns: class names, prompt templates and three lists of (path, label)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


class DatasetError(ValueError):
    """A dataset is missing, malformed or too small; the message names the file or option at fault."""


@dataclass(frozen=True)
class Sample:
    path: str  # absolute path of the image file
    label: int


@dataclass
class TaskData:
    """A classification task: the only thing the rest of the pipeline needs to know about a dataset."""

    name: str
    classnames: list[str]
    templates: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    class_ids: list[str] | None = None  # stable ids (e.g. WordNet ids) used to map class subsets
    extra_splits: dict[str, list[Sample]] = field(default_factory=dict)
    # A class subset (base-to-new): the full task and the labels kept, in order. The few shots are drawn over
    # the full task's classes and then subset, as CoOp does (generate_fewshot_dataset, then
    # subsample_classes in its datasets/oxford_pets.py), so the same seed draws the same images.
    subset_of: tuple["TaskData", tuple[int, ...]] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> list[Sample]:
        if name in ("train", "val", "test"):
            return getattr(self, name)
        if name in self.extra_splits:
            return self.extra_splits[name]
        known = ["train", "val", "test", *self.extra_splits]
        raise DatasetError(f"dataset {self.name!r} has no split {name!r} (known: {', '.join(known)})")

    def check_labels(self) -> None:
        for split_name in ("train", "val", "test"):
            for s in self.split(split_name):
                if not 0 <= s.label < self.num_classes:
                    raise DatasetError(
                        f"{self.name}: label {s.label} of {s.path} is outside 0..{self.num_classes - 1}"
                    )


# name -> reader(root: Path) -> TaskData. Filled by explicit registration in datasets/__init__.py.
DatasetReader = Callable[[Path], TaskData]


def read_split_json(path: Path, image_dir: Path) -> tuple[dict[str, list[Sample]], dict[int, str]]:
    """Read a CoOp ``split_zhou_*.json`` file: {"train"|"val"|"test": [[relpath, label, classname], ...]}.

    Returns the three splits and the label -> class name map found in the file.
    """
    if not path.is_file():
        raise DatasetError(f"split file not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"split file {path} is not valid JSON: {exc}") from None
    splits: dict[str, list[Sample]] = {}
    names: dict[int, str] = {}
    for key in ("train", "val", "test"):
        if key not in raw:
            raise DatasetError(f"split file {path} has no {key!r} list")
        out = []
        for entry in raw[key]:
            try:
                rel, label, cname = entry
                label = int(label)
            except (TypeError, ValueError):
                raise DatasetError(f"split file {path}: malformed entry {entry!r} in {key!r}") from None
            out.append(Sample(str(image_dir / rel), label))
            names.setdefault(label, str(cname))
        splits[key] = out
    return splits, names


def classnames_from_map(names: dict[int, str], source: Path) -> list[str]:
    n = max(names) + 1 if names else 0
    missing = [i for i in range(n) if i not in names]
    if missing:
        raise DatasetError(f"{source}: no sample names class label(s) {missing[:5]}")
    return [names[i] for i in range(n)]
