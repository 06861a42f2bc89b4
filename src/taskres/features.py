"""Image features: extraction and an on-disk cache that cannot go stale.

An entry is keyed by everything that determines its features: the backbone's identity (model name and a
fingerprint of the weights, precision), the image transform (the model's test transform, or the reference
augmentation with its seed and view index), the image list (paths, sizes and modification times) and,
for fp16 storage, the storage type. Entries are written shard by shard, each shard atomically, and an
entry's ``index.json`` is written last: a killed run leaves finished shards, and the next run (on one
process or many, see ``taskres.distributed``) encodes only what is missing.

Shards are ``.npy`` files read back memory-mapped (:class:`CachedFeatures`), so an entry larger than RAM
is usable row by row; ``FeatureCache.features`` still returns the eager float32 tensor most callers want.

Unreadable images either stop the run with a one-line error naming the file, or (``skip_bad``) give a
row of NaN that callers drop, with a warning and a count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .datasets.base import Sample
from .io import atomic_path, write_json_atomic
from .transforms import ImageError, load_image, sample_seed

log = logging.getLogger("taskres")
CACHE_VERSION = 1
DEFAULT_SHARD_SIZE = 2048
STORE_DTYPES = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16)}


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
    """A per-image seed from the file's last two path parts (class folder and name), not its absolute path:
    the same dataset gets the same augmentations wherever it is stored."""
    return zlib.crc32("/".join(Path(path).parts[-2:]).encode())


def image_list_digest(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


def entry_key(backbone, paths: list[str], view: View, store: str = "fp32") -> str:
    material = {
        "version": CACHE_VERSION,
        "backbone": {k: backbone.identity[k] for k in ("model", "fingerprint", "precision")},
        "view": view.describe(backbone),
        "images": image_list_digest(paths),
        "n": len(paths),
    }
    if store != "fp32":  # fp32 entries keep the keys they had before fp16 storage existed
        material["store"] = store
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def loader_workers(n: int, batch_size: int, requested: int | None, device_type: str = "cpu",
                    cpus: int | None = None) -> int:
    if requested is not None:
        return requested
    cpus = cpus or os.cpu_count() or 1
    if n <= 2 * batch_size:
        return 0
    # A GPU encoder outruns a handful of decoders: give them every core but the one feeding the GPU.
    # On a CPU the encoder needs the cores itself; a few workers keep up with it.
    return max(1, min(32, cpus - 1)) if device_type == "cuda" else min(8, cpus)


@dataclass(eq=False)
class CacheEntry:
    """The features of one image list under one view: where they live and how they are cut into shards."""

    key: str
    paths: list[str]
    view: View
    shard_size: int
    store: str
    directory: Path | None  # None: nothing on disk

    @property
    def n(self) -> int:
        return len(self.paths)

    @property
    def num_shards(self) -> int:
        return (self.n + self.shard_size - 1) // self.shard_size

    def rows(self, i: int) -> tuple[int, int]:
        return i * self.shard_size, min(self.n, (i + 1) * self.shard_size)

    def shard_name(self, i: int) -> str:
        # A short last shard is named apart: then a file's name and row count pin down its rows, so a
        # resumed run with another shard size can never mistake another layout's shard for its own.
        last = "-last" if i == self.num_shards - 1 and self.num_shards > 1 else ""
        return f"shard-{i:05d}{last}.npy"

    def shard_path(self, i: int) -> Path:
        assert self.directory is not None
        return self.directory / self.shard_name(i)

    @property
    def index_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "index.json"


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """(shape, dtype) from an .npy header without reading the data; None when unreadable."""
    try:
        with open(path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
        return tuple(shape), np.dtype(dtype)
    except (OSError, ValueError):
        return None


class CachedFeatures:
    """An entry's rows [N, D] as memory-mapped shards: nothing is read until rows are asked for.

    ``rows(idx)`` gathers any rows (float32, in the order asked); ``to_tensor()`` reads all of them.
    """

    def __init__(self, files: Sequence[str | Path], bad_rows: Sequence[int] | None = None):
        self.files = [Path(f) for f in files]
        if not self.files:
            raise ValueError("a cache entry needs at least one shard")
        self._shards = [np.load(f, mmap_mode="r", allow_pickle=False) for f in self.files]
        for f, a in zip(self.files, self._shards):
            if a.ndim != 2 or a.shape[1] != self._shards[0].shape[1] or a.dtype != self._shards[0].dtype:
                raise ValueError(f"feature cache shard {f} has shape {a.shape} and type {a.dtype}, unlike "
                                 f"{self.files[0]}; delete the entry folder {f.parent} to rebuild it")
        self._starts = np.cumsum([0] + [len(a) for a in self._shards])
        self._bad_rows = None if bad_rows is None else np.asarray(bad_rows, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def dim(self) -> int:
        return int(self._shards[0].shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    @property
    def dtype(self) -> np.dtype:
        """The storage type (float32 or float16); rows come back as float32 either way."""
        return self._shards[0].dtype

    def rows(self, idx) -> torch.Tensor:
        """Rows ``idx`` (any order, repeats allowed) as a float32 tensor [len(idx), D]."""
        idx = np.asarray(idx.cpu().numpy() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} cached rows")
        idx = np.where(idx < 0, idx + n, idx)
        out = np.empty((len(idx), self.dim), dtype=np.float32)
        if len(self._shards) == 1:
            out[:] = self._shards[0][idx]
            return torch.from_numpy(out)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        order = np.argsort(shard_of, kind="stable")  # one fancy index per shard touched, not per row
        cuts = np.flatnonzero(np.diff(shard_of[order])) + 1
        for group in np.split(order, cuts):
            if len(group):
                s = int(shard_of[group[0]])
                out[group] = self._shards[s][idx[group] - self._starts[s]]
        return torch.from_numpy(out)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            return self.rows(np.arange(len(self))[key])
        if isinstance(key, (int, np.integer)):
            return self.rows([key])[0]
        return self.rows(key)

    def to_tensor(self) -> torch.Tensor:
        """Every row, read into one float32 tensor [N, D]."""
        out = np.empty(self.shape, dtype=np.float32)
        for a, lo in zip(self._shards, self._starts):
            out[lo:lo + len(a)] = a
        return torch.from_numpy(out)

    @property
    def bad_rows(self) -> np.ndarray:
        """Rows of images that could not be read (NaN rows)."""
        if self._bad_rows is None:
            self._bad_rows = np.concatenate([np.flatnonzero(np.isnan(a[:, 0])) + lo
                                             for a, lo in zip(self._shards, self._starts)])
        return self._bad_rows


@contextlib.contextmanager
def _one_thread():
    """Per-image transforms run on tiny tensors: torch's intra-op threads only add overhead to them (13x
    slower with 2 threads than with 1 on a busy 2-core machine). DataLoader workers already use one thread;
    this covers transforms run in the main process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _ShardBatches(Dataset):
    """Whole batches for the DataLoader's workers: item (job, lo, hi) is rows lo..hi of entry ``job``.

    Decoding and transforms run in the workers; the main process only moves finished batches to the encoder.
    """

    def __init__(self, entries: list[CacheEntry], backbone, cast: torch.dtype | None):
        self.entries = entries
        self.test_transform = backbone.preprocess
        self.augmentation = backbone.augmentation
        self.size = backbone.image_size
        self.cast = cast

    def _image(self, path: str, view: View) -> tuple[torch.Tensor, str]:
        try:
            img = load_image(path)
        except ImageError as exc:
            return torch.zeros(3, self.size, self.size), str(exc)
        if view.kind == "aug":
            return self.augmentation(img, sample_seed(view.seed, view.index, path_seed(path))), ""
        return self.test_transform(img), ""

    def __getitem__(self, item):
        job, lo, hi = item
        entry = self.entries[job]
        with _one_thread():
            pairs = [self._image(p, entry.view) for p in entry.paths[lo:hi]]
            images = torch.stack([x for x, _ in pairs])
            if self.cast is not None:
                images = images.to(self.cast)
        errors = [e for _, e in pairs]
        ok = torch.tensor([not e for e in errors], dtype=torch.bool)
        return item, images, ok, errors


