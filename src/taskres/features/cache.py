"""The feature cache: sharded entries on disk, filled by encoding only what is missing, checked when read.

Entries are written shard by shard, each shard atomically after its check record (rows, type, content
hash, bad images; see ``shards``), and an entry's ``index.json`` is written last: a killed run leaves
finished shards, and the next run (on one process or many, see ``taskres.extract``) encodes only what
is missing. Shards are ``.npy`` files read back memory-mapped (:class:`CachedFeatures`);
``FeatureCache.features`` still returns the eager float32 tensor most callers want.

Reading checks every shard against its record (``verify``): a shard that fails is named in one warning,
removed and encoded again, so a run on a damaged cache gives the result of the undamaged one. A damaged
index is rebuilt from the shards' own records.

An image that gives no usable features (unreadable, or NaN/inf out of the encoder) stops the run with one
line naming the image and the reason, or (``skip_bad``) is recorded in the entry as a bad row: its row is
NaN, :class:`EncodedFeatures` / :class:`CachedFeatures` say which rows are valid, and a warning gives the
count and the first image.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..atomic import atomic_path, write_json_atomic
from ..errors import Mention, OptionError, naming
from ..datasets.base import Sample
from ..transforms import ImageError, load_image
from .extract import _ShardBatches, loader_workers, prepare_encoder
from .keys import View, entry_key
from .shards import (DEFAULT_SHARD_SIZE, STORE_DTYPES, VERIFY_MODES, BadRow, CacheEntry, CachedFeatures,
                     check_path, check_shard, read_record, shard_record, valid_record)

log = logging.getLogger("taskres")
INDEX_FORMAT = 2  # 2: every shard has a check record (1, before: none; such entries are encoded again)
VERIFY_ENV = "TASKRES_VERIFY_CACHE"
_SHARD_NAME = re.compile(r"shard-\d{5}(-last)?\.npy")
SKIP_HINT = "(use {skip_bad_images} to skip such files)"  # the CLI names the flag: see skip_hint


def skip_hint(message: str) -> ImageError:
    """An unreadable image's message and how to go on without it (``FitConfig.skip_bad_images``)."""
    return naming(ImageError, f"{message} {SKIP_HINT}",
                  skip_bad_images=Mention("FitConfig", "skip_bad_images", True))


@dataclass
class EncodedFeatures:
    """Features [N, D] (float32) of a list of images, and which rows are usable.

    ``valid[i]`` is False for an image that gave no usable features (its row is NaN); ``bad`` says why.
    """

    features: torch.Tensor
    valid: torch.Tensor
    bad: list[BadRow]


