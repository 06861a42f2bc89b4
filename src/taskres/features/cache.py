"""The feature cache: sharded entries on disk, filled by encoding only what is missing.

Entries are written shard by shard, each shard atomically, and an entry's ``index.json`` is written last:
a killed run leaves finished shards, and the next run (on one process or many, see
``taskres.distributed``) encodes only what is missing. Shards are ``.npy`` files read back memory-mapped
(:class:`CachedFeatures`); ``FeatureCache.features`` still returns the eager float32 tensor most callers
want.

Unreadable images either stop the run with a one-line error naming the file, or (``skip_bad``) give a
row of NaN that callers drop, with a warning and a count.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..datasets.base import Sample
from ..io import atomic_path, write_json_atomic
from ..transforms import ImageError
from .extract import _ShardBatches, loader_workers, prepare_encoder
from .keys import View, entry_key
from .shards import DEFAULT_SHARD_SIZE, STORE_DTYPES, CacheEntry, CachedFeatures, _npy_header

log = logging.getLogger("taskres")


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
