"""The demo's learning rates: one procedure for every method that has one (taskres.demo.DEMO_LR_FACTOR).

For each factor in ``taskres.demo.LR_FACTORS``, every such method runs at its reference learning rate times
that factor (everything else at its reference settings, the demo's 4 cached views) on the tuning draws
``mini-*-tune`` (the demo tasks' classes, other images), 1/4/16 shots, seed 1. Per method, the factor of
highest mean test top-1 (over the tasks and shot counts) is chosen; ties (within 0.05 points) go to the
factor nearest 1. A run that fails (diverges) counts as no score. Prints the table of means and the
chosen factors, to be copied into DEMO_LR_FACTOR.

    python benchmarks/demo_lr.py                 # about 5 minutes on 2 cores
    python benchmarks/demo_lr.py --jobs 1 --shots 16
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

from taskres.bench import default_jobs, run_sweep
from taskres.demo import DEMO_LR_FACTOR, DEMO_VIEWS, LR_FACTORS, demo_lrs
from taskres.mini.tasks import TUNING_TASKS
from taskres.protocols import resolve_sweep


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--methods", nargs="+", default=sorted(DEMO_LR_FACTOR))
    ap.add_argument("--jobs", type=int, default=default_jobs())
    ap.add_argument("--factors", type=float, nargs="+", default=list(LR_FACTORS))
    ap.add_argument("--out", default=None, help="keep the records here (default: a temporary folder)")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {args.jobs} job(s); tasks {', '.join(TUNING_TASKS)}; "
          f"shots {args.shots}; seeds {args.seeds}")
    means: dict[str, dict[float, float | None]] = {m: {} for m in args.methods}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for factor in args.factors:
            started = time.time()
            sweep = resolve_sweep({
                "protocol": "fewshot", "datasets": list(TUNING_TASKS), "shots": args.shots, "seeds": args.seeds,
                "methods": args.methods, "views": DEMO_VIEWS,
                "backbones": [{"name": "taskres-mini", "pretrained": "default"}],
                "method_params": demo_lrs(args.methods, {m: factor for m in args.methods})})
            out = root / f"factor-{factor:g}"
            run_sweep(sweep, out, progress=False, jobs=args.jobs)
            scores: dict[str, list[float]] = {m: [] for m in args.methods}
            failed: set[str] = set()
            for path in (out / "records").glob("*.json"):
                record = json.loads(path.read_text())
                if record["status"] == "ok":
                    scores[record["method"]].append(record["scores"]["top1"])
                else:
                    failed.add(record["method"])
            cells = len(TUNING_TASKS) * len(args.shots) * len(args.seeds)
            for m in args.methods:
                ok = m not in failed and len(scores[m]) == cells
                means[m][factor] = sum(scores[m]) / cells if ok else None
            print(f"factor {factor:g}: {time.time() - started:.0f} s", flush=True)
    print("\nmean test top-1 on the tuning draws, by learning-rate factor (reference lr x factor)")
    print("| method | " + " | ".join(f"x{f:.3g}" for f in args.factors) + " | chosen |")
    print("|---|" + "---:|" * (len(args.factors) + 1))
    chosen = {}
    for m in args.methods:
        valid = {f: v for f, v in means[m].items() if v is not None}
        if valid:
            best = max(valid.values())
            near = [f for f, v in valid.items() if v >= best - 0.05]
            chosen[m] = min(near, key=lambda f: abs(math.log(f)))
        cells = " | ".join("fail" if means[m][f] is None else f"{means[m][f]:.2f}" for f in args.factors)
        print(f"| {m} | {cells} | {f'x{chosen[m]:g}' if m in chosen else 'none ran'} |")
    print("\nDEMO_LR_FACTOR =", chosen)


if __name__ == "__main__":
    main()
