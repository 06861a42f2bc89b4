"""Shared fixtures: a tiny random-weight open_clip model and image datasets generated on the fly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# The suite works on tiny tensors: one thread avoids OpenMP oversubscription on small, shared machines.
torch.set_num_threads(1)

ASSETS = Path(__file__).parent / "assets"
TINY_MODEL = str(ASSETS / "test-tiny.json")
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "yellow": (230, 220, 40)}


def draw(colour, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """A noisy image dominated by one colour: classes are separable, images all differ."""
    base = np.array(colour, dtype=np.float32)[None, None, :]
    noise = rng.normal(0, 25, size=(size, size, 3))
    img = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(img)


def make_class_folder(root: Path, per_class: int = 12, seed: int = 0, classes=COLOURS) -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        d = root / f"{name}_thing"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(colour, rng).save(d / f"{i:03d}.png")
    return root


def make_coop_dataset(data_root: Path, name: str = "caltech101", per_class=(8, 3, 5), seed: int = 1) -> Path:
    """A CoOp-layout dataset (caltech-101 layout: image folder + split_zhou json)."""
    from taskres.datasets.coop import SPLIT_JSON_DATASETS

    folder, image_folder, split_file, _ = SPLIT_JSON_DATASETS[name]
    base = data_root / folder
    image_dir = base / image_folder if image_folder else base
    rng = np.random.default_rng(seed)
    split = {"train": [], "val": [], "test": []}
    for label, (cname, colour) in enumerate(COLOURS.items()):
        (image_dir / cname).mkdir(parents=True, exist_ok=True)
        k = 0
        for part, n in zip(("train", "val", "test"), per_class):
            for _ in range(n):
                rel = f"{cname}/img_{k:03d}.png"
                draw(colour, rng).save(image_dir / rel)
                split[part].append([rel, label, cname])
                k += 1
    (base / split_file).write_text(json.dumps(split))
    return data_root


class CountingBackbone:
    """Wraps a backbone and counts the images it encodes (what a cache served must not re-encode); with
    ``fail_after``, a call after that many raises KeyboardInterrupt (a simulated kill)."""

    def __init__(self, backbone, fail_after=None):
        self._b, self.count, self.calls, self.fail_after = backbone, 0, 0, fail_after

    def __getattr__(self, name):
        return getattr(self._b, name)

    def encode_images(self, images):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.count += len(images)
        return self._b.encode_images(images)


@pytest.fixture(scope="session")
def tiny_backbone():
    from taskres.backbone import BackboneConfig, load_backbone

    return load_backbone(BackboneConfig(TINY_MODEL, "none"))


@pytest.fixture(scope="session")
def class_folder(tmp_path_factory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("folder") / "colours")


@pytest.fixture(scope="session")
def coop_root(tmp_path_factory) -> Path:
    return make_coop_dataset(tmp_path_factory.mktemp("coop"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKRES_CACHE", str(tmp_path / "taskres-cache"))
