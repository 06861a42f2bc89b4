"""The on-disk layout of one entry (shards of rows), the checks that keep it honest, and memory-mapped reads.

Every shard ``shard-NNNNN.npy`` has a check record (``shard-NNNNN.check.json``, copied into the entry's
``index.json`` once the entry is complete): its rows, width, storage type, an xxh3-128 hash of its data
bytes computed from the rows in memory when they were written, and the rows of its bad images with the
reason. Reading checks a shard against its record: the header and the file size always (free: the header
is a few bytes), the hash with ``verify="full"`` (reads the file once; BENCHMARKS.md has the cost).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import xxhash

from .keys import View

DEFAULT_SHARD_SIZE = 2048
STORE_DTYPES = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16)}
VERIFY_MODES = ("full", "none")  # full: header, size and content hash; none: header and size only
HASH = "xxh3_128"  # 17 GB/s on the 2-core test machine, blake2b 0.6 GB/s (BENCHMARKS.md)


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

    def check_path(self, i: int) -> Path:
        return check_path(self.shard_path(i))

    @property
    def index_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "index.json"


def check_path(shard: Path) -> Path:
    return shard.with_name(shard.name[:-len(".npy")] + ".check.json")


@dataclass(frozen=True)
class BadRow:
    """A row whose image gave no usable features: ``kind`` "unreadable" or "non-finite"; ``message``
    is one line naming the image and the reason."""

    row: int
    kind: str
    message: str


def content_hash(rows: np.ndarray) -> str:
    """xxh3-128 of an array's data bytes (C order); the same for the rows in memory and their shard on disk."""
    return xxhash.xxh3_128_hexdigest(memoryview(np.ascontiguousarray(rows)).cast("B"))


def shard_record(rows: np.ndarray, bad: Sequence[BadRow]) -> dict:
    """The check record of a shard about to be written, from its rows in memory."""
    return {"rows": int(rows.shape[0]), "dim": int(rows.shape[1]), "dtype": rows.dtype.name,
            HASH: content_hash(rows), "bad": [asdict(b) for b in bad]}


def read_record(path: Path) -> dict | None:
    """A check record, or None when it is missing or not a well-formed record."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if valid_record(rec) else None


def valid_record(rec) -> bool:
    try:
        return (isinstance(rec, dict) and int(rec["rows"]) >= 1 and int(rec["dim"]) >= 1
                and rec["dtype"] in {d.name for d in STORE_DTYPES.values()} and isinstance(rec[HASH], str)
                and all(isinstance(b, dict) and {"row", "kind", "message"} <= set(b) for b in rec["bad"]))
    except (KeyError, TypeError, ValueError):
        return False


def check_shard(path: Path, record: dict, full: bool) -> str | None:
    """Why ``path`` is not the shard ``record`` describes (None: it is).

    The header is parsed without unpickling anything; the size check catches truncation and appended
    bytes; ``full`` also hashes the data bytes. Never raises for a damaged file.
    """
    want_shape, want_dtype = (int(record["rows"]), int(record["dim"])), np.dtype(record["dtype"])
    try:
        with open(path, "rb") as fh:
            try:
                major, _ = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(fh)
            except (ValueError, SyntaxError, TypeError, OverflowError):
                return "its .npy header is unreadable"
            offset, size = fh.tell(), os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        return "the file is missing"
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or type(exc).__name__})"
    if dtype.hasobject:
        return "it holds Python objects (pickled data), which are never loaded"
    if tuple(shape) != want_shape or dtype != want_dtype or fortran:
        order = ", Fortran order" if fortran else ""
        return (f"its header says shape {tuple(shape)} {dtype}{order}, its record "
                f"{want_shape} {want_dtype}")
    expected = offset + want_shape[0] * want_shape[1] * want_dtype.itemsize
    if size != expected:
        return f"it is {size} bytes long, {expected} expected ({'truncated' if size < expected else 'extra bytes'})"
    if full:
        try:
            data = np.memmap(path, dtype=want_dtype, mode="r", offset=offset, shape=want_shape)
            digest = content_hash(data)
            del data
        except (OSError, ValueError) as exc:
            return f"it cannot be read ({exc})"
        if digest != record[HASH]:
            return "its content hash differs from the one recorded when it was written (bytes changed)"
    return None


class CachedFeatures:
    """An entry's rows [N, D] as memory-mapped shards: nothing is read until rows are asked for.

    ``rows(idx)`` gathers any rows (float32, in the order asked); ``to_tensor()`` reads all of them.
    ``bad``: the rows whose images gave no usable features (their rows are NaN), as the entry's index
    records them; without a record (shards opened by hand) rows with any non-finite value count as bad.
    """

    def __init__(self, files: Sequence[str | Path], bad: Sequence[BadRow] | None = None):
        self.files = [Path(f) for f in files]
        if not self.files:
            raise ValueError("a cache entry needs at least one shard")
        self._shards = [np.load(f, mmap_mode="r", allow_pickle=False) for f in self.files]
        for f, a in zip(self.files, self._shards):
            if a.ndim != 2 or a.shape[1] != self._shards[0].shape[1] or a.dtype != self._shards[0].dtype:
                raise ValueError(f"feature cache shard {f} has shape {a.shape} and type {a.dtype}, unlike "
                                 f"{self.files[0]}; delete the entry folder {f.parent} to rebuild it")
        self._starts = np.cumsum([0] + [len(a) for a in self._shards])
        self._bad = None if bad is None else sorted(bad, key=lambda b: b.row)

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
    def bad(self) -> list[BadRow]:
        if self._bad is None:  # no record: scan (reads every row once)
            self._bad = [BadRow(int(r) + int(lo), "non-finite", f"non-finite features in cached row {int(r) + int(lo)}")
                         for a, lo in zip(self._shards, self._starts)
                         for r in np.flatnonzero(~np.isfinite(a).all(axis=1))]
        return self._bad

    @property
    def bad_rows(self) -> np.ndarray:
        """Rows of images that gave no usable features (unreadable, or non-finite features)."""
        return np.array([b.row for b in self.bad], dtype=np.int64)

    @property
    def valid(self) -> torch.Tensor:
        """Boolean mask [N]: False for the bad rows."""
        ok = torch.ones(len(self), dtype=torch.bool)
        ok[torch.from_numpy(self.bad_rows)] = False
        return ok
