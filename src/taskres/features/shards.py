"""The on-disk layout of one entry (shards of rows) and reading it back memory-mapped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .keys import View

DEFAULT_SHARD_SIZE = 2048
STORE_DTYPES = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16)}


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
