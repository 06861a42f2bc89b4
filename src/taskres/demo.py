"""``taskres demo``: the paper's few-shot figure in miniature, offline, in a few minutes on a laptop CPU.

The embedded mini CLIP (``taskres-mini``, packaged weights) is adapted to the demo tasks (``mini-*``) by
zero-shot, TaskRes and every other method available, at 1/2/4/8/16 shots. It is a small bench sweep
followed by a report (the same code as ``taskres bench`` and ``taskres report``): records, the table and
the figure land in the output folder, and an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .bench import print_summary, run_sweep
from .datasets import DatasetError
from .methods import METHODS
from .protocols import PAPER_METHODS, PAPER_SHOTS, SweepConfig, resolve_sweep

DEFAULT_OUT = "demo-results"
DEMO_VIEWS = 4
QUICK_SHOTS = (1, 4)
QUICK_VIEWS = 2
# The demo must finish in about 3 minutes on 2 CPU cores with every method at 5 shot counts. Every method
# keeps its reference schedule except CoOp, whose step runs every class prompt through the text encoder
# whatever the batch: it gets fewer, larger batches and fewer epochs. (Shortening the cheap methods saves
# seconds and can cost them their result: CLIP-Adapter at 30 epochs stays at zero-shot on the demo tasks.)
# A parameter a method does not have is left out (see _budget).
DEMO_BUDGET: dict[str, dict] = {}
QUICK_BUDGET: dict[str, dict] = {
    "taskres": {"epochs": 20},
    "coop": {"epochs": 2, "batch_size": 256},
    "clip_adapter": {"epochs": 5},
    "linear_probe": {"max_iter": 50, "refine_steps": 1},
    "tip_adapter_f": {"epochs": 5},
    "taskres_enhanced": {"epochs": 20, "proj_epochs": 3},
    "lpp": {"epochs": 10},
}


def demo_tasks() -> tuple[str, ...]:
    try:
        from .mini.tasks import DEMO_TASKS
    except ImportError:
        raise DatasetError("the demo tasks are not part of this build (taskres.mini.tasks is missing); use "
                           "`taskres bench` on a dataset of your own instead") from None
    if not DEMO_TASKS:
        raise DatasetError("taskres.mini.tasks defines no demo task")
    return tuple(DEMO_TASKS)


def demo_methods() -> list[str]:
    """Zero-shot and TaskRes first, then every other registered method (paper order, then the rest)."""
    first = [m for m in ("zeroshot", "taskres") if m in METHODS]
    rest = [m for m in PAPER_METHODS if m in METHODS and m not in first]
    return first + rest + sorted(m for m in METHODS if m not in first and m not in rest)


def demo_sweep(*, seeds=(1,), quick: bool = False, backbone: str = "taskres-mini", pretrained: str = "default",
               tasks: list[str] | None = None, methods: list[str] | None = None) -> SweepConfig:
    methods = list(methods or demo_methods())
    settings = {
        "protocol": "fewshot",
        "datasets": list(tasks or demo_tasks()),
        "shots": list(QUICK_SHOTS if quick else PAPER_SHOTS),
        "seeds": list(seeds),
        "methods": methods,
        "backbones": [{"name": backbone, "pretrained": pretrained}],
    }
    settings["views"] = QUICK_VIEWS if quick else DEMO_VIEWS
    settings["method_params"] = _budget(QUICK_BUDGET if quick else DEMO_BUDGET, methods)
    return resolve_sweep(settings)


def _budget(budget: dict[str, dict], methods: list[str]) -> dict[str, dict]:
    out = {}
    for m in methods:
        params = METHODS[m].Params
        names = {f.name for f in dataclasses.fields(params)} if dataclasses.is_dataclass(params) else set()
        chosen = {k: v for k, v in budget.get(m, {}).items() if k in names}
        if chosen:
            out[m] = chosen
    return out


def describe_budget(sweep: SweepConfig) -> str:
    parts = [f"{m}: " + ", ".join(f"{k}={v}" for k, v in p.items()) for m, p in sweep.method_params.items()]
    return f"{sweep.views} cached views per image; " + ("; ".join(parts) if parts else "method defaults")


def run_demo(out_dir: str | Path = DEFAULT_OUT, *, progress: bool = True, echo=print, **sweep_options):
    """Run the demo sweep into ``out_dir`` and write its report there; returns (bench summary, report)."""
    from .report import write_report

    sweep = demo_sweep(**sweep_options)
    echo(f"demo: {len(sweep.methods)} methods x {len(sweep.datasets)} tasks x shots "
         f"{'/'.join(map(str, sweep.shots))} x seeds {'/'.join(map(str, sweep.seeds))} on {sweep.backbones[0].display}")
    echo(f"demo budget (shorter than the paper's schedules): {describe_budget(sweep)}")
    # The demo folder is scratch output: cells made with other demo settings (e.g. --quick) are redone.
    summary = run_sweep(sweep, out_dir, progress=progress, redo_changed=True)
    # Only this sweep's cells: records of earlier demo settings (other shot counts) stay out of the table.
    report = write_report(out_dir, out_dir, formats=("png",), only={c.name for c in summary.cells})
    return summary, report


def cmd_demo(args) -> int:
    tasks = args.tasks or list(demo_tasks())
    summary, report = run_demo(args.out, progress=not args.quiet, seeds=[int(s) for s in args.seeds],
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
    p.add_argument("--seeds", nargs="+", default=["1"], help="seeds (default: 1; the paper uses 1 2 3)")
    p.add_argument("--quick", action="store_true",
                   help=f"shots {'/'.join(map(str, QUICK_SHOTS))}, {QUICK_VIEWS} views, a few epochs: a fast smoke "
                        "run")
    p.add_argument("--tasks", nargs="+", default=None, help="demo tasks (default: all mini-* tasks)")
    p.add_argument("--methods", nargs="+", default=None, help="methods (default: every registered method)")
    p.add_argument("--backbone", default="taskres-mini", help="backbone (default: the embedded taskres-mini)")
    p.add_argument("--pretrained", default="default", help="weights (default: taskres-mini's packaged weights)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
