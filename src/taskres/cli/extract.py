"""``taskres extract``: the flags of the extract verb, generated from ``ExtractConfig``'s fields."""

from __future__ import annotations

from ..extract import ExtractConfig, extract
from .flags import DATA_FIELDS, add_backbone_args, add_field_flags, add_image_limit_arg, backbone_config, field_values

# ExtractConfig's fields that are its flags: the data fields of every dataset verb, fit's few-shot draw, its own
EXTRACT_FIELDS = DATA_FIELDS + ("shots", "seed", "views", "augment", "method", "search_split", "allow_fewer_shots",
                                "shard_size", "store", "dist_timeout_s")


def cmd_extract(args) -> int:
    extract(ExtractConfig(dataset=args.dataset, splits=tuple(args.split or ("train", "val", "test")),
                          backbone=backbone_config(args), progress=not args.quiet,
                          **field_values(args, EXTRACT_FIELDS)))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract", help="encode dataset splits into the feature cache (one process, or many under torchrun)",
        description="Encode dataset splits into the feature cache. Under torchrun (torchrun --nproc-per-node N "
                    "-m taskres extract ...) the shards are shared between the ranks; a killed run resumes.")
    p.add_argument("--dataset", required=True,
                   help="a registered dataset (imagenet, caltech101, ...), a demo task (mini-*), or a folder "
                        "with one sub-folder of images per class")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_image_limit_arg(p)
    add_backbone_args(p)
    p.add_argument("--split", action="append", default=None,
                   help="split to encode (repeatable; default: train, val and test)")
    add_field_flags(p, ExtractConfig, EXTRACT_FIELDS)
    p.set_defaults(func=cmd_extract)
