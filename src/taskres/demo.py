"""``taskres demo``: the paper's few-shot figure in miniature, offline, in a few minutes on a laptop CPU.

The embedded mini CLIP (``taskres-mini``, packaged weights) is adapted to the demo tasks (``mini-*``) by
zero-shot, TaskRes and every other method available, at 1/2/4/8/16 shots. It is a small bench sweep
followed by a report (the same code as ``taskres bench`` and ``taskres report``): records, the table and
the figure land in the output folder, and an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .bench import default_jobs, run_sweep
from .datasets import DatasetError
from .methods import METHODS
from .protocols import PAPER_METHODS, PAPER_SHOTS, SweepConfig, resolve_sweep

DEFAULT_OUT = "demo-results"
DEMO_VIEWS = 4
QUICK_SHOTS = (1, 4)
QUICK_VIEWS = 2
DEMO_SEEDS = (1, 2, 3)
# Every method runs at its reference schedule (epochs, batch size, searches): nothing is shortened. The
# demo fits in about 3 minutes on 2 cores because its cells run in one worker process per core
# (bench --jobs), each with one thread.
DEMO_BUDGET: dict[str, dict] = {}
# Learning rates. The reference values are sized for CLIP; the mini model's text features are much larger
# (|t| ~ 17), so a method whose step moves the classifier needs a larger one, and no value is right for all.
# Every method that has a learning rate gets its reference value times one factor from LR_FACTORS, chosen
# by one procedure for all of them (benchmarks/demo_lr.py): 1, 4 and 16 shots, seed 1, on the tuning draws
# (mini-*-tune: the same classes, other images, so the demo's own images never took part), the factor of
# highest mean test top-1 over the two tasks and three shot counts; ties go to the factor nearest 1.
# Methods without a learning rate (zero-shot, linear probe, Tip-Adapter, LP++, GDA) keep their own
# procedures.
LR_FACTORS = (1 / 3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
DEMO_LR_FACTOR: dict[str, float] = {  # benchmarks/demo_lr.py, run of 2026-12-03 (BENCHMARKS.md)
    "taskres": 100.0, "taskres_enhanced": 30.0, "coop": 1.0, "clip_adapter": 30.0, "tip_adapter_f": 100.0, "clap": 1.0,
}


def reference_lr(method: str, backbone_model: str = "taskres-mini") -> float:
    """The method's reference learning rate on ``backbone_model`` for a dataset without its own (the factor's
    base)."""
    if method in ("taskres", "taskres_enhanced"):
        from .methods.taskres import reference_defaults

        return reference_defaults("", backbone_model, 16)["lr"]
    (field,) = [f for f in dataclasses.fields(METHODS[method].Params) if f.name == "lr"]
    return float(field.default)


def demo_lrs(methods, factors: dict[str, float] | None = None) -> dict[str, dict]:
    """{method: {"lr": reference x factor}} for the methods of ``factors`` (default DEMO_LR_FACTOR) present."""
    factors = DEMO_LR_FACTOR if factors is None else factors
    return {m: {"lr": reference_lr(m) * factors[m]} for m in methods if m in factors}


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
    """Zero-shot and TaskRes first, then every other registered method (paper order, then the rest); not
    ``auto``, which refits the others (BENCHMARKS.md measures it on the demo tasks)."""
    first = [m for m in ("zeroshot", "taskres") if m in METHODS]
    rest = [m for m in PAPER_METHODS if m in METHODS and m not in first]
    return first + rest + sorted(m for m in METHODS if m not in first and m not in rest and m != "auto")


def demo_sweep(*, seeds=DEMO_SEEDS, quick: bool = False, backbone: str = "taskres-mini", pretrained: str = "default",
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
    params = demo_lrs(methods)
    for m, chosen in _budget(QUICK_BUDGET if quick else DEMO_BUDGET, methods).items():
        params.setdefault(m, {}).update(chosen)
    settings["method_params"] = params
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
    return (f"{sweep.views} cached views per image, reference schedules; "
            + ("; ".join(parts) if parts else "method defaults"))


def run_demo(out_dir: str | Path = DEFAULT_OUT, *, progress: bool = True, echo=print, jobs: int | None = None,
             **sweep_options):
    """Run the demo sweep into ``out_dir`` and write its report there; returns (bench summary, report)."""
    from .reports.tables import write_report

    sweep = demo_sweep(**sweep_options)
    echo(f"demo: {len(sweep.methods)} methods x {len(sweep.datasets)} tasks x shots "
         f"{'/'.join(map(str, sweep.shots))} x seeds {'/'.join(map(str, sweep.seeds))} on {sweep.backbones[0].display}")
    jobs = default_jobs() if jobs is None else jobs
    echo(f"demo settings: {describe_budget(sweep)}; {jobs} worker process(es)")
    # The demo folder is scratch output: cells made with other demo settings (e.g. --quick) are redone.
    summary = run_sweep(sweep, out_dir, progress=progress, redo_changed=True, jobs=jobs)
    # Only this sweep's cells: records of earlier demo settings (other shot counts) stay out of the table.
    report = write_report(out_dir, out_dir, formats=("png",), only={c.name for c in summary.cells})
    return summary, report
