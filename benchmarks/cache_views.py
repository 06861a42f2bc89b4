"""How many cached augmented views does TaskRes need to match fresh augmentation at every step?

The reference code re-encodes freshly augmented images through the frozen image encoder at every step
("online"). Caching K augmented views per training image and drawing one of them per image per epoch is far
cheaper. This trains TaskRes on the mini model's demo tasks both ways, same shots and seeds, and prints
top-1 (mean +- std over seeds) with the image-encoder passes each regime spends on the training images.

    python benchmarks/cache_views.py                      # 16 shots, seeds 1 2 3, K = 1 5 10 20
    python benchmarks/cache_views.py --seeds 1 --views 1 10 --tasks mini-shapes     # quicker look

Nothing is read from or written to the feature cache, so every run pays for its own encoding and the
wall-clock column is comparable across rows (one process, this machine, whatever else runs on it).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from taskres.api import FitConfig, fit, make_cache
from taskres.backbone import BackboneConfig, load_backbone
from taskres.datasets import load_dataset
from taskres.mini.tasks import DEMO_TASKS


def run_cell(task, backbone, cache, data_root, *, method, shots, seed, regime, views) -> dict:
    cfg = FitConfig(method=method, dataset=task.name, data_root=data_root, shots=shots, seed=seed,
                    regime=regime, views=views, cache_dir="", progress=False)
    started = time.time()
    result = fit(cfg, backbone=backbone, task=task, cache=cache)
    m = result.metrics
    epochs = int(m["hparams"].get("epochs", 0) or 0)
    if method == "zeroshot":
        passes = 0
    elif regime == "online":
        passes = epochs * m["num_train"]  # every epoch encodes every training image afresh
    else:
        passes = views * m["num_train"]  # K views, encoded once
    return {"top1": m["top1"]["test"], "passes": passes, "seconds": time.time() - started, "epochs": epochs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(DEMO_TASKS))
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--views", type=int, nargs="+", default=[1, 5, 10, 20], help="K cached views to compare")
    ap.add_argument("--no-online", action="store_true", help="skip the (slow) fresh-augmentation regime")
    ap.add_argument("--data-root", default=None, help="where the demo tasks are written (default: a temp dir)")
    ap.add_argument("--pretrained", default="default", help="taskres-mini weights (default: the packaged ones)")
    ap.add_argument("--json", default=None, help="also write the raw cells here")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    data_root = args.data_root or tempfile.mkdtemp(prefix="taskres-cache-views-")
    backbone = load_backbone(BackboneConfig(pretrained=args.pretrained))  # taskres-mini
    cache = make_cache("")
    regimes = [("zeroshot", "cached", 1)] + [("taskres", "cached", k) for k in args.views]
    if not args.no_online:
        regimes.append(("taskres", "online", 0))

    cells = []
    for name in args.tasks:
        task = load_dataset(name, data_root)
        for method, regime, views in regimes:
            for seed in args.seeds:
                cell = run_cell(task, backbone, cache, data_root, method=method, shots=args.shots, seed=seed,
                                regime=regime, views=max(views, 1))
                cell.update(task=name, method=method, regime=regime, views=views, seed=seed)
                cells.append(cell)
                print(f"  {name} {method} {regime} K={views} seed={seed}: top-1 {cell['top1']:.2f} "
                      f"({cell['seconds']:.1f} s)", flush=True)

    print()
    print(f"TaskRes, {args.shots} shots, seeds {' '.join(map(str, args.seeds))}, backbone "
          f"{backbone.identity['model']} ({backbone.identity['fingerprint']}), "
          f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads")
    print()
    print("| task | regime | train-image encoder passes | top-1 (mean ± std) | wall s / run |")
    print("|---|---|---:|---:|---:|")
    for name in args.tasks:
        for method, regime, views in regimes:
            sel = [c for c in cells if c["task"] == name and c["method"] == method and c["regime"] == regime
                   and c["views"] == views]
            accs = np.array([c["top1"] for c in sel])
            label = ("zero-shot" if method == "zeroshot" else
                     f"online (fresh aug., {sel[0]['epochs']} epochs)" if regime == "online" else
                     f"cached, K = {views}")
            print(f"| {name} | {label} | {int(np.mean([c['passes'] for c in sel])):,} | "
                  f"{accs.mean():.2f} ± {accs.std():.2f} | {np.mean([c['seconds'] for c in sel]):.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(cells, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
