"""``--method auto`` against the best single method chosen in hindsight, and against TaskRes alone.

On the embedded taskres-mini model's demo tasks, with the demo's settings (4 cached views per image, each
method's learning rate = reference x the demo's factor, taskres.demo.DEMO_LR_FACTOR), for every shot count
and seed: every candidate of ``--method auto`` (taskres.methods.auto.CANDIDATES) is fitted by auto's own code
(``fit_candidates``: as ``taskres fit --method NAME`` fits it), auto's choice is made on the few-shot val
split by auto's own rule (``choose``), and every candidate's test top-1 is measured afterwards, so that:

- auto: the test top-1 of the candidate auto chose (it never saw test);
- TaskRes: TaskRes alone;
- best single method in hindsight: the one method with the highest mean test top-1 at that shot count over
  the tasks and seeds (an oracle choice made with the test labels, the same method for every cell);
- per-cell oracle: the best candidate of each cell by test top-1 (an upper bound no method can reach).

The first cell is also run through ``taskres.fit(method="auto")`` and must give the same choice and test
top-1 (the benchmark measures the shipped method, not a copy of it).

    python benchmarks/auto_methods.py                       # 2 tasks x 1/2/4/8/16 shots x seeds 1-3
    python benchmarks/auto_methods.py --shots 1 16 --seeds 1  # quick look
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time

import numpy as np
import torch

from taskres.api import FitConfig, build_context, encode_split, fit, make_cache, top1, training_source
from taskres.backbone import BackboneConfig, load_backbone
from taskres.datasets import load_dataset, make_fewshot_split
from taskres.demo import DEMO_VIEWS, demo_lrs
from taskres.methods.auto import CANDIDATES, AutoParams, choose, fit_candidates
from taskres.mini.tasks import DEMO_TASKS

_STATE: dict = {}


def _init(root: str, cache_dir: str) -> None:
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    torch.set_num_threads(1)
    _STATE.update(root=root, backbone=load_backbone(BackboneConfig()), cache=make_cache(cache_dir))


def run_cell(job: tuple[str, int, int]) -> dict:
    """Every candidate on one (task, shots, seed) split: val count (auto's score) and test top-1."""
    name, shots, seed = job
    backbone, cache = _STATE["backbone"], _STATE["cache"]
    task = load_dataset(name, _STATE["root"])
    # num_workers=0: a pool worker may not start decoding processes of its own
    cfg = FitConfig(dataset=name, views=DEMO_VIEWS, shots=shots, seed=seed, progress=False, num_workers=0)
    split = make_fewshot_split(task, shots, seed)
    test_f, test_y = encode_split(cfg, backbone, cache, task.test, "test")
    val_f, val_y = encode_split(cfg, backbone, cache, split.val, "val")
    ctx = build_context(task, backbone, training_source(cfg, backbone, cache, split, None), shots=shots, seed=seed,
                        val_features=val_f, val_labels=val_y, progress=False)
    ctx.train_for = lambda scale: training_source(cfg, backbone, cache, split, scale)  # as taskres.fit sets it
    started = time.time()
    candidates = fit_candidates(AutoParams(list(CANDIDATES), demo_lrs(CANDIDATES)), ctx)
    seconds = time.time() - started
    chosen = choose(candidates)
    with torch.no_grad():
        test = {c.name: (top1(c.classifier(test_f), test_y) if c.classifier is not None else float("nan"))
                for c in candidates}
    return {"task": name, "shots": shots, "seed": seed, "val_images": len(val_y), "chosen": chosen.name,
            "val": {c.name: c.val_top1 for c in candidates}, "test": test, "auto": test[chosen.name],
            "auto_seconds": seconds}


def cross_check(cell: dict, root: str, cache_dir: str) -> None:
    """The same cell through taskres.fit(method="auto"): the same choice and test top-1."""
    params = {"candidates": ",".join(CANDIDATES)}
    params.update({f"{m}.{k}": v for m, p in demo_lrs(CANDIDATES).items() for k, v in p.items()})
    res = fit(FitConfig(method="auto", dataset=cell["task"], data_root=root, shots=cell["shots"], seed=cell["seed"],
                        views=DEMO_VIEWS, method_params=params, cache_dir=cache_dir, progress=False))
    got = (res.metrics["auto"]["chosen"], res.metrics["top1"]["test"])
    assert got == (cell["chosen"], cell["auto"]), f"taskres.fit(method='auto') gave {got}, the benchmark " \
                                                  f"{(cell['chosen'], cell['auto'])}"
    print(f"cross-check: taskres.fit(method='auto') on {cell['task']} {cell['shots']}-shot seed {cell['seed']} chose "
          f"{got[0]}, test top-1 {got[1]:.2f}, as measured here", flush=True)


def _mean_std(values) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def table(cells: list[dict], shots_list: list[int], seeds: list[int]) -> list[str]:
    """Per shot count, means over tasks of each seed's value; ± the std over seeds."""
    def per_seed(sel, value):
        return [np.mean([value(c) for c in sel if c["seed"] == s]) for s in seeds]

    lines = ["| shots | val imgs / class | auto | TaskRes | best single method in hindsight | per-cell oracle | "
             "auto − hindsight | auto − TaskRes | auto chose (cells) |",
             "|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for k in shots_list:
        sel = [c for c in cells if c["shots"] == k]
        means = {m: np.mean([c["test"][m] for c in sel]) for m in CANDIDATES}
        best = max(means, key=lambda m: means[m])
        auto, taskres = per_seed(sel, lambda c: c["auto"]), per_seed(sel, lambda c: c["test"]["taskres"])
        hind, oracle = per_seed(sel, lambda c: c["test"][best]), per_seed(sel, lambda c: max(c["test"].values()))
        chose = {}
        for c in sel:
            chose[c["chosen"]] = chose.get(c["chosen"], 0) + 1
        lines.append(f"| {k} | {min(k, 4)} | {_mean_std(auto)} | {_mean_std(taskres)} | {best} {_mean_std(hind)} | "
                     f"{_mean_std(oracle)} | {np.mean(auto) - np.mean(hind):+.2f} | "
                     f"{np.mean(auto) - np.mean(taskres):+.2f} | "
                     + ", ".join(f"{m} {n}" for m, n in sorted(chose.items(), key=lambda x: -x[1])) + " |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(DEMO_TASKS))
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--jobs", type=int, default=2, help="worker processes of one thread each (default 2)")
    ap.add_argument("--json", default=None, help="also write every cell's numbers to this file")
    args = ap.parse_args(argv)

    root = tempfile.mkdtemp(prefix="taskres-automethods-")
    cache_dir = tempfile.mkdtemp(prefix="taskres-automethods-cache-")
    for name in args.tasks:  # the demo tasks are written once, here, before the workers read them
        load_dataset(name, root)
    jobs = [(t, k, s) for t in args.tasks for k in args.shots for s in args.seeds]
    started = time.time()
    with mp.get_context("spawn").Pool(args.jobs, initializer=_init, initargs=(root, cache_dir)) as pool:
        cells = []
        for cell in pool.imap_unordered(run_cell, sorted(jobs, key=lambda j: -j[1])):
            cells.append(cell)
            print(f"  {cell['task']} {cell['shots']}-shot seed {cell['seed']}: auto chose {cell['chosen']} "
                  f"(val {cell['val'][cell['chosen']]:.2f}) -> test {cell['auto']:.2f}; taskres "
                  f"{cell['test']['taskres']:.2f}; best on test {max(cell['test'].values()):.2f} "
                  f"({cell['auto_seconds']:.1f} s)", flush=True)
    wall = time.time() - started
    _init(root, cache_dir)
    first = min(cells, key=lambda c: (args.tasks.index(c["task"]), c["shots"], c["seed"]))
    cross_check(first, root, cache_dir)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(cells, fh, indent=1)

    print()
    print(f"taskres-mini, tasks {' '.join(args.tasks)}, {DEMO_VIEWS} cached views, seeds "
          f"{' '.join(map(str, args.seeds))}, candidates {' '.join(CANDIDATES)}; torch {torch.__version__}, "
          f"{platform.machine()}, {args.jobs} workers x 1 thread, {wall:.0f} s wall")
    print()
    print("\n".join(table(cells, args.shots, args.seeds)))
    print()
    overall = {m: np.mean([c["test"][m] for c in cells]) for m in CANDIDATES}
    best = max(overall, key=lambda m: overall[m])
    print(f"Mean over every cell: auto {np.mean([c['auto'] for c in cells]):.2f}, TaskRes {overall['taskres']:.2f}, "
          f"best single method over all shots in hindsight {best} {overall[best]:.2f}, per-cell oracle "
          f"{np.mean([max(c['test'].values()) for c in cells]):.2f}; auto's fits took "
          f"{np.mean([c['auto_seconds'] for c in cells]):.1f} s per cell on average")
    print("Every candidate's mean test top-1: " + ", ".join(f"{m} {v:.2f}" for m, v in
                                                          sorted(overall.items(), key=lambda x: -x[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
