"""Few-shot classification tasks drawn from the mini world, with a shift away from pretraining.

The mini CLIP was pretrained on the world's default settings. The demo tasks draw from the same world
but shifted: backgrounds it never saw, pixel noise, (colour, shape) pairs held out of pretraining, a
colour cast (mini-colours) and class names written as a user might write them, some in words the
captions never used (mini-shapes: "plus sign", "rhombus"). The prior is useful but imperfect, which
is the regime TaskRes is for.

``load_demo_task(name, root)`` writes the task once as PNG files in CoOp layout under ``root/name/``
(``images/`` and ``split_zhou_<Name>.json``), atomically, and later just reads it back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from taskres.datasets.base import DatasetError, TaskData, classnames_from_map, read_split_json
from taskres.mini.world import COLOURS, NOVEL_BACKGROUNDS, SHAPES, World, WorldConfig

# Bump when the drawing of a task changes, so stale copies on disk are rebuilt.
TASK_VERSION = 3
SPLIT_SIZES = {"train": 40, "val": 4, "test": 40}  # images per class
IMAGE_SIZE = 64  # the mini model's input size; PNGs are written at this size
# TaskRes's learning rate on these tasks lives with the method: taskres.methods.taskres.TASKRES_LR.


@dataclass(frozen=True)
class DemoTaskSpec:
    name: str
    split_name: str  # CoOp-style dataset name used in split_zhou_<split_name>.json
    classnames: tuple[str, ...]
    class_worlds: tuple[WorldConfig, ...]  # what each class's images look like
    templates: tuple[str, ...] = ("a photo of a {}.",)
    split_sizes: dict[str, int] = field(default_factory=lambda: dict(SPLIT_SIZES))

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())


# The shift shared by the demo tasks: backgrounds pretraining never showed, pixel noise, and (colour, shape)
# pairs that pretraining held out (HELD_OUT_PAIRS) drawn like any other.
_SHIFTED = WorldConfig(
    image_size=IMAGE_SIZE,
    backgrounds=NOVEL_BACKGROUNDS,
    pixel_noise=0.12,
    holdout_pairs=(),
    second_group_prob=0.0,
    max_count=3,
)


def _shapes_task() -> DemoTaskSpec:
    # Filled shapes of any colour; class names as a user might write them: "plus sign" and "rhombus" are
    # words the captions never used (they say "cross" and "diamond"), so the prior is blind to two classes.
    names = {"cross": "plus sign", "diamond": "rhombus"}
    classes = tuple(names.get(s, s) for s in SHAPES)
    worlds = tuple(replace(_SHIFTED, shapes=(s,)) for s in SHAPES)
    return DemoTaskSpec("mini-shapes", "MiniShapes", classes, worlds)


def _colours_task() -> DemoTaskSpec:
    # Objects of any shape, filled or outlined, photographed under warm light (a colour cast): "white"
    # looks cream, "blue" dark, "pink" orange-ish. The prior still knows most colours, not all.
    warm = replace(_SHIFTED, styles=("filled", "outline"), colour_cast=(1.0, 0.8, 0.5))
    classes = tuple(COLOURS)
    worlds = tuple(replace(warm, colours=(c,)) for c in classes)
    return DemoTaskSpec("mini-colours", "MiniColours", classes, worlds)


_DEMO_SPECS = (_shapes_task(), _colours_task())
DEMO_TASKS: tuple[str, ...] = tuple(spec.name for spec in _DEMO_SPECS)
# A second, independent draw of each demo task ("mini-shapes-tune", ...): the same classes and worlds, other
# images (the seed comes from the name). Settings chosen for the demo (benchmarks/demo_lr.py) are chosen on
# these, so the demo's own images, test split included, never took part in choosing them.
TUNING_TASKS: tuple[str, ...] = tuple(f"{spec.name}-tune" for spec in _DEMO_SPECS)
_SPECS = {spec.name: spec for spec in _DEMO_SPECS}
_SPECS.update({f"{spec.name}-tune": replace(spec, name=f"{spec.name}-tune") for spec in _DEMO_SPECS})


def demo_task_spec(name: str) -> DemoTaskSpec:
    if name not in _SPECS:
        raise DatasetError(f"unknown demo task {name!r} (known: {', '.join(_SPECS)})")
    return _SPECS[name]


def render_task_images(spec: DemoTaskSpec, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, H, W, 3] and labels [N] of one split; a pure function of the spec."""
    split_index = ("train", "val", "test").index(split)
    n = spec.split_sizes[split]
    images, labels = [], []
    for label, world_cfg in enumerate(spec.class_worlds):
        rng = np.random.default_rng((spec.seed, label, split_index))
        world = World(world_cfg)
        pixels = world.render(world.sample_scenes(n, rng), rng)
        images.append((pixels.transpose(0, 2, 3, 1) * 255 + 0.5).astype(np.uint8))
        labels.append(np.full(n, label))
    return np.concatenate(images), np.concatenate(labels)


