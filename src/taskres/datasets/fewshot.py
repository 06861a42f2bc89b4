"""CoOp's few-shot protocol: after seeding with the run's seed, K images per class from the train split."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..io import write_json_atomic
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
            raise DatasetError(
                f"{dataset}: class {classnames[label]!r} has {len(items)} image(s) in the {split_name} split, "
                f"fewer than --shots {shots} (pass --allow-fewer-shots to use all of them, as CoOp does)")
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
    if search_split not in SEARCH_SPLITS:
        raise DatasetError(f"--search-split must be one of {', '.join(SEARCH_SPLITS)}, not {search_split!r}")
    if search_split == "full" and not task.val:
        raise DatasetError(f"dataset {task.name!r} has no validation split of its own, so --search-split full "
                           "has nothing to search on (the test split is never used); use --search-split fewshot")
    if shots < 1:
        raise DatasetError(f"--shots must be at least 1, not {shots}")
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


def save_split(split: FewShotSplit, path: Path) -> None:
    write_json_atomic(path, split.to_json())


def load_split(path: Path) -> FewShotSplit:
    if not Path(path).is_file():
        raise DatasetError(f"few-shot split file not found: {path}")
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from None
    return FewShotSplit.from_json(data, str(path))
