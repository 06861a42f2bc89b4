"""Flags made from the library's option fields, the flag groups several verbs share, and the flag of an error.

A flag is generated from its config field (``taskres.options``): ``--`` and the field's name with dashes (or
its name in ``FLAG_NAMES``), its type from the annotation (converted by ``taskres.typed``, the conversion a
sweep file's values get), its default, choices and help from the field. A field that is on by default gets an
off switch (``augment`` -> ``--no-augment``).
"""

from __future__ import annotations

import argparse
import dataclasses

from ..backbone import BackboneConfig
from ..errors import UNSET, Mention, OptionError, fill
from ..typed import typed_value
from ..transforms import MAX_PIXELS_ENV


# The fields every verb that reads a dataset shares (fit, eval, predict's encoding, bench, extract).
DATA_FIELDS = ("data_root", "cache_dir", "batch_size", "num_workers", "skip_bad_images", "verify_cache")
# Flags not spelled ``--`` + the field's name with dashes: field -> flag, or (owner, field) -> flag.
FLAG_NAMES = {"num_workers": "--workers", "eval_splits": "--eval-split", "method_params": "--set",
              "augment": "--no-augment", "progress": "--quiet", "dist_timeout_s": "--dist-timeout", "splits": "--split",
              ("predict", "k"): "--top",
              # named in library errors only: the backbone's model name, a sweep's backbones, resolve_sweep's
              # set items, the pixel limit's environment variable
              ("BackboneConfig", "name"): "--backbone", ("SweepConfig", "backbones"): "--backbone",
              "set_items": "--set", MAX_PIXELS_ENV: "--max-image-pixels"}
# Fields whose flag in FLAG_NAMES is the switch that turns them off.
OFF_SWITCHES = ("augment", "progress")


def flag_of(exc: OptionError) -> str:
    """The flag a user typed for the option an OptionError names (``--set NAME`` for a method parameter)."""
    if exc.method is not None:
        return f"--set {exc.field}"
    return flag_name(exc.field, exc.owner)


def mention_flag(mention: Mention) -> str:
    """A mentioned option as the user would type it: ``--skip-bad-images``, ``--no-quick-gelu``, ``--device cpu``."""
    flag = flag_name(mention.field, mention.owner)
    if mention.value is UNSET or mention.value is True:
        return flag
    if mention.value is False:  # a field on by default is named by its off switch already (--no-augment)
        return flag if mention.field in OFF_SWITCHES else "--no-" + flag[2:]
    return f"{flag} {mention.value}"


def user_message(exc: Exception) -> str:
    """An error's sentence with the flags a user typed where the library names fields (the same data, not parsed)."""
    if isinstance(exc, OptionError):
        return exc.flag_message(flag_of(exc), mention_flag)
    template = getattr(exc, "option_template", None)
    return str(exc) if template is None else fill(template, exc.option_mentions, mention_flag)


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
    """The dataset and how its images are encoded: eval and predict read these fields of FitConfig too."""
    from ..api import FitConfig

    p.add_argument("--dataset", required=True,
                   help="a registered dataset (imagenet, caltech101, ...), a demo task (mini-*), or a folder "
                        "with one sub-folder of images per class")
    add_field_flags(p, FitConfig, DATA_FIELDS)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_image_limit_arg(p)


def add_image_limit_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                   help=f"refuse images of more than N pixels (default: ${MAX_PIXELS_ENV} or 89478485, PIL's "
                        "limit; 0: no limit)")


def flag_name(field: str, owner: str | None = None) -> str:
    return FLAG_NAMES.get((owner, field)) or FLAG_NAMES.get(field) or "--" + field.replace("_", "-")


def _converter(annotation, flag: str, choices=None):
    def convert(text: str):
        if choices and text in choices:  # "none" is a choice of --verify-cache, not a missing value
            return text
        try:
            return typed_value(text, annotation, flag)
        except ValueError as exc:  # "argument --views: expected a whole number, not the text '2.5'"
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None
    convert.__name__ = flag
    return convert


def add_field_flags(p, config: type, names, *, layered: bool = False) -> None:
    """One flag per field of ``config`` named in ``names``. ``layered``: every default is None (a layer of
    settings over a preset and a file, as bench's flags are), so that an unset flag changes nothing."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    for name in names:
        f = fields[name]
        flag, meta = flag_name(name), f.metadata
        help_text = meta.get("help") or None
        if str(f.type) == "bool":  # a switch; on by default: its --no- form turns it off
            on = f.default is True
            flag = FLAG_NAMES.get(name, f"--no-{name.replace('_', '-')}") if on else flag
            p.add_argument(flag, dest=name, action="store_const", const=not on, default=None if layered else on,
                           help=help_text)
            continue
        choices = meta.get("choices")
        p.add_argument(flag, dest=name, type=_converter(f.type, flag, choices), choices=list(choices) if choices else None,
                       default=None if layered else f.default, help=help_text,
                       metavar=None if choices else flag.lstrip("-").upper().replace("-", "_"))


def field_values(args, names) -> dict:
    """The fields ``add_field_flags`` added, as the parsed command line holds them."""
    return {name: getattr(args, name) for name in names}
