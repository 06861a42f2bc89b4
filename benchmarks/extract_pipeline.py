"""Feature extraction: the whole pipeline against the image encoder alone, in images per second.

The pipeline is what ``FeatureCache.features`` (and ``taskres extract``) runs: image files on disk ->
decode -> the model's test transform (DataLoader workers) -> encoder -> shards written to a fresh cache.
The encoder alone runs ``Backbone.encode_images`` (the same call the pipeline makes, device copies
included) on random tensors already in memory, batch for batch the same sizes. Runs alternate (encoder,
pipeline, encoder, ...) so that a machine shared with other jobs slows both alike; the ratio of each pair
is reported with the medians. Weights are random (``--pretrained none``): speed does not depend on them.

    python benchmarks/extract_pipeline.py --model RN50 --images 256 --batch-size 64
    python benchmarks/extract_pipeline.py --model ViT-B-16 --images 20000 --batch-size 512 --device cuda \\
        --precision fp16 --workers 12
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from taskres.backbone import BackboneConfig, load_backbone
from taskres.datasets import Sample
from taskres.features import FeatureCache, View, loader_workers, prepare_encoder


def make_images(folder: Path, n: int, size: tuple[int, int], fmt: str, seed: int = 0) -> list[Sample]:
    """Photo-like files: a smooth random field plus pixel noise (JPEG files of ImageNet-like size)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ext = {"jpeg": "jpg", "png": "png"}[fmt]
    samples = []
    for i in range(n):
        path = folder / f"img_{i:06d}.{ext}"
        if not path.exists():
            coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
            pixels = np.asarray(coarse, dtype=np.float32) + rng.normal(0, 12, (size[1], size[0], 3))
            img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            img.save(path, quality=90) if fmt == "jpeg" else img.save(path)
        samples.append(Sample(str(path), 0))
    return samples


def time_encoder(backbone, n: int, batch_size: int) -> float:
    """Images/s of the encoder alone on random tensors in (pinned, on CUDA) memory."""
    x = torch.randn(batch_size, 3, backbone.image_size, backbone.image_size)
    cast = prepare_encoder(backbone)  # as the pipeline: channels-last towers, images sent in autocast type
    if cast is not None:
        x = x.to(cast)
    if backbone.device.type == "cuda":
        x = x.pin_memory()
    backbone.encode_images(x[: min(batch_size, 8)])  # warm-up (kernel selection, allocator)
    start = time.perf_counter()
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        backbone.encode_images(x[:b])  # returns on the CPU: each batch is finished when it returns
        done += b
    return n / (time.perf_counter() - start)


def time_pipeline(backbone, samples, batch_size: int, workers: int | None, view: View, shard_size: int) -> float:
    root = Path(tempfile.mkdtemp(prefix="taskres-bench-cache-"))
    try:
        start = time.perf_counter()
        FeatureCache(root, shard_size=shard_size).features(backbone, samples, view, batch_size=batch_size,
                                                           num_workers=workers, progress=False)
        return len(samples) / (time.perf_counter() - start)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def time_decode(backbone, samples, batch_size: int, workers: int) -> float:
    """Images/s of decoding + transform alone (the DataLoader the pipeline uses, no encoder)."""
    from torch.utils.data import DataLoader

    from taskres.features.extract import CacheEntry, _ShardBatches

    entry = CacheEntry("bench", [s.path for s in samples], View(), len(samples), "fp32", None)
    specs = [(0, b, min(len(samples), b + batch_size)) for b in range(0, len(samples), batch_size)]
    loader = DataLoader(_ShardBatches([entry], backbone, None), batch_size=None, sampler=specs, num_workers=workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    return len(samples) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="RN50", help="open_clip model name or config .json (random weights)")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--image-size", default="500x375", help="WxH of the generated files (ImageNet-like)")
    ap.add_argument("--format", default="jpeg", choices=["jpeg", "png"])
    ap.add_argument("--image-dir", default=None, help="where the generated files go (default: a temp folder)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="decoding workers (default: the pipeline's own)")
    ap.add_argument("--view", default="test", choices=["test", "aug"], help="test transform or reference augmentation")
    ap.add_argument("--shard-size", type=int, default=2048)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()

    w, h = (int(v) for v in args.image_size.lower().split("x"))
    tmp = None
    if args.image_dir is None:
        tmp = tempfile.mkdtemp(prefix="taskres-bench-images-")
    folder = Path(args.image_dir or tmp)
    try:
        samples = make_images(folder, args.images, (w, h), args.format)
        mb = sum(os.path.getsize(s.path) for s in samples) / len(samples) / 1e3
        backbone = load_backbone(BackboneConfig(args.model, "none", args.device, args.precision))
        view = View("aug", 0, 1) if args.view == "aug" else View()
        workers = loader_workers(len(samples), args.batch_size, args.workers, backbone.device.type)
        decode = time_decode(backbone, samples, args.batch_size, workers) if workers else None
        enc, pipe = [], []
        for _ in range(args.repeats):
            enc.append(time_encoder(backbone, len(samples), args.batch_size))
            pipe.append(time_pipeline(backbone, samples, args.batch_size, args.workers, view, args.shard_size))
        ratios = [p / e for p, e in zip(pipe, enc)]
        cpu = "unknown"
        if Path("/proc/cpuinfo").is_file():
            cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), cpu)
        result = {
            "model": args.model, "device": args.device, "precision": args.precision, "images": len(samples),
            "image_size": f"{w}x{h}", "format": args.format, "mean_file_kb": round(mb, 1),
            "input_size": backbone.image_size, "batch_size": args.batch_size, "workers": workers, "view": args.view,
            "encoder_img_s": [round(v, 2) for v in enc], "pipeline_img_s": [round(v, 2) for v in pipe],
            "ratios": [round(r, 3) for r in ratios], "median_encoder_img_s": round(statistics.median(enc), 2),
            "median_pipeline_img_s": round(statistics.median(pipe), 2),
            "median_ratio": round(statistics.median(ratios), 3),
            "decode_only_img_s": None if decode is None else round(decode, 1),
            "machine": {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                        "python": platform.python_version(), "torch": torch.__version__},
        }
        print(f"{args.model} ({backbone.image_size}px, {args.device}, {args.precision}), {len(samples)} "
              f"{args.format} files of {w}x{h} (~{mb:.0f} kB), batch {args.batch_size}, {workers} worker(s), "
              f"{args.view} view")
        for i, (e, p, r) in enumerate(zip(enc, pipe, ratios)):
            print(f"  run {i + 1}: encoder alone {e:8.2f} img/s   pipeline {p:8.2f} img/s   ratio {r:6.1%}")
        print(f"  median: encoder alone {result['median_encoder_img_s']} img/s, pipeline "
              f"{result['median_pipeline_img_s']} img/s, ratio {result['median_ratio']:.1%}; decode+transform "
              f"alone {result['decode_only_img_s']} img/s")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
