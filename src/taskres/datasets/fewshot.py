"""CoOp's few-shot protocol: after seeding with the run's seed, K images per class from the train split."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_json_atomic
from ..errors import Mention, OptionError, naming
from .base import DatasetError, Sample, TaskData

VAL_SHOTS_CAP = 4  # CoOp draws min(K, 4) validation images per class
# Where methods search their hyper-parameters: "fewshot", min(K, 4) images per class (CoOp's lpclip/
# linear_probe.py val_shot_list; the default, realistic few-shot), or "full", the dataset's whole validation
# split (what Tip-Adapter's main.py and GDA's main_few_shots.py search on). Never the test split.
SEARCH_SPLITS = ("fewshot", "full")


@dataclass
class FewShotSplit:
    shots: int
    seed: int
    train: list[Sample]
    val: list[Sample]
    search_split: str = "fewshot"  # how ``val`` was drawn (SEARCH_SPLITS)

    def to_json(self) -> dict:
        return {
            "shots": self.shots,
            "seed": self.seed,
            "search_split": self.search_split,
            "train": [[s.path, s.label] for s in self.train],
            "val": [[s.path, s.label] for s in self.val],
        }

    @classmethod
    def from_json(cls, data: dict, source: str = "split file") -> "FewShotSplit":
        try:
            return cls(int(data["shots"]), int(data["seed"]),
                       [Sample(str(p), int(y)) for p, y in data["train"]],
                       [Sample(str(p), int(y)) for p, y in data["val"]],
                       str(data.get("search_split", "fewshot")))  # files from before the option: fewshot
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{source}: not a few-shot split file ({exc})") from None


def _option(field: str, value=None) -> Mention:
    """A FitConfig field an error names (the CLI shows its flag: ``--allow-fewer-shots``, ``--shots 16``)."""
    return Mention("FitConfig", field) if value is None else Mention("FitConfig", field, value)


def _by_label(samples: list[Sample]) -> dict[int, list[Sample]]:
    groups: dict[int, list[Sample]] = {}
    for s in samples:  # insertion order: labels in order of first appearance, as CoOp groups them
        groups.setdefault(s.label, []).append(s)
    return groups


def sample_per_class(samples: list[Sample], shots: int, rng: random.Random, *, classnames: list[str],
                     split_name: str, dataset: str, strict: bool) -> list[Sample]:
    """``shots`` samples per class drawn without replacement; a short class is an error when ``strict``."""
    groups = _by_label(samples)
    if strict:
        absent = [i for i in range(len(classnames)) if i not in groups]
        if absent:
            raise DatasetError(
                f"{dataset}: class {classnames[absent[0]]!r} has no image in the {split_name} split")
    out: list[Sample] = []
    for label, items in groups.items():
        if len(items) >= shots:
            out.extend(rng.sample(items, shots))
        elif strict:
            raise naming(
                DatasetError, f"{dataset}: class {classnames[label]!r} has {len(items)} image(s) in the "
                f"{split_name} split, fewer than {{shots}} (use {{allow_fewer_shots}} to use all of them, as CoOp "
                "does)", shots=_option("shots", shots), allow_fewer_shots=_option("allow_fewer_shots", True))
        else:
            out.extend(items)
    return out


def make_fewshot_split(task: TaskData, shots: int, seed: int, *, allow_fewer: bool = False,
                       search_split: str = "fewshot") -> FewShotSplit:
    """Seeded K-shot train set and the validation set that methods search on (disjoint from the shots).

    ``search_split="fewshot"``: min(K, 4) images per class; ``"full"``: the dataset's whole validation split
    (the shots are drawn alike either way). A dataset without a validation split of its own (ImageNet)
    has no ``full`` one: the originals searched ImageNet's test split, which this project never does.
    """
    if task.subset_of is not None:  # drawn over every class of the full task, then subset (CoOp's order)
        full, labels = task.subset_of
        return subset_split(make_fewshot_split(full, shots, seed, allow_fewer=allow_fewer,
                                               search_split=search_split), labels)
    if search_split not in SEARCH_SPLITS:
        raise OptionError("search_split", f"must be one of {', '.join(SEARCH_SPLITS)}, not {search_split!r}")
    if search_split == "full" and not task.val:
        raise naming(DatasetError, f"dataset {task.name!r} has no validation split of its own, so {{full}} has "
                     "nothing to search on (the test split is never used); use {fewshot}",
                     full=_option("search_split", "full"), fewshot=_option("search_split", "fewshot"))
    if shots < 1:
        raise OptionError("shots", f"must be at least 1, not {shots}")
    if not task.train:
        raise DatasetError(f"dataset {task.name!r} has no train split to draw shots from")
    rng = random.Random(seed)
    train = sample_per_class(task.train, shots, rng, classnames=task.classnames, split_name="train",
                             dataset=task.name, strict=not allow_fewer)
    if search_split == "full":
        return FewShotSplit(shots, seed, train, list(task.val), "full")
    val_shots = min(shots, VAL_SHOTS_CAP)
    if task.val:
        val_pool = task.val
    else:  # no validation split of its own (ImageNet, plain folders): the train images not drawn
        chosen = {s.path for s in train}
        val_pool = [s for s in task.train if s.path not in chosen]
    val = sample_per_class(val_pool, val_shots, rng, classnames=task.classnames, split_name="val",
                           dataset=task.name, strict=False)
    return FewShotSplit(shots, seed, train, val)


def subset_split(split: FewShotSplit, labels) -> FewShotSplit:
    """The split's images of ``labels``, in their order in the split, relabelled 0..len(labels)-1 in the order of
    ``labels`` (CoOp's ``subsample_classes``)."""
    new_label = {old: new for new, old in enumerate(labels)}

    def keep(samples: list[Sample]) -> list[Sample]:
        return [Sample(s.path, new_label[s.label]) for s in samples if s.label in new_label]

    return FewShotSplit(split.shots, split.seed, keep(split.train), keep(split.val), split.search_split)


def save_split(split: FewShotSplit, path: Path) -> None:
    write_json_atomic(path, split.to_json())


def load_split(path: Path, task: TaskData | None = None, *, allow_fewer: bool = False) -> FewShotSplit:
    """Read a split file (a run's ``splits.json``); with ``task``, checked against it (:func:`check_split`)."""
    if not Path(path).is_file():
        raise DatasetError(f"few-shot split file not found: {path}")
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"few-shot split file {path} cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: not a few-shot split file (a JSON object with shots, seed, train, val)")
    split = FewShotSplit.from_json(data, str(path))
    if task is not None:
        check_split(split, task, data, str(path), allow_fewer=allow_fewer)
    return split