def prepare_encoder(backbone) -> torch.dtype | None:
    """Tune the frozen image encoder for bulk extraction; returns the dtype images may travel in.

    On CUDA: cuDNN picks its fastest kernels for the fixed input size, and convolutional towers (RN50 and
    kin) run channels-last (the layout tensor cores want; weights converted once, inputs follow). Under
    fp16/bf16 autocast the first layer casts its input anyway, so images cross to the GPU in that type,
    halving the copy. On CPU nothing changes.
    """
    if backbone.device.type != "cuda":
        return None
    torch.backends.cudnn.benchmark = True
    visual = backbone.model.visual
    if sum(isinstance(m, torch.nn.Conv2d) for m in visual.modules()) > 1:  # a ViT has one (patch embedding)
        visual.to(memory_format=torch.channels_last)
    return None if backbone.dtype == torch.float32 else backbone.dtype


class FeatureCache:
    """Sharded on-disk features. ``root=None`` keeps nothing on disk (every call encodes).

    ``store="fp16"`` halves the disk and page-cache footprint (rows are read back as float32); it is part
    of the entry key, so fp16 and fp32 entries never mix.
    """

    def __init__(self, root: str | Path | None = None, shard_size: int = DEFAULT_SHARD_SIZE, store: str = "fp32"):
        if int(shard_size) < 1:
            raise ValueError(f"--shard-size must be at least 1, not {shard_size}")
        if store not in STORE_DTYPES:
            raise ValueError(f"--store must be one of {', '.join(STORE_DTYPES)}, not {store!r}")
        self.root = Path(root) if root is not None else None
        self.shard_size = int(shard_size)
        self.store = store

    def entry_dir(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / key

    def entry(self, backbone, samples: Sequence[Sample | str], view: View = View()) -> CacheEntry:
        paths = [s if isinstance(s, str) else s.path for s in samples]
        key = entry_key(backbone, paths, view, self.store)
        return CacheEntry(key, paths, view, self.shard_size, self.store,
                          self.entry_dir(key) if self.root is not None else None)

    # -- reading ------------------------------------------------------------------------------------
    def open(self, entry: CacheEntry) -> CachedFeatures | None:
        """The complete entry, memory-mapped; None while it is incomplete (no index, or a shard gone)."""
        if entry.directory is None or not entry.index_path.is_file():
            return None
        try:
            index = json.loads(entry.index_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # unreadable index: the entry is rebuilt (its shards are kept when they check out)
        if index.get("n") != entry.n:
            return None
        names = index.get("shards", [])
        if any(Path(name).name != name for name in names):
            raise ValueError(f"{entry.index_path}: shard names must be plain file names; delete the entry "
                             "folder to rebuild it")
        files = [entry.directory / name for name in names]
        if not files or not all(f.is_file() for f in files):
            return None
        feats = CachedFeatures(files, index.get("bad_rows"))
        return feats if len(feats) == entry.n else None

    def missing_shards(self, entry: CacheEntry) -> list[int]:
        """Shards of ``entry`` without a finished file of the right rows and storage type."""
        if entry.directory is None:
            return list(range(entry.num_shards))
        want = STORE_DTYPES[entry.store]
        missing = []
        for i in range(entry.num_shards):
            head = _npy_header(entry.shard_path(i)) if entry.shard_path(i).is_file() else None
            lo, hi = entry.rows(i)
            if head is None or len(head[0]) != 2 or head[0][0] != hi - lo or head[1] != want:
                missing.append(i)
        return missing

    # -- writing ------------------------------------------------------------------------------------
    def encode(self, backbone, work: Sequence[tuple[CacheEntry, int]], *, batch_size: int = 128,
               num_workers: int | None = None, skip_bad: bool = False, progress: bool = True,
               desc: str = "encoding") -> Iterator[tuple[CacheEntry, int, np.ndarray]]:
        """Encode the shards ``work`` lists (any entries, any order), writing each as soon as it is done.

        Yields (entry, shard index, rows in the storage type) per finished shard. One DataLoader serves all
        of them, so workers start once and keep decoding while the encoder runs; batches never straddle
        shards, so a shard is written the moment its last batch is encoded.
        """
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, not {batch_size}")
        if not work:
            return
        entries: list[CacheEntry] = []
        job_of: dict[int, int] = {}
        specs, total = [], 0
        for entry, i in work:
            job = job_of.setdefault(id(entry), len(entries))
            if job == len(entries):
                entries.append(entry)
            lo, hi = entry.rows(i)
            specs.extend((job, b, min(hi, b + batch_size)) for b in range(lo, hi, batch_size))
            total += hi - lo
        cast = prepare_encoder(backbone)
        workers = loader_workers(total, batch_size, num_workers, backbone.device.type)
        loader = DataLoader(_ShardBatches(entries, backbone, cast), batch_size=None, sampler=specs,
                            num_workers=workers, pin_memory=backbone.device.type == "cuda")
        bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
        parts: list[np.ndarray] = []
        filled = 0
        try:
            for (job, lo, hi), images, ok, errors in loader:
                if not bool(ok.all()):
                    if not skip_bad:
                        bad = next(e for e in errors if e)
                        raise ImageError(f"{bad} (pass --skip-bad-images to skip such files)")
                feats = backbone.encode_images(images)
                feats[~ok] = float("nan")
                parts.append(feats.numpy())
                filled += hi - lo
                bar.update(hi - lo)
                entry = entries[job]
                shard = lo // entry.shard_size
                s_lo, s_hi = entry.rows(shard)
                if filled == s_hi - s_lo:  # the shard's last batch
                    rows = np.concatenate(parts).astype(STORE_DTYPES[entry.store], copy=False)
                    parts, filled = [], 0
                    if entry.directory is not None:
                        self._save_shard(entry, shard, rows)
                    yield entry, shard, rows
        finally:
            bar.close()

    @staticmethod
    def _save_shard(entry: CacheEntry, i: int, rows: np.ndarray) -> None:
        with atomic_path(entry.shard_path(i)) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, rows, allow_pickle=False)

    def finish(self, entry: CacheEntry, backbone, *, clean_temp: bool = False) -> CachedFeatures:
        """Write the entry's index once every shard is on disk (the last step, by one process).

        ``clean_temp``: also delete temporary files of writers killed mid-write; only safe when no other
        process may be writing this entry (after the barrier of a distributed run).
        """
        missing = self.missing_shards(entry)
        if missing:
            raise FileNotFoundError(
                f"feature cache {entry.directory}: {len(missing)} shard(s) missing, e.g. "
                f"{entry.shard_name(missing[0])} (with several nodes, --cache-dir must be a shared filesystem)")
        if clean_temp:
            for tmp in entry.directory.glob(".shard-*.tmp"):
                tmp.unlink(missing_ok=True)
        files = [entry.shard_path(i) for i in range(entry.num_shards)]
        feats = CachedFeatures(files)
        write_json_atomic(entry.index_path, {
            "n": entry.n, "dim": feats.dim, "dtype": str(feats.dtype), "shard_size": entry.shard_size,
            "shards": [f.name for f in files], "bad_rows": feats.bad_rows.tolist(),
            "backbone": backbone.identity, "view": asdict(entry.view), "view_desc": entry.view.describe(backbone),
            "first_image": entry.paths[0], "last_image": entry.paths[-1],
        })
        return feats

    # -- one call: cached or encoded ----------------------------------------------------------------
    def features(self, backbone, samples: list[Sample], view: View = View(), *, batch_size: int = 128,
                 num_workers: int | None = None, skip_bad: bool = False, progress: bool = True,
                 desc: str = "encoding") -> torch.Tensor:
        """Features [N, D] (float32) of ``samples`` under ``view``; rows of skipped images are NaN."""
        if not samples:
            return torch.empty(0, backbone.embed_dim)
        paths = [s.path for s in samples]
        feats = self._fill(backbone, paths, view, batch_size, num_workers, skip_bad, progress, desc,
                           eager=True)
        _report_bad(feats, paths, skip_bad)
        return feats

    def mapped(self, backbone, samples: list[Sample], view: View = View(), *, batch_size: int = 128,
               num_workers: int | None = None, skip_bad: bool = False, progress: bool = True,
               desc: str = "encoding") -> CachedFeatures:
        """Like :meth:`features`, but the rows stay on disk, memory-mapped (needs a cache folder)."""
        if self.root is None:
            raise ValueError("memory-mapped features need a cache folder (--cache-dir must not be '')")
        if not samples:
            raise ValueError("no images to encode")
        paths = [s.path for s in samples]
        feats = self._fill(backbone, paths, view, batch_size, num_workers, skip_bad, progress, desc,
                           eager=False)
        bad = feats.bad_rows
        if len(bad):
            _report_bad_rows(bad.tolist(), paths, skip_bad)
        return feats

    def _fill(self, backbone, paths, view, batch_size, num_workers, skip_bad, progress, desc, eager):
        entry = self.entry(backbone, paths, view)
        cached = self.open(entry)
        if cached is None:
            todo = self.missing_shards(entry)
            done = {}
            for _, i, rows in self.encode(backbone, [(entry, i) for i in todo], batch_size=batch_size,
                                          num_workers=num_workers, skip_bad=skip_bad, progress=progress,
                                          desc=desc):
                if entry.directory is None:
                    done[i] = rows
            if entry.directory is None:
                return torch.from_numpy(np.concatenate([done[i] for i in range(entry.num_shards)])
                                        .astype(np.float32, copy=False))
            cached = self.finish(entry, backbone)
        return cached.to_tensor() if eager else cached


def _report_bad(feats: torch.Tensor, paths: list[str], skip_bad: bool) -> None:
    bad = torch.isnan(feats[:, 0]).nonzero().flatten().tolist() if len(feats) else []
    _report_bad_rows(bad, paths, skip_bad)


def _report_bad_rows(bad: list[int], paths: list[str], skip_bad: bool) -> None:
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
def _view_choice(seed: int, epoch: int, num_views: int, num_samples: int) -> torch.Tensor:
    """Which view each image shows in ``epoch`` (its own generator: the batch order is unaffected)."""
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, 7))
    return torch.randint(num_views, (num_samples,), generator=g)


