"""Dataset registry: an explicit mapping from a dataset name to its reader.

``load_dataset(name_or_folder, data_root)`` accepts a registered name (CoOp layout under ``data_root``),
a generated demo task (``mini-*``), or the path of a folder with one sub-folder per class.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..errors import Mention, naming
from ..options import cache_home
from .base import DatasetError, Sample, TaskData, read_split_json
from .coop import (
    IMAGENET_TEMPLATES,
    SPLIT_JSON_DATASETS,
    read_fgvc_aircraft,
    read_imagenet,
    read_imagenet_a,
    read_imagenet_r,
    read_imagenet_sketch,
    read_imagenet_v2,
    read_split_json_dataset,
)
from .fewshot import FewShotSplit, check_split, load_split, make_fewshot_split, save_split, shots_used
from .folder import read_class_folder

DATASETS = {
    **{name: partial(read_split_json_dataset, name) for name in SPLIT_JSON_DATASETS},
    "fgvc_aircraft": read_fgvc_aircraft,
    "imagenet": read_imagenet,
    "imagenetv2": read_imagenet_v2,
    "imagenet_sketch": read_imagenet_sketch,
    "imagenet_a": read_imagenet_a,
    "imagenet_r": read_imagenet_r,
}
# The 11 datasets of the paper's few-shot table, in the paper's order.
PAPER_DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                  "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
DOMAIN_SHIFT_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def default_demo_root() -> Path:
    return cache_home() / "demo-data"


def demo_task_names() -> tuple[str, ...]:
    try:
        from ..mini.tasks import DEMO_TASKS
    except ImportError:
        return ()
    return tuple(DEMO_TASKS)


def known_datasets() -> list[str]:
    return [*DATASETS, *demo_task_names()]


def load_dataset(name: str, data_root: str | Path | None = None) -> TaskData:
    """Read a dataset by registered name, demo-task name or class-folder path."""
    key = name.lower().replace("-", "_") if not name.startswith("mini-") else name
    if key in DATASETS:
        if data_root is None:
            raise naming(DatasetError, f"dataset {name!r} needs {{data_root}} (the folder that holds the CoOp "
                         "layout)", data_root=Mention("FitConfig", "data_root"))
        return DATASETS[key](Path(data_root))
    if name.startswith("mini-"):
        from ..mini.tasks import DEMO_TASKS, TUNING_TASKS, load_demo_task

        if name not in DEMO_TASKS + TUNING_TASKS:
            raise DatasetError(f"unknown demo task {name!r}; known: {', '.join(DEMO_TASKS + TUNING_TASKS)}")
        return load_demo_task(name, Path(data_root) if data_root else default_demo_root())
    path = Path(name)
    if not path.is_absolute() and data_root is not None and (Path(data_root) / name).is_dir():
        path = Path(data_root) / name
    if path.is_dir():
        return read_class_folder(path)
    raise DatasetError(
        f"unknown dataset {name!r}: not a registered name ({', '.join(known_datasets())}) "
        "and not a folder of class sub-folders")


__all__ = [
    "DATASETS", "PAPER_DATASETS", "DOMAIN_SHIFT_TARGETS", "IMAGENET_TEMPLATES", "DatasetError", "FewShotSplit",
    "Sample", "TaskData", "known_datasets", "load_dataset", "load_split", "make_fewshot_split",
    "read_class_folder", "read_split_json", "save_split", "check_split", "shots_used",
]