def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def check_split(split: FewShotSplit, task: TaskData, data: dict, source: str, *, allow_fewer: bool = False) -> None:
    """A split file must belong to ``task``: checked before any image is read; the first fault is the message.

    In order: the dataset's name, class names and class ids (where the file records them); then for every
    train / val entry its label's range, its path inside the dataset's folder, on disk, and listed by the
    dataset under the same label (train entries in the train split; val entries in the val split, or in
    train for a dataset without one); no image twice; at most ``shots`` per class (exactly ``shots``
    unless ``allow_fewer``) and at most min(shots, 4) validation images per class.
    """
    def fault(text: str) -> DatasetError:
        return naming(DatasetError, f"{{split_file}}: {text}", split_file=_option("split_file", str(source)))

    if "dataset" in data and data["dataset"] != task.name:
        raise fault(f"made for dataset {data['dataset']!r}, not {task.name!r}")
    for key, mine in (("classnames", task.classnames), ("class_ids", task.class_ids)):
        theirs = data.get(key)
        if theirs is None or mine is None:
            continue
        if len(theirs) != len(mine):
            raise fault(f"lists {len(theirs)} classes, dataset {task.name!r} has {len(mine)}")
        diff = next((i for i, (a, b) in enumerate(zip(theirs, mine)) if a != b), None)
        if diff is not None:
            what = "class" if key == "classnames" else "class id"
            raise fault(f"{what} {diff} is {theirs[diff]!r}, but {mine[diff]!r} in dataset {task.name!r} "
                        "(a split of another dataset?)")
    if split.shots < 1:
        raise fault(f"shots {split.shots} must be at least 1")

    every = [s for name in ("train", "val", "test") for s in task.split(name)]
    every += [s for extra in task.extra_splits.values() for s in extra]
    root = os.path.commonpath([_norm(s.path) for s in every]) if every else None
    # (where the entries of each list must come from, that split's name)
    pools = {"train": (task.train, "train"), "val": (task.val, "val") if task.val else (task.train, "train")}
    n = task.num_classes
    seen: dict[str, str] = {}
    for part, samples in (("train", split.train), ("val", split.val)):
        pool, pool_name = pools[part]
        labels = {_norm(s.path): s.label for s in pool}
        for s in samples:
            path = _norm(s.path)
            if not 0 <= s.label < n:
                raise fault(f"{part} image {s.path} has label {s.label}, outside 0..{n - 1} "
                            f"(dataset {task.name!r} has {n} classes)")
            if root is not None and os.path.commonpath([root, path]) != root:
                raise fault(f"{part} image {s.path} is outside the dataset's folder {root}")
            if not os.path.isfile(path):
                raise fault(f"{part} image {s.path} does not exist")
            if path not in labels:
                raise fault(f"{part} image {s.path} is not in the {pool_name} split of dataset {task.name!r}")
            if labels[path] != s.label:
                raise fault(f"{part} image {s.path} has label {s.label} ({task.classnames[s.label]!r}), but "
                            f"{labels[path]} ({task.classnames[labels[path]]!r}) in dataset {task.name!r}")
            if path in seen:
                raise fault(f"{part} image {s.path} is listed twice (also in {seen[path]})")
            seen[path] = part
    # A "full" search split holds the dataset's whole validation split: no per-class cap on val then.
    val_cap = min(split.shots, VAL_SHOTS_CAP) if split.search_split == "fewshot" else len(split.val)
    for part, samples, cap in (("train", split.train, split.shots), ("val", split.val, val_cap)):
        counts = Counter(s.label for s in samples)
        for label in range(n):
            have = counts.get(label, 0)
            if have > cap:
                raise fault(f"class {task.classnames[label]!r} has {have} {part} images, more than the "
                            f"{'shots ' if part == 'train' else 'validation cap '}{cap} the file states")
            if part == "train" and have < cap and not allow_fewer:
                raise naming(DatasetError, f"{{split_file}}: class {task.classnames[label]!r} has {have} of the "
                             f"file's {cap} shots (use {{allow_fewer_shots}} if the split was made with it)",
                             split_file=_option("split_file", str(source)),
                             allow_fewer_shots=_option("allow_fewer_shots", True))


def shots_used(split: FewShotSplit, num_classes: int) -> tuple[int, int]:
    """The fewest and the most training images any class has in ``split``."""
    counts = Counter(s.label for s in split.train)
    per_class = [counts.get(c, 0) for c in range(num_classes)]
    return (min(per_class), max(per_class)) if per_class else (0, 0)
