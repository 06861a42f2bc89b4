"""What the feature cache's self-check costs: hash speeds, and opening an entry with and without the check.

Prints, for this machine:

1. the speed of candidate content hashes over one in-memory array (the cache uses xxh3-128);
2. for entries of ImageNet's sizes (the 50,000-image test split, and 16 shots x 1,000 classes x 10 views of
   the train split; rows of 1,024 fp32 values, RN50's width), the time to open an entry and read it whole
   (``FeatureCache.encoded``'s path), and to open it memory-mapped (``FeatureCache.mapped``'s path), with
   ``verify="full"`` and ``verify="none"``; "warm" with the shards in the page cache, "cold" after
   ``posix_fadvise(DONTNEED)`` dropped just these files from it.

The entries hold random rows written through the cache's own writer (no encoder is run); image paths are
fictitious (they only name the entry).

    python benchmarks/cache_check.py                 # both entries, medians of 5 alternating runs
    python benchmarks/cache_check.py --test-rows 5000 --views 1 --repeats 1
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import xxhash

from taskres.features import DEFAULT_SHARD_SIZE, FeatureCache, View


class _Identity:
    """What an entry's key and index need of a backbone."""

    identity = {"model": "bench", "fingerprint": "bench", "precision": "fp32"}
    augmentation = type("Aug", (), {"describe": staticmethod(lambda: "bench-aug")})()

    @staticmethod
    def test_transform_id() -> str:
        return "bench"


def hash_speeds(mb: int) -> dict[str, float]:
    data = memoryview(np.random.default_rng(0).bytes(mb << 20))
    fns = {"xxh3_128 (used)": lambda: xxhash.xxh3_128_hexdigest(data), "xxh3_64": lambda: xxhash.xxh3_64_hexdigest(data),
           "xxh64": lambda: xxhash.xxh64_hexdigest(data), "blake2b-128": lambda: hashlib.blake2b(data, digest_size=16).hexdigest(),
           "sha256": lambda: hashlib.sha256(data).hexdigest(), "crc32": lambda: zlib.crc32(data)}
    out = {}
    for name, fn in fns.items():
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out[name] = len(data) / min(times) / 1e9
    return out


def write_entry(cache: FeatureCache, rows: int, dim: int, view: View, seed: int):
    entry = cache.entry(_Identity, [f"/bench/img{i:07d}.jpg" for i in range(rows)], view)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for i in range(entry.num_shards):
        lo, hi = entry.rows(i)
        cache._save_shard(entry, i, rng.standard_normal((hi - lo, dim), dtype=np.float32), [])
    cache.finish(entry, _Identity)
    return entry, time.perf_counter() - started


def evict(files) -> None:
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def time_open(root: Path, entries, verify: str, whole: bool, cold: bool) -> float:
    cache = FeatureCache(root, verify=verify)
    files = [f for e in entries for f in e.directory.glob("shard-*.npy")]
    if cold:
        evict(files)
    started = time.perf_counter()
    for entry in entries:
        feats = cache.open(entry)
        assert feats is not None
        if whole:
            feats.to_tensor()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--test-rows", type=int, default=50_000)
    ap.add_argument("--train-rows", type=int, default=16_000)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hash-mb", type=int, default=256)
    ap.add_argument("--dir", default=None, help="where to write the entries (default: a temporary folder)")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}, "
          f"xxhash {xxhash.VERSION}")
    for name, gbs in hash_speeds(args.hash_mb).items():
        print(f"hash {name:16s} {gbs:6.2f} GB/s over {args.hash_mb} MiB in memory")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        writer = FeatureCache(root, shard_size=DEFAULT_SHARD_SIZE)
        test, secs = write_entry(writer, args.test_rows, args.dim, View(), 0)
        train = []
        for v in range(args.views):
            e, s = write_entry(writer, args.train_rows, args.dim, View("aug", v, 1), 1 + v)
            train.append(e)
            secs += s
        print(f"wrote {1 + args.views} entries in {secs:.1f} s (hashes taken from the rows in memory)")
        for label, entries in (("test split", [test]), (f"train, {args.views} views", train)):
            nbytes = sum(f.stat().st_size for e in entries for f in e.directory.glob("shard-*.npy"))
            print(f"\n{label}: {sum(e.n for e in entries):,} rows x {args.dim} fp32 = {nbytes / 1e6:,.0f} MB")
            for whole, what in ((True, "open + read whole"), (False, "open memory-mapped")):
                for cold in (False, True):
                    time_open(root, entries, "none", whole, cold)  # warm-up
                    runs = {"none": [], "full": []}
                    for r in range(args.repeats):  # alternating, so that a busy machine slows both alike
                        for verify in (("none", "full") if r % 2 == 0 else ("full", "none")):
                            runs[verify].append(time_open(root, entries, verify, whole, cold))
                    res = {k: statistics.median(v) for k, v in runs.items()}
                    extra = res["full"] - res["none"]
                    print(f"  {what:18s} {'cold' if cold else 'warm'}: none {res['none'] * 1e3:8.1f} ms, "
                          f"full {res['full'] * 1e3:8.1f} ms: the check adds {extra * 1e3:.1f} ms "
                          f"({nbytes / max(extra, 1e-9) / 1e9:.2f} GB/s of shards)")


if __name__ == "__main__":
    main()
