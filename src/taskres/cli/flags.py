"""The flag groups several verbs share (data, encoding, backbone, image limit) and the configs they make."""

from __future__ import annotations

import argparse

from ..backbone import BackboneConfig
from ..errors import OptionError
from ..transforms import MAX_PIXELS_ENV


# Flags not spelled ``--`` + the field's name with dashes: field -> flag, or (owner, field) -> flag.
FLAG_NAMES = {"num_workers": "--workers", "eval_splits": "--eval-split", "method_params": "--set",
              "augment": "--no-augment", "progress": "--quiet", "dist_timeout_s": "--dist-timeout", "splits": "--split",
              ("predict", "k"): "--top"}


def flag_of(exc: OptionError) -> str:
    """The flag a user typed for the option an OptionError names (``--set NAME`` for a method parameter)."""
    if exc.method is not None:
        return f"--set {exc.field}"
    return (FLAG_NAMES.get((exc.owner, exc.field)) or FLAG_NAMES.get(exc.field)
            or "--" + exc.field.replace("_", "-"))


def add_backbone_args(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", default="taskres-mini" if defaults else None,
                   help="open_clip model name (RN50, ViT-B-16, ...) or hf-hub:ORG/REPO (default: the embedded "
                        "taskres-mini)")
    g.add_argument("--pretrained", default="default" if defaults else None,
                   help="weights: a tag (openai, laion2b_s34b_b79k, ...), a checkpoint file, or 'none' for random "
                        "weights (default: openai, or the packaged weights of taskres-mini)")
    g.add_argument("--device", default="cpu" if defaults else None, help="cpu or cuda[:N]")
    g.add_argument("--precision", default="fp32" if defaults else None, choices=["fp32", "fp16", "bf16"])
    g.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                   help="the weights were trained with QuickGELU (--no-quick-gelu: nn.GELU); only for a checkpoint "
                        "file that cannot say (tags, OpenAI's .pt archives and -quickgelu names are known)")


def backbone_config(args) -> BackboneConfig | None:
    if args.backbone is None:
        return None
    return BackboneConfig(args.backbone, args.pretrained or "default", args.device or "cpu",
                          args.precision or "fp32", getattr(args, "quick_gelu", None))


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True,
                   help="a registered dataset (imagenet, caltech101, ...), a demo task (mini-*), or a folder "
                        "with one sub-folder of images per class")
    p.add_argument("--data-root", default=None, help="the folder holding the CoOp dataset layout")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache (default: $TASKRES_CACHE/features or ~/.cache/taskres/features; '' for "
                        "none)")
    p.add_argument("--batch-size", type=int, default=128, help="images per encoder batch")
    p.add_argument("--workers", type=int, default=None, help="image decoding workers (default: automatic)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip images without usable features (unreadable, or NaN/inf out of the encoder) with "
                        "a warning and a count instead of stopping")
    p.add_argument("--verify-cache", default=None, choices=["full", "none"],
                   help="check cached shards when read: full (header, size and content hash; default) or none "
                        "(header and size only: changed bytes go unnoticed); default: $TASKRES_VERIFY_CACHE")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_image_limit_arg(p)


def add_image_limit_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                   help=f"refuse images of more than N pixels (default: ${MAX_PIXELS_ENV} or 89478485, PIL's "
                        "limit; 0: no limit)")
