"""``taskres extract``: the flags of the extract verb, turned into an ``ExtractConfig``."""

from __future__ import annotations

from ..extract import DEFAULT_VIEWS, ExtractConfig, extract
from ..features import DEFAULT_SHARD_SIZE, STORE_DTYPES
from .flags import add_backbone_args, add_data_args, backbone_config


def cmd_extract(args) -> int:
    cfg = ExtractConfig(
        dataset=args.dataset, data_root=args.data_root, splits=tuple(args.split or ("train", "val", "test")),
        shots=args.shots, seed=args.seed, views=args.views, augment=not args.no_augment, method=args.method,
        search_split=args.search_split,
        allow_fewer_shots=args.allow_fewer_shots, backbone=backbone_config(args), cache_dir=args.cache_dir,
        shard_size=args.shard_size, store=args.store, batch_size=args.batch_size, num_workers=args.workers,
        skip_bad_images=args.skip_bad_images, progress=not args.quiet, dist_timeout_s=args.dist_timeout,
        verify_cache=args.verify_cache)
    extract(cfg)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract", help="encode dataset splits into the feature cache (one process, or many under torchrun)",
        description="Encode dataset splits into the feature cache. Under torchrun (torchrun --nproc-per-node N "
                    "-m taskres extract ...) the shards are shared between the ranks; a killed run resumes.")
    add_data_args(p)
    add_backbone_args(p)
    p.add_argument("--split", action="append", default=None,
                   help="split to encode (repeatable; default: train, val and test)")
    p.add_argument("--shots", type=int, default=None,
                   help="encode the few-shot train/val images that 'fit --shots K --seed S' uses (default: whole "
                        "splits)")
    p.add_argument("--seed", type=int, default=1, help="few-shot and augmentation seed (as fit's --seed)")
    p.add_argument("--views", type=int, default=DEFAULT_VIEWS, help="augmented views of each train image")
    p.add_argument("--no-augment", action="store_true", help="train images under the test transform only")
    p.add_argument("--method", default="taskres",
                   help="the method whose training views to encode (its crop scale; default: taskres, 0.08-1)")
    p.add_argument("--search-split", default="fewshot", choices=["fewshot", "full"],
                   help="with --shots: the val images of 'fit --search-split' (default: fewshot)")
    p.add_argument("--allow-fewer-shots", action="store_true", help="as fit's --allow-fewer-shots")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help=f"images per cache shard, the unit of work and of resumption (default {DEFAULT_SHARD_SIZE})")
    p.add_argument("--store", default="fp32", choices=sorted(STORE_DTYPES),
                   help="storage type; fp16 halves disk and page cache (separate entries: fit reads fp32 ones)")
    p.add_argument("--dist-timeout", type=float, default=7200.0,
                   help="seconds a rank may wait for the others at a barrier (torchrun)")
    p.set_defaults(func=cmd_extract)
