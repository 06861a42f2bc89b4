"""``taskres demo``: the flags of the offline demo."""

from __future__ import annotations

from ..bench import print_summary
from ..demo import DEFAULT_OUT, DEMO_SEEDS, QUICK_SHOTS, QUICK_VIEWS, demo_tasks, run_demo


def cmd_demo(args) -> int:
    tasks = args.tasks or list(demo_tasks())
    summary, report = run_demo(args.out, progress=not args.quiet, jobs=args.jobs,
                               seeds=[int(s) for s in args.seeds] if args.seeds else ((1,) if args.quick else DEMO_SEEDS),
                               quick=args.quick, backbone=args.backbone, pretrained=args.pretrained, tasks=tasks,
                               methods=args.methods)
    print_summary(summary)
    for png in report.figures:
        print(f"figure: {png}")
    return 0 if summary.ok else 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="offline demo: every method on the mini model's demo tasks, with the paper-style figure",
        description="The paper's few-shot figure in miniature: offline, on the embedded mini model and its demo "
                    "tasks.")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--seeds", nargs="+", default=None,
                   help="seeds (default: 1 2 3, as the paper; 1 with --quick)")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes (default: one per core, at most 4)")
    p.add_argument("--quick", action="store_true",
                   help=f"shots {'/'.join(map(str, QUICK_SHOTS))}, {QUICK_VIEWS} views, a few epochs: a fast smoke "
                        "run")
    p.add_argument("--tasks", nargs="+", default=None, help="demo tasks (default: all mini-* tasks)")
    p.add_argument("--methods", nargs="+", default=None, help="methods (default: every registered method)")
    p.add_argument("--backbone", default="taskres-mini", help="backbone (default: the embedded taskres-mini)")
    p.add_argument("--pretrained", default="default", help="weights (default: taskres-mini's packaged weights)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
