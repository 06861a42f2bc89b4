"""What do bf16 matrix products cost TaskRes in accuracy? fp32 against bf16, same shots, seeds and features.

``--set products=bf16`` runs the two matrix products of each TaskRes step on bfloat16 operands (float32
accumulation); everything else stays float32. This fits TaskRes both ways on the mini model's demo tasks
(the features are computed once, cached in a temporary folder, and shared by both) and prints test top-1
per cell, the mean difference, and how many test predictions agree.

    python benchmarks/products_gap.py                         # shots 1 4 16, seeds 1 2 3
    python benchmarks/products_gap.py --shots 16 --seeds 1    # quicker look
"""

from __future__ import annotations

import argparse
import platform
import tempfile

import numpy as np
import torch

from taskres.api import FitConfig, encode_split, fit, make_cache
from taskres.backbone import BackboneConfig, load_backbone
from taskres.datasets import load_dataset
from taskres.mini.tasks import DEMO_TASKS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(DEMO_TASKS))
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--pretrained", default="default", help="taskres-mini weights (default: the packaged ones)")
    args = ap.parse_args(argv)

    work = tempfile.mkdtemp(prefix="taskres-products-gap-")
    backbone = load_backbone(BackboneConfig(pretrained=args.pretrained))
    cache = make_cache(f"{work}/cache")
    print(f"TaskRes on {backbone.identity['model']}, torch {torch.__version__}, {platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    print()
    print("| task | shots | seed | top-1 fp32 | top-1 bf16 | difference | predictions agree | fit s fp32 / bf16 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    diffs, agree_all = [], []
    for name in args.tasks:
        task = load_dataset(name, f"{work}/data")
        for shots in args.shots:
            for seed in args.seeds:
                top, preds, seconds = {}, {}, {}
                for products in ("fp32", "bf16"):
                    cfg = FitConfig(method="taskres", dataset=name, shots=shots, seed=seed, progress=False,
                                    method_params={"products": products})
                    result = fit(cfg, backbone=backbone, task=task, cache=cache)
                    seconds[products] = result.metrics["fit_seconds"]
                    top[products] = result.metrics["top1"]["test"]
                    feats, _ = encode_split(cfg, backbone, cache, task.split("test"), "test")
                    with torch.no_grad():
                        preds[products] = result.classifier(feats).argmax(1)
                diff = top["bf16"] - top["fp32"]
                agree = float((preds["fp32"] == preds["bf16"]).float().mean()) * 100
                diffs.append(diff)
                agree_all.append(agree)
                print(f"| {name} | {shots} | {seed} | {top['fp32']:.2f} | {top['bf16']:.2f} | {diff:+.2f} | "
                      f"{agree:.2f} % | {seconds['fp32']:.2f} / {seconds['bf16']:.2f} |", flush=True)
    d = np.array(diffs)
    print()
    print(f"bf16 - fp32 top-1 over {len(d)} cells: mean {d.mean():+.3f}, mean |diff| {np.abs(d).mean():.3f}, "
          f"largest |diff| {np.abs(d).max():.2f} points; predictions agree on {np.mean(agree_all):.2f} % "
          f"(lowest {np.min(agree_all):.2f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