class FeatureCache:
    """Sharded on-disk features. ``root=None`` keeps nothing on disk (every call encodes).

    ``store="fp16"`` halves the disk and page-cache footprint (rows are read back as float32); it is part
    of the entry key, so fp16 and fp32 entries never mix. ``verify``: how shards are checked when read,
    "full" (header, size and content hash) or "none" (header and size only: changed bytes go unnoticed);
    None takes $TASKRES_VERIFY_CACHE, else "full".
    """

    def __init__(self, root: str | Path | None = None, shard_size: int = DEFAULT_SHARD_SIZE, store: str = "fp32",
                 verify: str | None = None):
        if int(shard_size) < 1:
            raise OptionError("shard_size", f"must be at least 1, not {shard_size}", owner="FeatureCache")
        if store not in STORE_DTYPES:
            raise OptionError("store", f"must be one of {', '.join(STORE_DTYPES)}, not {store!r}", owner="FeatureCache")
        from_env = verify is None
        if from_env:
            verify = os.environ.get(VERIFY_ENV) or "full"
        if verify not in VERIFY_MODES:
            problem = f"must be one of {', '.join(VERIFY_MODES)}, not {verify!r}"
            if from_env:  # not an option anyone passed: the environment variable is at fault
                raise ValueError(f"{VERIFY_ENV} {problem}")
            raise OptionError("verify_cache", problem, owner="FeatureCache")
        self.root = Path(root) if root is not None else None
        self.shard_size = int(shard_size)
        self.store = store
        self.verify = verify
        self._warned: set[tuple] = set()

    def entry_dir(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / key

    def entry(self, backbone, samples: Sequence[Sample | str], view: View = View()) -> CacheEntry:
        paths = [s if isinstance(s, str) else s.path for s in samples]
        key = entry_key(backbone, paths, view, self.store)
        return CacheEntry(key, paths, view, self.shard_size, self.store,
                          self.entry_dir(key) if self.root is not None else None)

    # -- reading and checking -----------------------------------------------------------------------
    def open(self, entry: CacheEntry) -> CachedFeatures | None:
        """The complete entry, checked and memory-mapped; None while it is incomplete.

        A shard that fails its check is named in a warning and removed, and so is the index: the entry is
        then incomplete, and filling it encodes just the removed shards.
        """
        if entry.directory is None or not entry.index_path.is_file():
            return None
        index = self._read_index(entry)
        if index is None:
            return None
        files = [entry.directory / name for name in index["shards"]]
        failed = [(f, why) for f, rec in zip(files, index["checks"])
                  if (why := check_shard(f, rec, self.verify == "full"))]
        if failed:
            for f, why in failed:
                self._discard(f, why)
            _remove(entry.index_path, "the index of an entry with a damaged shard")
            return None
        stale = [f for f, rec in zip(files, index["checks"]) if self._stale_verdict(entry, rec)]
        if stale:  # an image refused then reads now (or fails otherwise): its shard is encoded again
            for f in stale:
                _remove(f, "a shard with a stale verdict")
                _remove(check_path(f), "the record of a shard with a stale verdict")
            _remove(entry.index_path, "the index of an entry with a stale verdict")
            return None
        return CachedFeatures(files, [BadRow(**b) for rec in index["checks"] for b in rec["bad"]])

    def _read_index(self, entry: CacheEntry) -> dict | None:
        """The entry's index when it is well formed; else a warning, the index removed, and None."""
        try:
            index = json.loads(entry.index_path.read_text())
        except (OSError, ValueError) as exc:
            return self._drop_index(entry, f"it is not readable JSON ({type(exc).__name__})")
        if not isinstance(index, dict):
            return self._drop_index(entry, "it is not a JSON object")
        if "format" not in index and "checks" not in index and "shards" in index:
            # written before shards had check records: nothing vouches for its rows
            log.warning("feature cache entry %s predates content checks; it is encoded again", entry.directory)
            _remove(entry.index_path, "an index from before check records")
            return None
        why = _index_problem(index, entry)
        return self._drop_index(entry, why) if why else index

    def _drop_index(self, entry: CacheEntry, why: str) -> None:
        log.warning("feature cache index %s is damaged (%s); rebuilt from the entry's checked shards",
                    entry.index_path, why)
        _remove(entry.index_path, f"a damaged index ({why})")
        return None

    @staticmethod
    def _discard(shard: Path, why: str) -> None:
        log.warning("feature cache shard %s failed its check: %s; removed and encoded again", shard, why)
        _remove(shard, f"a damaged shard ({why})")
        _remove(check_path(shard), "the record of a damaged shard")

    def missing_shards(self, entry: CacheEntry, *, full: bool | None = None) -> list[int]:
        """Shards of ``entry`` without a finished file that passes its check (``full``: default per ``verify``).

        A shard without a check record of this layout is not ours (a writer killed between the two files,
        another shard size, an older cache): it is missing. One that fails its check is named and removed.
        """
        if entry.directory is None:
            return list(range(entry.num_shards))
        full = self.verify == "full" if full is None else full
        want = STORE_DTYPES[entry.store].name
        missing = []
        for i in range(entry.num_shards):
            lo, hi = entry.rows(i)
            rec = read_record(entry.check_path(i))
            if (rec is None or rec["rows"] != hi - lo or rec["dtype"] != want
                    or not all(lo <= b["row"] < hi for b in rec["bad"])):
                missing.append(i)
                continue
            shard = entry.shard_path(i)
            why = check_shard(shard, rec, full)
            if why:
                if shard.exists():  # a record without its shard is a killed writer's: nothing to report
                    self._discard(shard, why)
                missing.append(i)
            elif self._stale_verdict(entry, rec):
                _remove(shard, "a shard with a stale verdict")
                _remove(check_path(shard), "the record of a shard with a stale verdict")
                missing.append(i)
        return missing

    @staticmethod
    def _stale_verdict(entry: CacheEntry, record: dict) -> bool:
        """True when an image the record calls unreadable now reads, or fails for another reason.

        An "unreadable" verdict depends on more than the image list the key is made of: the pixel limit in
        force (--max-image-pixels), the file's permissions. So it is never trusted from the cache: each
        such image is tried again (one decode per bad image), and a changed outcome re-encodes its shard.
        """
        for bad in record["bad"]:
            if bad["kind"] != "unreadable":
                continue  # non-finite features: the encoder's answer, part of the key
            try:
                load_image(entry.paths[bad["row"]])
            except ImageError as exc:
                if str(exc) == bad["message"]:
                    continue
                log.info("feature cache: %s now fails otherwise (%s); its shard is encoded again",
                         entry.paths[bad["row"]], exc)
                return True
            log.info("feature cache: %s was unreadable when cached and reads now; its shard is encoded again",
                     entry.paths[bad["row"]])
            return True
        return False

    # -- writing ------------------------------------------------------------------------------------
    def encode(self, backbone, work: Sequence[tuple[CacheEntry, int]], *, batch_size: int = 128,
               num_workers: int | None = None, skip_bad: bool = False, progress: bool = True,
               desc: str = "encoding") -> Iterator[tuple[CacheEntry, int, np.ndarray, list[BadRow]]]:
        """Encode the shards ``work`` lists (any entries, any order), writing each as soon as it is done.

        Yields (entry, shard index, rows in the storage type, bad rows) per finished shard. One DataLoader
        serves all of them, so workers start once and keep decoding while the encoder runs; batches never
        straddle shards, so a shard is written the moment its last batch is encoded.
        """
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise OptionError("batch_size", f"must be at least 1, not {batch_size}", owner="FeatureCache")
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
        bad: list[BadRow] = []
        filled = 0
        try:
            for (job, lo, hi), images, ok, errors in loader:
                entry = entries[job]
                if not skip_bad and not bool(ok.all()):
                    raise skip_hint(next(e for e in errors if e))
                rows = backbone.encode_images(images).numpy().astype(STORE_DTYPES[entry.store], copy=False)
                batch_bad = _bad_in_batch(rows, ok.numpy(), errors, entry.paths, lo)
                if batch_bad and not skip_bad:
                    raise skip_hint(batch_bad[0].message)
                if batch_bad:
                    rows = rows.copy()  # the encoder's own buffer is not ours to change
                    rows[[b.row - lo for b in batch_bad]] = np.nan
                    bad.extend(batch_bad)
                parts.append(rows)
                filled += hi - lo
                bar.update(hi - lo)
                shard = lo // entry.shard_size
                s_lo, s_hi = entry.rows(shard)
                if filled == s_hi - s_lo:  # the shard's last batch
                    rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
                    shard_bad, parts, bad, filled = bad, [], [], 0
                    if entry.directory is not None:
                        self._save_shard(entry, shard, rows, shard_bad)
                    yield entry, shard, rows, shard_bad
        finally:
            bar.close()

    @staticmethod
    def _save_shard(entry: CacheEntry, i: int, rows: np.ndarray, bad: list[BadRow]) -> None:
        # The record first, hashed from the rows in memory: a shard file never exists without the record
        # that vouches for it (a kill between the two leaves a record without a shard: missing).
        write_json_atomic(entry.check_path(i), shard_record(rows, bad))
        with atomic_path(entry.shard_path(i)) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, rows, allow_pickle=False)

    def finish(self, entry: CacheEntry, backbone, *, clean_temp: bool = False) -> CachedFeatures:
        """Write the entry's index once every shard is on disk (the last step, by one process).

        The shards were checked in full before encoding began or written from memory since, so here their
        headers and sizes are checked, not their hashes. ``clean_temp``: also delete temporary files of
        writers killed mid-write; only safe when no other process may be writing this entry (after the
        barrier of a distributed run).
        """
        missing = self.missing_shards(entry, full=False)
        if missing:
            raise naming(
                FileNotFoundError, f"feature cache {entry.directory}: {len(missing)} shard(s) missing, e.g. "
                f"{entry.shard_name(missing[0])} (with several nodes, {{cache_dir}} must be a shared filesystem)",
                cache_dir=Mention("FitConfig", "cache_dir"))
        if clean_temp:
            for tmp in entry.directory.glob(".shard-*.tmp"):
                tmp.unlink(missing_ok=True)
        files = [entry.shard_path(i) for i in range(entry.num_shards)]
        records = [read_record(entry.check_path(i)) for i in range(entry.num_shards)]
        feats = CachedFeatures(files, [BadRow(**b) for rec in records for b in rec["bad"]])
        write_json_atomic(entry.index_path, {
            "format": INDEX_FORMAT, "n": entry.n, "dim": feats.dim, "dtype": str(feats.dtype),
            "shard_size": entry.shard_size, "shards": [f.name for f in files], "checks": records,
            "backbone": backbone.identity, "view": asdict(entry.view), "view_desc": entry.view.describe(backbone),
            "first_image": entry.paths[0], "last_image": entry.paths[-1],
        })
        return feats

    # -- one call: cached or encoded ----------------------------------------------------------------
    def encoded(self, backbone, samples: list[Sample], view: View = View(), *, batch_size: int = 128,
                num_workers: int | None = None, skip_bad: bool = False, progress: bool = True,
                desc: str = "encoding") -> EncodedFeatures:
        """Features of ``samples`` under ``view`` (from the cache, or encoded into it) and which are valid.

        Without ``skip_bad`` an image with no usable features stops the run (one line naming it and why);
        with it, its row is NaN and marked invalid, and a warning gives the count and the first image.
        """
        if not samples:
            return EncodedFeatures(torch.empty(0, backbone.embed_dim), torch.ones(0, dtype=torch.bool), [])
        paths = [s.path for s in samples]
        for attempt in range(2):
            got = self._fill(backbone, paths, view, batch_size, num_workers, skip_bad, progress, desc)
            if isinstance(got, CachedFeatures):
                got = EncodedFeatures(got.to_tensor(), got.valid, got.bad)
            if attempt or not self._drop_nonfinite(self.entry(backbone, paths, view), got):
                break
        self._report_bad(got.bad, skip_bad)
        return got

    def _drop_nonfinite(self, entry: CacheEntry, got: EncodedFeatures) -> bool:
        """Remove the shards whose rows their records call valid but hold NaN/inf (bytes changed on disk, which
        ``verify="none"`` does not hash); True when one was removed (the caller encodes them again).

        Checked on the rows already in memory, so it costs one pass over them, not a read of the files."""
        broken = ~torch.isfinite(got.features).all(dim=1) & got.valid
        if entry.directory is None or not bool(broken.any()):
            return False
        for i in sorted({int(r) // entry.shard_size for r in torch.nonzero(broken).flatten()}):
            self._discard(entry.shard_path(i), "it holds NaN/inf in rows its record calls valid (bytes changed; "
                                               "unnoticed when verify is 'none')")
        _remove(entry.index_path, "the index of an entry with a damaged shard")
        return True

    def features(self, backbone, samples: list[Sample], view: View = View(), **kwargs) -> torch.Tensor:
        """:meth:`encoded`'s features alone [N, D] (float32); rows of skipped images are NaN."""
        return self.encoded(backbone, samples, view, **kwargs).features

    def mapped(self, backbone, samples: list[Sample], view: View = View(), *, batch_size: int = 128,
               num_workers: int | None = None, skip_bad: bool = False, progress: bool = True,
               desc: str = "encoding") -> CachedFeatures:
        """Like :meth:`encoded`, but the rows stay on disk, memory-mapped (needs a cache folder)."""
        if self.root is None:
            raise OptionError("cache_dir", "must not be '': memory-mapped features need a cache folder",
                              owner="FeatureCache")
        if not samples:
            raise ValueError("no images to encode")
        paths = [s.path for s in samples]
        feats = self._fill(backbone, paths, view, batch_size, num_workers, skip_bad, progress, desc)
        self._report_bad(feats.bad, skip_bad)
        return feats

    def _fill(self, backbone, paths, view, batch_size, num_workers, skip_bad, progress, desc):
        entry = self.entry(backbone, paths, view)
        cached = self.open(entry)
        if cached is not None:
            return cached
        done = {}
        for _, i, rows, bad in self.encode(backbone, [(entry, i) for i in self.missing_shards(entry)],
                                           batch_size=batch_size, num_workers=num_workers, skip_bad=skip_bad,
                                           progress=progress, desc=desc):
            if entry.directory is None:
                done[i] = (rows, bad)
        if entry.directory is not None:
            return self.finish(entry, backbone)
        feats = torch.from_numpy(np.concatenate([done[i][0] for i in range(entry.num_shards)])
                                 .astype(np.float32, copy=False))
        bad = [b for i in range(entry.num_shards) for b in done[i][1]]
        valid = torch.ones(len(feats), dtype=torch.bool)
        valid[torch.tensor([b.row for b in bad], dtype=torch.long)] = False
        return EncodedFeatures(feats, valid, bad)

    def _report_bad(self, bad: list[BadRow], skip_bad: bool) -> None:
        if not bad:
            return
        if not skip_bad:
            raise skip_hint(bad[0].message)
        seen = (len(bad), bad[0].message, bad[-1].message)
        if seen in self._warned:  # the same images under another view or split: said once
            return
        self._warned.add(seen)
        unreadable = sum(b.kind == "unreadable" for b in bad)
        counts = [f"{unreadable} unreadable image(s)"] if unreadable else []
        if len(bad) > unreadable:
            counts.append(f"{len(bad) - unreadable} image(s) with non-finite features")
        log.warning("skipped %s, e.g. %s", " and ".join(counts), bad[0].message)


def _remove(path: Path, what: str) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # a read-only or foreign cache: say what to do instead of a traceback
        raise naming(ValueError, f"cannot remove {what}: {path} ({exc.strerror or type(exc).__name__}); delete "
                     f"the entry folder {path.parent} by hand, or use another {{cache_dir}}",
                     cache_dir=Mention("FitConfig", "cache_dir")) from None


def _bad_in_batch(rows: np.ndarray, ok: np.ndarray, errors: list[str], paths: list[str], lo: int) -> list[BadRow]:
    """The batch's images without usable features: unreadable ones, and those the encoder gave NaN/inf.

    ``rows`` are in the storage type, so a value that overflows fp16 counts as inf."""
    finite = np.isfinite(rows)
    bad = []
    for j in np.flatnonzero(~ok | ~finite.all(axis=1)):
        if not ok[j]:
            bad.append(BadRow(lo + int(j), "unreadable", errors[j]))
            continue
        nan, inf = int(np.isnan(rows[j]).sum()), int(np.isinf(rows[j]).sum())
        what = " and ".join(f"{k} in {c}" for k, c in (("NaN", nan), ("inf", inf)) if c)
        bad.append(BadRow(lo + int(j), "non-finite", f"non-finite features from the image encoder for "
                                                     f"{paths[lo + j]} ({what} of {rows.shape[1]} values)"))
    return bad


def _index_problem(index: dict, entry: CacheEntry) -> str | None:
    """What is wrong with an entry's index (None: nothing)."""
    if index.get("format") != INDEX_FORMAT:
        return f"format {index.get('format')!r}, expected {INDEX_FORMAT}"
    if index.get("n") != entry.n:
        return f"it lists {index.get('n')!r} images, the entry has {entry.n}"
    names, checks = index.get("shards"), index.get("checks")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and _SHARD_NAME.fullmatch(n)
                                                           for n in names):
        return "its shard names are not plain shard file names"
    if not isinstance(checks, list) or len(checks) != len(names) or not all(valid_record(c) for c in checks):
        return "its check records are missing or malformed"
    if sum(int(c["rows"]) for c in checks) != entry.n:
        return "its shards do not add up to the entry's images"
    if len({(int(c["dim"]), c["dtype"]) for c in checks}) != 1 or checks[0]["dtype"] != STORE_DTYPES[entry.store].name:
        return "its shards disagree on width or type"
    if not all(isinstance(b["row"], int) and 0 <= b["row"] < entry.n for c in checks for b in c["bad"]):
        return "a bad row lies outside the entry"
    return None
