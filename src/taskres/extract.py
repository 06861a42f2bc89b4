"""``taskres extract``: encode dataset splits into the feature cache, on one process or across many.

One process::

    taskres extract --dataset caltech101 --data-root DATA --shots 16 --seed 1

Several, on one node or many (torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT; gloo on CPU, nccl on CUDA)::

    torchrun --nproc-per-node 8 -m taskres extract --dataset imagenet --data-root DATA --split train --device cuda
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m taskres extract ...      # --cache-dir must then be a filesystem every node shares

Work is cut by cache shard. Rank 0 first checks what is already cached (a damaged shard is named and
removed); then every rank lists the shards still missing over all the entries asked for; after a barrier
(so that all ranks saw the same list) item j of that list goes to rank j % world, which on a fresh
run is shard i -> rank i % world, and after a crash spreads the leftovers over all ranks. Each rank writes
its own shards (atomically); after a second barrier rank 0 checks that every shard is there and writes each
entry's index. A shard's rows do not depend on which process encoded it (batches are cut from the shard's
start), so the cache is the one a single process writes. A killed run is restarted with the same command:
finished shards are kept, only missing ones are encoded.

The entries are exactly those ``taskres fit`` reads with the same options: with ``--shots K --seed S`` the
few-shot train images (``--views`` augmented views of seed S at ``--method``'s crop scale, or the test
transform with ``--no-augment`` or for a method that trains on it) and their val images (``--search-split``);
the other splits in full with the test transform.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace

import torch

from .backbone import BackboneConfig, load_backbone
from .datasets import load_dataset, make_fewshot_split
from .errors import OptionError
from .features import (DEFAULT_SHARD_SIZE, STORE_DTYPES, CacheEntry, FeatureCache, View, loader_workers,
                       default_cache_dir)
from .options import (ALLOW_FEWER_SHOTS, AUGMENT, BATCH_SIZE, CACHE_DIR, DATA_ROOT, DIST_TIMEOUT_S, NUM_WORKERS,
                      SEARCH_SPLIT, SEED, SHOTS, SKIP_BAD_IMAGES, VERIFY_CACHE, VIEWS, Option)
from .process_group import Group, rank_device



@dataclass
class ExtractConfig:
    dataset: str
    data_root: str | None = DATA_ROOT.field()
    splits: tuple[str, ...] = ("train", "val", "test")
    shots: int | None = SHOTS.field("encode the few-shot train/val images that fit uses with these shots and seed "
                                    "(default: whole splits)")
    seed: int = SEED.field("few-shot and augmentation seed (as fit's)", default=1)
    views: int = VIEWS.field()
    augment: bool = AUGMENT.field()
    search_split: str = SEARCH_SPLIT.field("with shots: the val images of fit's search split (default: fewshot)")
    method: str = Option("taskres", "the method whose training views to encode (its crop scale; default: taskres, "
                                    "0.08-1)").field()
    allow_fewer_shots: bool = ALLOW_FEWER_SHOTS.field()
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    cache_dir: str | None = CACHE_DIR.field()
    shard_size: int = Option(DEFAULT_SHARD_SIZE, f"images per cache shard, the unit of work and of resumption "
                                                 f"(default {DEFAULT_SHARD_SIZE})", low=1).field()
    store: str = Option("fp32", "storage type; fp16 halves disk and page cache (separate entries: fit reads fp32 "
                                "ones)", choices=tuple(sorted(STORE_DTYPES))).field()
    verify_cache: str | None = VERIFY_CACHE.field()
    batch_size: int = BATCH_SIZE.field()
    num_workers: int | None = NUM_WORKERS.field()
    skip_bad_images: bool = SKIP_BAD_IMAGES.field()
    progress: bool = True
    dist_timeout_s: float = DIST_TIMEOUT_S.field()


@dataclass
class ExtractResult:
    entries: list[CacheEntry]
    encoded_shards: int  # by this rank
    encoded_images: int  # by this rank
    cached_shards: int  # already on disk when the run started (all ranks' view)
    rank: int = 0
    world: int = 1


def method_aug_scale(method: str, dataset: str):
    from .methods import METHODS

    if method not in METHODS:
        raise OptionError("method", f"{method!r} is unknown; choose from {', '.join(METHODS)}", owner="ExtractConfig")
    return METHODS[method].crop_scale(dataset)


def planned_views(cfg: ExtractConfig):
    """(description, samples, view) for every cache entry the options ask for, as ``fit`` would read them."""
    task = load_dataset(cfg.dataset, cfg.data_root)
    few = make_fewshot_split(task, cfg.shots, cfg.seed, allow_fewer=cfg.allow_fewer_shots,
                             search_split=cfg.search_split) if cfg.shots else None
    if cfg.augment and cfg.views < 1:
        raise OptionError("views", f"must be at least 1, not {cfg.views}", owner="ExtractConfig")
    for name in cfg.splits:
        if name == "train":
            samples = few.train if few else task.train
            scale = method_aug_scale(cfg.method, task.name)
            views = ([View("aug", v, cfg.seed, scale) for v in range(cfg.views)] if cfg.augment and scale is not None
                     else [View()])
        else:
            samples = few.val if (few and name == "val") else task.split(name)
            views = [View()]
        for view in views:
            label = f"{name} view {view.index + 1}/{len(views)}" if view.kind == "aug" else f"{name} (test transform)"
            if samples:
                yield label, samples, view


def extract(cfg: ExtractConfig) -> ExtractResult:
    """Encode the planned entries into the cache; under torchrun each rank takes its share of the shards."""
    if cfg.cache_dir == "":
        raise OptionError("cache_dir", "'' keeps no cache: extract needs a cache folder", owner="ExtractConfig")
    for name, value, low in (("shots", cfg.shots, 1), ("views", cfg.views, 1), ("batch_size", cfg.batch_size, 1),
                             ("shard_size", cfg.shard_size, 1), ("num_workers", cfg.num_workers, 0)):
        if value is not None and value < low:
            raise OptionError(name, f"must be at least {low}, not {value}", owner="ExtractConfig")
    group = Group.from_env()
    bcfg = replace(cfg.backbone, device=rank_device(cfg.backbone.device, group))
    if bcfg.device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_device(torch.device(bcfg.device))
    group.start(torch.device(bcfg.device), cfg.dist_timeout_s)
    try:
        return _extract(cfg, bcfg, group)
    finally:
        group.close()


def _extract(cfg: ExtractConfig, bcfg: BackboneConfig, group: Group) -> ExtractResult:
    backbone = load_backbone(bcfg)
    cache = FeatureCache(cfg.cache_dir if cfg.cache_dir is not None else default_cache_dir(), cfg.shard_size,
                         cfg.store, verify=cfg.verify_cache)
    entries, labels = [], []
    for label, samples, view in planned_views(cfg):
        entry = cache.entry(backbone, samples, view)
        if all(e.key != entry.key for e in entries):  # e.g. a split named twice
            entries.append(entry)
            labels.append(label)
    if group.rank == 0:  # one process checks what is cached (removing damaged shards), so all ranks list alike
        for e in entries:
            if cache.open(e) is None:
                cache.missing_shards(e)
    group.barrier()
    # checked in full just now: listing needs the headers and sizes only
    listing = FeatureCache(cache.root, cfg.shard_size, cfg.store, verify="none")
    todo = [e for e in entries if listing.open(e) is None]
    work = [(e, i) for e in todo for i in listing.missing_shards(e)]
    total_shards = sum(e.num_shards for e in entries)
    group.barrier()  # every rank has listed the missing shards before any rank writes one
    mine = work[group.rank::group.world]
    rows = sum(e.rows(i)[1] - e.rows(i)[0] for e, i in mine)
    # the node's cores are shared between its ranks
    workers = loader_workers(rows, cfg.batch_size, cfg.num_workers, backbone.device.type,
                              max(1, (os.cpu_count() or 1) // group.local_world))
    started = time.time()
    done = 0
    for _ in cache.encode(backbone, mine, batch_size=cfg.batch_size, num_workers=workers,
                          skip_bad=cfg.skip_bad_images, progress=cfg.progress and group.rank == 0,
                          desc=f"encoding (rank {group.rank}/{group.world})" if group.world > 1 else "encoding"):
        done += 1
    seconds = time.time() - started
    prefix = f"rank {group.rank}/{group.world}: " if group.world > 1 else ""
    print(f"{prefix}encoded {done} shard(s) ({rows} images) in {seconds:.1f} s", flush=True)
    group.barrier()  # every rank's shards are on disk
    if group.rank == 0:
        for entry, label in zip(entries, labels):
            feats = cache.finish(entry, backbone, clean_temp=True) if entry in todo else listing.open(entry)
            kinds = Counter(b.kind for b in feats.bad)  # unreadable / non-finite
            note = "".join(f", {c} {kind} image(s) skipped" for kind, c in sorted(kinds.items()))
            print(f"{label}: {entry.n} images x {feats.dim} ({entry.store}) in {entry.directory}{note}", flush=True)
        print(f"cache filled: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {total_shards} shard(s), "
              f"{total_shards - len(work)} were already cached", flush=True)
    return ExtractResult(entries, done, rows, total_shards - len(work), group.rank, group.world)
