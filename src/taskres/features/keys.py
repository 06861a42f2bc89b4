"""Cache keys: the names of entries, made from everything that determines their features.

An entry is keyed by the backbone's identity (model name, a fingerprint of the weights, precision), the
image transform (the model's test transform, or the reference augmentation with its seed and view index),
the image list (paths, sizes and modification times) and, for fp16 storage, the storage type: a key
cannot go stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..options import cache_home

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return cache_home() / "features"


@dataclass(frozen=True)
class View:
    """Which transform an entry holds: the test transform, or augmented view ``index`` of seed ``seed``.

    ``scale`` is the RandomResizedCrop area range of an augmented view (None: the backbone's augmentation
    as it is, 0.08-1). The key names the augmentation with its scale, so views of the same scale are one
    entry whichever method asked for them.
    """

    kind: str = "test"  # "test" | "aug"
    index: int = 0
    seed: int = 0
    scale: tuple[float, float] | None = None

    def __post_init__(self):
        if self.scale is not None:  # a tuple, so that views stay hashable (a list may come from JSON)
            object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))

    def augmentation(self, base):
        """``base`` (a ReferenceAugmentation) at this view's scale."""
        return base if self.scale is None else base.with_scale(self.scale)

    def describe(self, backbone) -> str:
        if self.kind == "test":
            return f"test:{backbone.test_transform_id()}"
        if self.kind == "aug":
            return f"aug:{self.augmentation(backbone.augmentation).describe()}:seed{self.seed}:view{self.index}"
        raise ValueError(f"unknown view kind {self.kind!r}")


def _raw(text: str) -> bytes:
    """A path's own bytes: UTF-8, and a name that is not UTF-8 (held by Python as surrogate escapes) as it is
    on disk; the same bytes as before for every UTF-8 name, so existing keys and seeds do not change."""
    return text.encode("utf-8", "surrogateescape")


def path_seed(path: str) -> int:
    """A per-image seed from the file's last two path parts (class folder and name), not its absolute path:
    the same dataset gets the same augmentations wherever it is stored."""
    return zlib.crc32(_raw("/".join(Path(path).parts[-2:])))


def image_list_digest(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(_raw(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n"))
        except OSError:
            h.update(_raw(f"{p}\0missing\n"))
    return h.hexdigest()


def entry_key(backbone, paths: list[str], view: View, store: str = "fp32") -> str:
    material = {
        "version": CACHE_VERSION,
        "backbone": {k: backbone.identity[k] for k in ("model", "fingerprint", "precision", "activation")},
        "view": view.describe(backbone),
        "images": image_list_digest(paths),
        "n": len(paths),
    }
    if store != "fp32":  # fp32 entries keep the keys they had before fp16 storage existed
        material["store"] = store
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]