def _write_task(spec: DemoTaskSpec, target: Path) -> None:
    """Write the task into ``target`` (a fresh, empty folder)."""
    split_lists: dict[str, list[list]] = {}
    for split in ("train", "val", "test"):
        images, labels = render_task_images(spec, split)
        entries = []
        per_class: dict[int, int] = {}
        for img, label in zip(images, labels):
            label = int(label)
            k = per_class[label] = per_class.get(label, -1) + 1
            cname = spec.classnames[label]
            rel = f"{cname.replace(' ', '_')}/{split}_{k:03d}.png"
            path = target / "images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path, optimize=False)
            entries.append([rel, label, cname])
        split_lists[split] = entries
    (target / f"split_zhou_{spec.split_name}.json").write_text(json.dumps(split_lists))
    meta = {"task": spec.name, "version": TASK_VERSION, "templates": list(spec.templates)}
    (target / "task.json").write_text(json.dumps(meta, indent=2) + "\n")


def _is_current(folder: Path, spec: DemoTaskSpec) -> bool:
    meta_path = folder / "task.json"
    if not (folder / f"split_zhou_{spec.split_name}.json").is_file() or not meta_path.is_file():
        return False
    try:
        return json.loads(meta_path.read_text()).get("version") == TASK_VERSION
    except (OSError, json.JSONDecodeError):
        return False


def materialise_demo_task(name: str, root: Path) -> Path:
    """Make sure ``root/name`` holds the current version of the task; returns that folder.

    The task is written into a temporary sibling folder and renamed into place, so a killed run never
    leaves a half-written task behind, and two processes racing both end up with a complete one.
    """
    spec = demo_task_spec(name)
    root = Path(root)
    folder = root / name
    if _is_current(folder, spec):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        _write_task(spec, tmp)
        os.chmod(tmp, 0o755)
        if _is_current(folder, spec):  # another process finished first while we wrote: theirs stays
            return folder
        if folder.exists():  # a stale version: move it aside, then swap in the new one
            stale = Path(tempfile.mkdtemp(prefix=f".{name}.stale-", dir=root))
            os.replace(folder, stale / name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _is_current(folder, spec):  # someone else won the race; keep theirs if it is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_demo_task(name: str, root: Path) -> TaskData:
    """The demo task ``name`` (one of DEMO_TASKS or TUNING_TASKS), materialised under ``root/name`` on first use."""
    spec = demo_task_spec(name)
    folder = materialise_demo_task(name, root)
    split_path = folder / f"split_zhou_{spec.split_name}.json"
    splits, names = read_split_json(split_path, folder / "images")
    classnames = classnames_from_map(names, split_path)
    if classnames != list(spec.classnames):
        raise DatasetError(f"{split_path}: class names differ from the task's; delete {folder} to rebuild it")
    task = TaskData(
        name=name,
        classnames=classnames,
        templates=list(spec.templates),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
    )
    task.check_labels()
    return task
