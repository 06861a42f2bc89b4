"""TaskRes with ``--set alpha=auto --set lr=auto`` against the fixed defaults, at small, normal and large text norms.

On the embedded taskres-mini model's demo tasks (the demo's 4 cached views per image), for each shot count
and seed, the text classifier t is used as computed and scaled by 0.1 and 10 (a backbone whose text features
are 10x smaller or larger; zero-shot accuracy does not change, since logits are cosines). Per cell it
trains and prints test top-1 for:

- fixed default: the values ``taskres fit`` uses without ``--set`` (the demo task's alpha 0.5, lr 1e-2);
- lr ~ rms(t): the default lr rescaled with the text classifier's size (lr = 1e-2 * rms(c t) / rms(t)), the
  "lr relative to the norm" rule, alpha 0.5;
- auto: ``alpha=auto, lr=auto``, chosen on the few-shot val split (methods/taskres/autotune.py);
- grid best on test: the auto grid's best candidate by *test* top-1, an oracle (not a method) that shows
  how much the val split's size costs the selection.

Mean +- std over seeds; the seconds column is auto's whole search.

    python benchmarks/auto_hparams.py                                  # 2 tasks x 1/4/16 shots x 3 scales x 3 seeds
    python benchmarks/auto_hparams.py --shots 16 --seeds 1 --scales 1  # quick look
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch

from taskres.api import FitConfig, build_context, encode_split, make_cache, top1, training_source
from taskres.backbone import BackboneConfig, load_backbone
from taskres.datasets import load_dataset, make_fewshot_split
from taskres.methods.taskres.autotune import text_rms
from taskres.methods.taskres import TaskRes, TaskResParams, lr_for
from taskres.mini.tasks import DEMO_TASKS

VIEWS = 4  # the demo's cached views per image (taskres.demo.DEMO_VIEWS)
ROWS = ("zero-shot", "fixed default", "lr ~ rms(t)", "auto", "grid best on test (oracle)")


def test_top1(clf, feats, labels) -> float:
    with torch.no_grad():
        return top1(clf(feats), labels)


def run_cell(ctx, test_f, test_y, default_lr: float, rms_1x: float) -> dict:
    out = {"zero-shot": test_top1(TaskRes(TaskResParams(epochs=0)).fit(ctx), test_f, test_y),
           "fixed default": test_top1(TaskRes(TaskResParams()).fit(ctx), test_f, test_y)}
    scaled_lr = default_lr * text_rms(ctx.text_classifier) / rms_1x
    out["lr ~ rms(t)"] = test_top1(TaskRes(TaskResParams(lr=scaled_lr)).fit(ctx), test_f, test_y)
    started = time.time()
    auto = TaskRes(TaskResParams(alpha="auto", lr="auto")).fit(ctx)
    out["seconds"] = time.time() - started
    out["auto"] = test_top1(auto, test_f, test_y)
    search = auto.meta.hparams["auto_search"]
    out["chosen"] = (search["chosen"]["kappa"], search["chosen"]["sigma"])
    out["grid best on test (oracle)"] = max(
        test_top1(TaskRes(TaskResParams(alpha=c["alpha"], lr=c["lr"])).fit(ctx), test_f, test_y)
        for c in search["grid"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(DEMO_TASKS))
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--scales", type=float, nargs="+", default=[0.1, 1.0, 10.0], help="text classifier scales")
    ap.add_argument("--data-root", default=None, help="where the demo tasks are written (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: these fits are tiny, and more threads only spin on a busy machine)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    root = args.data_root or tempfile.mkdtemp(prefix="taskres-auto-")
    backbone = load_backbone(BackboneConfig())  # taskres-mini, packaged weights
    cache = make_cache(tempfile.mkdtemp(prefix="taskres-auto-cache-"))  # each split encoded once
    cells = []
    for name in args.tasks:
        task = load_dataset(name, root)
        base = backbone.text_classifier(task.classnames, task.templates)
        cfg = FitConfig(dataset=name, views=VIEWS, progress=False)
        test_f, test_y = encode_split(cfg, backbone, cache, task.test, "test")
        for shots in args.shots:
            for seed in args.seeds:
                cfg_s = replace(cfg, shots=shots, seed=seed)
                split = make_fewshot_split(task, shots, seed)
                train = training_source(cfg_s, backbone, cache, split)
                val_f, val_y = encode_split(cfg_s, backbone, cache, split.val, "val")
                for scale in args.scales:
                    ctx = build_context(task, backbone, train, shots=shots, seed=seed, base=base * scale,
                                        val_features=val_f, val_labels=val_y, progress=False)
                    torch.manual_seed(seed)
                    cell = run_cell(ctx, test_f, test_y, lr_for(task.name, backbone.identity.get("model", "")),
                                    text_rms(base))
                    cell.update(task=name, shots=shots, seed=seed, scale=scale, val_images=len(val_y))
                    cells.append(cell)
                    print(f"  {name} {shots}-shot seed {seed} scale {scale:g}: "
                          + ", ".join(f"{r} {cell[r]:.2f}" for r in ROWS)
                          + f"; auto chose kappa {cell['chosen'][0]:g} sigma {cell['chosen'][1]:g} "
                            f"({cell['seconds']:.2f} s)", flush=True)

    print()
    print(f"TaskRes on {backbone.identity['model']} ({backbone.identity['fingerprint']}), {VIEWS} cached views, "
          f"seeds {' '.join(map(str, args.seeds))}; torch {torch.__version__}, {platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    print()
    print("| task | text scale | shots | val imgs | " + " | ".join(ROWS) + " | auto s |")
    print("|---|---:|---:|---:|" + "---:|" * (len(ROWS) + 1))
    for name in args.tasks:
        for scale in args.scales:
            for shots in args.shots:
                sel = [c for c in cells if c["task"] == name and c["scale"] == scale and c["shots"] == shots]
                stats = " | ".join(f"{np.mean([c[r] for c in sel]):.2f} ± {np.std([c[r] for c in sel]):.2f}"
                                   for r in ROWS)
                print(f"| {name} | {scale:g}x | {shots} | {sel[0]['val_images']} | {stats} | "
                      f"{np.mean([c['seconds'] for c in sel]):.1f} |")
    print()
    print("Mean over every cell above: " + ", ".join(f"{r} {np.mean([c[r] for c in cells]):.2f}" for r in ROWS))
    for scale in args.scales:
        sel = [c for c in cells if c["scale"] == scale]
        print(f"  text scale {scale:g}x: " + ", ".join(f"{r} {np.mean([c[r] for c in sel]):.2f}" for r in ROWS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
