"""The verbs that read what runs and sweeps wrote: ``report``, ``export``, ``published`` and ``methods``."""

from __future__ import annotations

import json
from pathlib import Path

from ..catalog import method_rows, render as render_methods
from ..export import WRITERS, export_run
from ..published import AVERAGE, METRICS, load_published, render as render_published, select
from ..reports.tables import FIGURE_FORMATS, write_report


def cmd_report(args) -> int:
    published = False if args.no_published else (args.published or True)
    result = write_report(args.results_dir, args.out, formats=tuple(args.format), figures=not args.no_figure,
                          published=published)
    if not result.summary.num_records and not result.summary.failed:
        print(f"report: no records in {Path(args.results_dir) / 'records'}")
    print(result.markdown.rstrip())
    print("\nwrote " + ", ".join(str(p) for p in result.files))
    return 0


def register_report(subparsers) -> None:
    p = subparsers.add_parser("report", help="tables (Markdown, CSV, JSON) and figures from a bench's records",
                              description="Tables and figures from the records a bench wrote, and nothing else.")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="the folder a bench wrote (with records/)")
    p.add_argument("--out", default=None, help="output folder (default: RESULTS_DIR/report)")
    p.add_argument("--format", nargs="+", default=list(FIGURE_FORMATS), choices=["png", "svg", "pdf"],
                   help="figure formats (default: png svg)")
    p.add_argument("--no-figure", action="store_true", help="tables only")
    p.add_argument("--published", default=None, metavar="TABLE.csv",
                   help="published figures to compare with (default: the shipped table; see taskres published)")
    p.add_argument("--no-published", action="store_true", help="no published column")
    p.set_defaults(func=cmd_report)


def cmd_published(args) -> int:
    rows = select(load_published(args.table), method=args.method, dataset=args.dataset, backbone=args.backbone,
                  shots=args.shots, metric=args.metric)
    if not rows:
        print("published: no figure matches these filters (see taskres/published/SOURCES.md for what is "
              "shipped and what is missing)")
        return 1
    print(render_published(rows))
    return 0


def register_published(subparsers) -> None:
    p = subparsers.add_parser("published", help="list the published figures shipped with taskres",
                              description="List published top-1 figures with their sources. A zero-shot figure "
                                          "(shots -) matches every --shots; where sources disagree, each figure "
                                          "is listed with its own source.")
    p.add_argument("--method", default=None, help="e.g. taskres, coop, tip_adapter_f")
    p.add_argument("--dataset", default=None, help=f"a registered dataset name, or {AVERAGE}")
    p.add_argument("--backbone", default=None, help="e.g. RN50 or ViT-B-16 (ViT-B/16 works too)")
    p.add_argument("--shots", type=int, default=None)
    p.add_argument("--metric", default=None, choices=METRICS, help="top1 (few-shot, domain generalisation) or "
                                                                   "top1_base / top1_new (base-to-new)")
    p.add_argument("--table", default=None, help="another table in the same CSV format (default: the shipped one)")
    p.set_defaults(func=cmd_published)


def cmd_export(args) -> int:
    result = export_run(args.run, args.format, args.out)
    print(f"wrote {result.model} ({result.format}: preprocessed images [N, 3, H, W] -> class probabilities) and "
          f"{result.info} (preprocessing, class names)")
    return 0


def register_export(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a run as one deployable model (ONNX or TorchScript)",
                              description="Write a run's image encoder and tuned head as one model: preprocessed "
                                          "images [N, 3, H, W] -> class probabilities, with a JSON of the "
                                          "preprocessing and class names.")
    p.add_argument("run", help="a run folder (or its classifier .safetensors file)")
    p.add_argument("--format", default="onnx", choices=sorted(WRITERS), help="onnx (default) or torchscript")
    p.add_argument("--out", default=None, help="model file (default: RUN/model.onnx or RUN/model.torchscript.pt)")
    p.set_defaults(func=cmd_export)


def cmd_methods(args) -> int:
    rows = method_rows()
    print(json.dumps(rows, indent=1) if args.json else render_methods(rows))
    return 0


def register_methods(subparsers) -> None:
    p = subparsers.add_parser("methods", help="list every method: its source (built-in or package) and paper",
                              description="List every method --method accepts: the built-in ones and those other "
                                          "packages add through the 'taskres.methods' entry point group.")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=cmd_methods)