class _ViewChoice:
    """Which view each image shows in an epoch, drawn once per epoch (shared by the cached sources)."""

    seed: int
    _epoch: int | None = None
    _choice: torch.Tensor | None = None

    def view_choice(self, epoch: int) -> torch.Tensor:
        if self._epoch != epoch:
            self._choice = _view_choice(self.seed, epoch, self.num_views, self.num_samples)
            self._epoch = epoch
        return self._choice


class CachedViews(_ViewChoice):
    """Training features from V cached augmented views: each epoch, each image shows one random view."""

    def __init__(self, views: torch.Tensor, labels: torch.Tensor, seed: int = 0):
        if views.dim() == 2:
            views = views.unsqueeze(0)
        self.views = views  # [V, N, D]
        self.labels = labels
        self.seed = seed

    @property
    def num_samples(self) -> int:
        return self.views.shape[1]

    @property
    def dim(self) -> int:
        return self.views.shape[2]

    @property
    def num_views(self) -> int:
        return self.views.shape[0]

    def features(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        if self.num_views == 1:
            return self.views[0, idx]
        return self.views[self.view_choice(epoch)[idx], idx]


class MappedViews(_ViewChoice):
    """:class:`CachedViews` whose V views stay on disk: each batch gathers its rows from memory-mapped shards.

    Memory holds one batch, not [V, N, D], so the training set may be larger than RAM. The view each image
    shows in an epoch is drawn exactly as CachedViews draws it: the same cache and seed give the same
    batches. ``labels`` are aligned with the cached rows; rows that are NaN in any view (unreadable
    images) are dropped. ``device``: where batches (and labels) are delivered.
    """

    def __init__(self, views: Sequence[CachedFeatures], labels: torch.Tensor, seed: int = 0,
                 device: str | torch.device = "cpu"):
        if not views:
            raise ValueError("MappedViews needs at least one view")
        n = len(views[0])
        if any(len(v) != n or v.dim != views[0].dim for v in views) or len(labels) != n:
            raise ValueError("every view and the labels must have the same number of rows")
        bad = np.unique(np.concatenate([v.bad_rows for v in views]))
        self._rows = np.setdiff1d(np.arange(n), bad) if len(bad) else None
        self.mapped = list(views)  # deliberately not ``views``: that name means an in-memory [V, N, D] tensor
        self.device = torch.device(device)
        kept = labels if self._rows is None else labels[torch.from_numpy(self._rows)]
        self.labels = kept.to(self.device)
        self.seed = seed

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return self.mapped[0].dim

    @property
    def num_views(self) -> int:
        return len(self.mapped)

    def features(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        idx = idx.cpu()
        rows = idx.numpy() if self._rows is None else self._rows[idx.numpy()]
        if self.num_views == 1:
            out = self.mapped[0].rows(rows)
        else:
            choice = self.view_choice(epoch)[idx].numpy()
            out = torch.empty(len(rows), self.dim)
            for v in np.unique(choice):
                sel = np.flatnonzero(choice == v)
                out[torch.from_numpy(sel)] = self.mapped[v].rows(rows[sel])
        return out.to(self.device, non_blocking=True)


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
        with _one_thread():
            for i in idx.tolist():
                img = self._image(i)
                if self.augment:
                    seed = sample_seed(self.seed, 1000003 + epoch, path_seed(self.samples[i].path))
                    batch.append(self.backbone.augmentation(img, seed))
                else:
                    batch.append(self.backbone.preprocess(img))
            batch = torch.stack(batch)
        return self.backbone.encode_images(batch)
