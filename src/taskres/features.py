"""Image features: extraction and an on-disk cache that cannot go stale.

An entry is keyed by everything that determines its features: the backbone's identity (model name and a
fingerprint of the weights, precision), the image transform (the model's test transform, or the reference
augmentation with its seed and view index), and the image list (paths, sizes and modification times).
Entries are written shard by shard, each shard atomically, and an entry's ``index.json`` is written last:
a killed run leaves finished shards, and the next run encodes only what is missing.

Unreadable images either stop the run with a one-line error naming the file, or (``skip_bad``) give a
row of NaN that callers drop, with a warning and a count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .datasets.base import Sample
from .io import atomic_path, write_json_atomic
from .transforms import ImageError, load_image, sample_seed

log = logging.getLogger("taskres")
CACHE_VERSION = 1
DEFAULT_SHARD_SIZE = 2048


def default_cache_dir() -> Path:
    return Path(os.environ.get("TASKRES_CACHE", Path.home() / ".cache" / "taskres")) / "features"


@dataclass(frozen=True)
class View:
    """Which transform an entry holds: the test transform, or augmented view ``index`` of seed ``seed``."""

    kind: str = "test"  # "test" | "aug"
    index: int = 0
    seed: int = 0

    def describe(self, backbone) -> str:
        if self.kind == "test":
            return f"test:{backbone.test_transform_id()}"
        if self.kind == "aug":
            return f"aug:{backbone.augmentation.describe()}:seed{self.seed}:view{self.index}"
        raise ValueError(f"unknown view kind {self.kind!r}")


def path_seed(path: str) -> int:
    return zlib.crc32(path.encode())


class _ImageList(Dataset):
    def __init__(self, paths: list[str], transform, view: View, size: int):
        self.paths, self.transform, self.view, self.size = paths, transform, view, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            img = load_image(path)
        except ImageError as exc:
            return torch.zeros(3, self.size, self.size), False, str(exc)
        if self.view.kind == "aug":
            x = self.transform(img, sample_seed(self.view.seed, self.view.index, path_seed(path)))
        else:
            x = self.transform(img)
        return x, True, ""


def image_list_digest(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


def entry_key(backbone, paths: list[str], view: View) -> str:
    material = {
        "version": CACHE_VERSION,
        "backbone": {k: backbone.identity[k] for k in ("model", "fingerprint", "precision")},
        "view": view.describe(backbone),
        "images": image_list_digest(paths),
        "n": len(paths),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def _loader_workers(n: int, batch_size: int, requested: int | None) -> int:
    if requested is not None:
        return requested
    return 0 if n <= 2 * batch_size else min(8, os.cpu_count() or 1)


class FeatureCache:
    """Sharded on-disk features. ``root=None`` keeps nothing on disk (every call encodes)."""

    def __init__(self, root: str | Path | None = None, shard_size: int = DEFAULT_SHARD_SIZE):
        self.root = Path(root) if root is not None else None
        self.shard_size = shard_size

    def entry_dir(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / key

    def features(self, backbone, samples: list[Sample], view: View = View(), *, batch_size: int = 128,
                 num_workers: int | None = None, skip_bad: bool = False, progress: bool = True,
                 desc: str = "encoding") -> torch.Tensor:
        """Features [N, D] (float32) of ``samples`` under ``view``; rows of skipped images are NaN."""
        paths = [s.path for s in samples]
        if not paths:
            return torch.empty(0, backbone.embed_dim)
        key = entry_key(backbone, paths, view)
        if self.root is not None:
            cached = self._load(key, len(paths))
            if cached is not None:
                _report_bad(cached, paths, skip_bad)
                return cached
        feats = self._encode(backbone, paths, view, key, batch_size, num_workers, skip_bad, progress, desc)
        _report_bad(feats, paths, skip_bad)
        return feats

    # -- storage ------------------------------------------------------------------------------------
    def _load(self, key: str, n: int) -> torch.Tensor | None:
        index_file = self.entry_dir(key) / "index.json"
        if not index_file.is_file():
            return None
        index = json.loads(index_file.read_text())
        if index.get("n") != n:
            return None
        parts = [np.load(self.entry_dir(key) / name, allow_pickle=False) for name in index["shards"]]
        return torch.from_numpy(np.concatenate(parts).astype(np.float32, copy=False))

    def _shard_path(self, key: str, i: int) -> Path:
        return self.entry_dir(key) / f"shard-{i:05d}.npy"

    def _encode(self, backbone, paths, view, key, batch_size, num_workers, skip_bad, progress, desc):
        from tqdm.auto import tqdm

        n = len(paths)
        shard = self.shard_size
        num_shards = (n + shard - 1) // shard
        done: dict[int, np.ndarray] = {}
        if self.root is not None:
            for i in range(num_shards):
                p = self._shard_path(key, i)
                if p.is_file():
                    done[i] = np.load(p, allow_pickle=False)
        todo = [i for i in range(num_shards) if i not in done]
        transform = backbone.augmentation if view.kind == "aug" else backbone.preprocess
        bar = tqdm(total=n, initial=n - sum(min(shard, n - i * shard) for i in todo), desc=desc, unit="img",
                   disable=not progress, leave=False)
        for i in todo:
            lo, hi = i * shard, min(n, (i + 1) * shard)
            done[i] = self._encode_range(backbone, paths[lo:hi], view, transform, batch_size, num_workers,
                                         skip_bad, bar)
            if self.root is not None:
                with atomic_path(self._shard_path(key, i)) as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, done[i], allow_pickle=False)
        bar.close()
        feats = np.concatenate([done[i] for i in range(num_shards)])
        if self.root is not None:
            write_json_atomic(self.entry_dir(key) / "index.json", {
                "n": n, "dim": int(feats.shape[1]), "shards": [self._shard_path(key, i).name for i in
                                                               range(num_shards)],
                "backbone": backbone.identity, "view": asdict(view), "view_desc": view.describe(backbone),
                "first_image": paths[0], "last_image": paths[-1],
            })
        return torch.from_numpy(feats)

    @staticmethod
    def _encode_range(backbone, paths, view, transform, batch_size, num_workers, skip_bad, bar) -> np.ndarray:
        ds = _ImageList(paths, transform, view, backbone.image_size)
        workers = _loader_workers(len(paths), batch_size, num_workers)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                            pin_memory=backbone.device.type == "cuda", persistent_workers=False)
        out = []
        for images, ok, errors in loader:
            if not bool(ok.all()):
                bad = [e for e, good in zip(errors, ok.tolist()) if not good]
                if not skip_bad:
                    raise ImageError(f"{bad[0]} (pass --skip-bad-images to skip such files)")
            feats = backbone.encode_images(images)
            feats[~ok] = float("nan")
            out.append(feats.numpy())
            bar.update(len(images))
        return np.concatenate(out)


def _report_bad(feats: torch.Tensor, paths: list[str], skip_bad: bool) -> None:
    bad = torch.isnan(feats[:, 0]).nonzero().flatten().tolist() if len(feats) else []
    if not bad:
        return
    if not skip_bad:
        raise ImageError(f"unreadable or corrupt image: {paths[bad[0]]} (pass --skip-bad-images to skip such "
                         "files)")
    log.warning("skipped %d unreadable image(s), e.g. %s", len(bad), paths[bad[0]])


def valid_rows(feats: torch.Tensor) -> torch.Tensor:
    """Boolean mask of rows whose image could be read."""
    return ~torch.isnan(feats).any(dim=1)


# -- training sources: what a method sees of the training images --------------------------------------
class CachedViews:
    """Training features from V cached augmented views: each epoch, each image shows one random view."""

    def __init__(self, views: torch.Tensor, labels: torch.Tensor, seed: int = 0):
        if views.dim() == 2:
            views = views.unsqueeze(0)
        self.views = views  # [V, N, D]
        self.labels = labels
        self.seed = seed
        self._epoch = None
        self._choice = None

    @property
    def num_samples(self) -> int:
        return self.views.shape[1]

    @property
    def dim(self) -> int:
        return self.views.shape[2]

    @property
    def num_views(self) -> int:
        return self.views.shape[0]

    def view_choice(self, epoch: int) -> torch.Tensor:
        """Which view each image shows in ``epoch`` (its own generator: the batch order is unaffected)."""
        if self._epoch != epoch:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, 7))
            self._choice = torch.randint(self.num_views, (self.num_samples,), generator=g)
            self._epoch = epoch
        return self._choice

    def features(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        if self.num_views == 1:
            return self.views[0, idx]
        return self.views[self.view_choice(epoch)[idx], idx]


class OnlineAugmented:
    """The reference regime: every step loads its images, augments them afresh and encodes them."""

    def __init__(self, backbone, samples: list[Sample], seed: int = 0, augment: bool = True):
        self.backbone = backbone
        self.samples = samples
        self.labels = torch.tensor([s.label for s in samples])
        self.seed = seed
        self.augment = augment
        self._images: dict[int, object] = {}

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    @property
    def dim(self) -> int:
        return self.backbone.embed_dim

    def _image(self, i: int):
        if i not in self._images:  # few-shot sets are small: keep the decoded images
            self._images[i] = load_image(self.samples[i].path)
        return self._images[i]

    def features(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        batch = []
        for i in idx.tolist():
            img = self._image(i)
            if self.augment:
                seed = sample_seed(self.seed, 1000003 + epoch, path_seed(self.samples[i].path))
                batch.append(self.backbone.augmentation(img, seed))
            else:
                batch.append(self.backbone.preprocess(img))
        return self.backbone.encode_images(torch.stack(batch))
