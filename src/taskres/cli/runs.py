"""``taskres fit``, ``eval`` and ``predict``: their flags, and the lines they print from the Python API's results."""

from __future__ import annotations

import json
import sys

from ..methods import METHODS
from .flags import (DATA_FIELDS, add_backbone_args, add_data_args, add_field_flags, add_image_limit_arg, backbone_config,
                    field_values)

# FitConfig's fields that are fit's own flags (beside the data fields every dataset verb has)
FIT_FIELDS = ("shots", "seed", "regime", "views", "augment", "memory_map", "search_split", "split_file",
              "allow_fewer_shots", "out", "overwrite")
PREDICT_FIELDS = ("batch_size", "num_workers", "skip_bad_images")  # how predict encodes its images


def shots_text(m: dict) -> str:
    asked, per_class = m.get("shots_asked", m["shots"]), m.get("shots_per_class")
    if per_class is None or per_class["min"] == per_class["max"] == asked:
        return f"{asked}-shot"
    used = per_class["min"] if per_class["min"] == per_class["max"] else f"{per_class['min']}-{per_class['max']}"
    return f"{asked}-shot asked, {used} per class used"


def cmd_fit(args) -> int:
    from ..api import FitConfig, fit

    cfg = FitConfig(
        method=args.method, dataset=args.dataset, backbone=backbone_config(args),
        method_params=dict(s.split("=", 1) if "=" in s else (s, None) for s in args.set),
        eval_splits=tuple(args.eval_split or ("test",)), progress=not args.quiet,
        **field_values(args, DATA_FIELDS + FIT_FIELDS))
    from ..metrics import summary_lines

    result = fit(cfg)
    m = result.metrics
    for split, acc in m["top1"].items():
        print(f"{m['method']} on {m['dataset']} ({shots_text(m)}, seed {m['seed']}): {split} top-1 = {acc:.2f} "
              f"% ({m['num_images'][split]} images)")
        print("\n".join(summary_lines(m["evaluation"][split])))
    if m.get("auto"):
        from ..methods.auto import summary_line

        print(summary_line(m["auto"]))
    search = m["hparams"].get("auto_search") if isinstance(m.get("hparams"), dict) else None
    if search:
        c = search["chosen"]
        print(f"auto: alpha = {c['alpha']:.4g}, lr = {c['lr']:.4g} (best of {len(search['grid'])} on "
              f"{search['val_images']} val images, val top-1 {c['val_top1']:.2f} %; grid in metrics.json)")
    if result.run_dir:
        print(f"wrote {result.run_dir}/classifier.safetensors, metrics.json, config.json, splits.json, report.html")
    return 0


def cmd_eval(args) -> int:
    from ..api import evaluate

    res = evaluate(args.run, args.dataset, split=args.split, backbone_cfg=backbone_config(args),
                   progress=not args.quiet, device=args.device, precision=args.precision,
                   **field_values(args, DATA_FIELDS))
    from ..metrics import summary_lines

    subset = " (class subset)" if res["class_subset"] else ""
    print(f"{res['method']} on {res['dataset']} {res['split']}{subset}: top-1 = {res['top1']:.2f} % "
          f"({res['num_images']} images)")
    print("\n".join(summary_lines(res["evaluation"])))
    if args.json:  # everything: per-class accuracy, confusion matrix, ECE, for the method and zero-shot
        print(json.dumps(res))
    return 0


def printable(path: str) -> str:
    """A path as text any terminal takes: bytes that are not UTF-8 shown as \\xNN, not a UnicodeEncodeError."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def cmd_predict(args) -> int:
    from ..api import predict
    from ..predictions import dump_json, write_csv

    rows = predict(args.run, args.images, k=args.top, backbone_cfg=backbone_config(args), device=args.device,
                   precision=args.precision, file_list=args.file_list, progress=not args.quiet,
                   **field_values(args, PREDICT_FIELDS))
    if args.csv:
        print(f"wrote {write_csv(rows, args.csv, args.top)} ({len(rows)} images)", file=sys.stderr)
    if args.json:  # stdout holds the JSON alone; progress and notes go to stderr
        print(dump_json(rows))
    elif not args.csv:
        for row in rows:
            print(printable(row["image"]))
            for name, p in row["top"] or []:
                print(f"  {p:7.2%}  {name}")
            if row["top"] is None:
                print(f"  skipped: {row['error']}")
    return 0


def register(subparsers) -> None:
    from ..api import FitConfig

    p = subparsers.add_parser("fit", help="adapt a backbone to a dataset from K shots and evaluate it")
    p.add_argument("--method", default="taskres", choices=sorted(METHODS),
                   help="method (default: taskres; auto: the best on the validation split; taskres methods lists "
                        "them)")
    add_data_args(p)
    add_backbone_args(p)
    add_field_flags(p, FitConfig, FIT_FIELDS)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method parameter, e.g. --set lr=1e-3 --set epochs=50")
    p.add_argument("--eval-split", action="append", default=None, help="split(s) to evaluate (default: test)")
    p.set_defaults(func=cmd_fit)

    p = subparsers.add_parser("eval", help="evaluate a saved classifier on a dataset split")
    p.add_argument("run", help="a run folder or a classifier .safetensors file")
    add_data_args(p)
    add_backbone_args(p, defaults=False)
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true",
                   help="also print the result as JSON (with per-class accuracy, confusion matrix and ECE, for the "
                        "method and zero-shot)")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("predict", help="top classes with probabilities for image files")
    p.add_argument("run", help="a run folder or a classifier .safetensors file")
    p.add_argument("images", nargs="*", help="image files, or folders (their images, recursively)")
    p.add_argument("--file-list", default=None, metavar="FILE",
                   help="a text file with one image path per line (relative paths: relative to the file)")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", action="store_true",
                   help="print one JSON array: per image, its path and top classes with probabilities")
    p.add_argument("--csv", default=None, metavar="OUT",
                   help="write a CSV: per image, path, class_1, probability_1, ..., error")
    add_field_flags(p, FitConfig, PREDICT_FIELDS)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_backbone_args(p, defaults=False)
    add_image_limit_arg(p)
    p.set_defaults(func=cmd_predict)
