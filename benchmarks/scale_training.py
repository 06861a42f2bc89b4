"""TaskRes at ImageNet-21k scale from a memory-mapped fp16 feature cache: peak memory and time per epoch.

Default: 21,000 classes x 16 shots = 336,000 rows of 1,024-d features stored as fp16 shards (688 MB per
view), read through ``CachedFeatures`` / ``MappedViews`` (each batch gathers its 256 rows from the mapped
shards), trained with the library's TaskRes trainer (closed-form gradient, Adam) for a few epochs. The
features are synthetic (class centres plus noise; the text base is the centres plus noise): speed and
memory do not depend on what the numbers mean.

Reported: the process's own memory (peak RssAnon, sampled every 50 ms: what must fit in RAM), its peak
resident set (VmHWM, which also counts mapped file pages the kernel may drop at will), the time of each
measured epoch, and the full schedule's time *extrapolated* from them. ``--eager`` runs the same training
from an in-memory [V, N, D] float32 tensor for comparison (V=1 fits in RAM; 10 views of 21k would not).

    python benchmarks/scale_training.py                          # 21k classes, 2 measured epochs, CPU
    python benchmarks/scale_training.py --classes 1000 --epochs 200 --device cuda   # ImageNet 16-shot, GPU
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from taskres.features import CachedFeatures, CachedViews, MappedViews
from taskres.methods.base import FitContext
from taskres.methods.taskres import TaskRes, TaskResParams


def proc_status() -> dict[str, int]:
    """Memory figures of this process in bytes, from /proc/self/status."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


class PeakMemory:
    """Samples /proc/self/status in a thread; keeps the largest RssAnon and VmRSS seen."""

    def __init__(self, every_s: float = 0.05):
        self.every_s, self.peak_anon, self.peak_rss = every_s, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            s = proc_status()
            self.peak_anon = max(self.peak_anon, s["RssAnon"])
            self.peak_rss = max(self.peak_rss, s["VmRSS"])
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def write_views(folder: Path, classes: int, shots: int, dim: int, views: int, shard_size: int, seed: int = 0):
    """Synthetic cache shards (fp16, the cache's file layout), written chunk by chunk; runs in a child process."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    np.save(folder / "base.npy", (centres + 3.0 * torch.randn(classes, dim, generator=g)).numpy())
    n = classes * shots
    labels = np.repeat(np.arange(classes), shots)
    np.save(folder / "labels.npy", labels)
    num = (n + shard_size - 1) // shard_size
    for v in range(views):
        d = folder / f"view{v}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(num):
            lo, hi = i * shard_size, min(n, (i + 1) * shard_size)
            rows = centres[torch.from_numpy(labels[lo:hi])] + 2.0 * torch.randn(hi - lo, dim, generator=g)
            last = "-last" if i == num - 1 and num > 1 else ""
            np.save(d / f"shard-{i:05d}{last}.npy", rows.numpy().astype(np.float16))


def gather_bench(data: Path, args) -> None:
    """Seconds to fetch one epoch of batches: from memory-mapped shards vs from a float32 tensor in RAM."""
    from taskres.methods.kit.training import epoch_batches

    labels = torch.from_numpy(np.load(data / "labels.npy"))
    mapped = [CachedFeatures(sorted((data / f"view{v}").glob("shard-*.npy"))) for v in range(args.views)]
    sources = {"mapped fp16 shards": MappedViews(mapped, labels, seed=1),
               "in-memory float32": CachedViews(torch.stack([m.to_tensor() for m in mapped]), labels, seed=1)}
    times = {name: [] for name in sources}
    for round_ in range(3):
        for name, source in sources.items():
            batches = epoch_batches(len(labels), args.batch_size, torch.Generator().manual_seed(round_))
            t = time.perf_counter()
            for idx in batches:
                source.features(idx, round_)
            times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        print(f"  one epoch of batch gathering ({len(labels)} rows, batch {args.batch_size}) from {name}: "
              f"{', '.join(f'{t:.2f}' for t in ts)} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=21000)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--views", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=2, help="epochs measured")
    ap.add_argument("--target-epochs", type=int, default=200, help="the schedule to extrapolate to")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--shard-size", type=int, default=2048)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (batches and the head on the GPU)")
    ap.add_argument("--products", default="fp32", choices=["fp32", "bf16"], help="TaskRes --set products=...")
    ap.add_argument("--eager", action="store_true", help="train from an in-memory float32 tensor instead")
    ap.add_argument("--workdir", default=None, help="keep the synthetic cache here (default: a temp folder)")
    ap.add_argument("--gather-only", action="store_true",
                    help="only time one epoch of batch gathering, mapped fp16 shards vs an in-memory tensor "
                         "(alternating, 3 rounds); no training")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="taskres-scale-"))
    tag = f"c{args.classes}-k{args.shots}-d{args.dim}-v{args.views}-s{args.shard_size}"
    data = work / tag
    try:
        if not (data / "done").is_file():
            t = time.perf_counter()
            data.mkdir(parents=True, exist_ok=True)
            # a child process writes the data, so its memory is not counted in this process's peak
            child = mp.get_context("spawn").Process(target=write_views, args=(
                data, args.classes, args.shots, args.dim, args.views, args.shard_size))
            child.start()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"writing the synthetic cache failed (exit {child.exitcode})")
            (data / "done").write_text("")
            print(f"wrote the synthetic cache in {time.perf_counter() - t:.0f} s: {data}")

        if args.gather_only:
            gather_bench(data, args)
            return
        before = proc_status()
        labels = torch.from_numpy(np.load(data / "labels.npy"))
        base = torch.from_numpy(np.load(data / "base.npy")).to(args.device)
        mapped = [CachedFeatures(sorted((data / f"view{v}").glob("shard-*.npy"))) for v in range(args.views)]
        n = len(labels)
        file_bytes = sum(f.stat().st_size for m in mapped for f in m.files)
        steps = n // args.batch_size if n >= args.batch_size else 1
        epoch_times: list[float] = []
        marks = {}

        def on_step(epoch, step, lr, loss):
            if step == steps - 1:
                now = time.perf_counter()
                epoch_times.append(now - marks.get("last", marks["start"]))
                marks["last"] = now

        with PeakMemory() as peak:
            if args.eager:
                feats = torch.stack([m.to_tensor() for m in mapped]).to(args.device)
                source = CachedViews(feats, labels.to(args.device), seed=1)
            else:
                source = MappedViews(mapped, labels, seed=1, device=args.device)
            ctx = FitContext(task_name="scale", classnames=[str(i) for i in range(args.classes)], templates=["{}"],
                             text_classifier=base, logit_scale=math.log(100.0), train=source, shots=args.shots,
                             seed=1, backbone_identity={"model": "synthetic"}, progress=False)
            params = TaskResParams(alpha=0.5, lr=2e-4, epochs=args.epochs, batch_size=args.batch_size,
                                   products=args.products, device=args.device)
            marks["start"] = time.perf_counter()
            clf = TaskRes(params).fit(ctx, on_step=on_step)
            total = time.perf_counter() - marks["start"]
        after = proc_status()
        per_epoch = statistics.median(epoch_times)
        probe = torch.arange(0, n, max(1, n // 4096))
        acc = float((clf(mapped[0].rows(probe)).argmax(1) == labels[probe]).float().mean()) * 100
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
                   platform.machine())
        gib = 2 ** 30
        result = {
            "rows": n, "classes": args.classes, "dim": args.dim, "views": args.views, "store": "fp16",
            "source": "eager float32 tensor" if args.eager else "memory-mapped fp16 shards (MappedViews)",
            "device": args.device, "products": args.products, "batch_size": args.batch_size, "steps_per_epoch": steps,
            "cache_files_gib": round(file_bytes / gib, 3),
            "eager_float32_gib": round(n * args.dim * 4 * args.views / gib, 3),
            "rss_anon_before_gib": round(before["RssAnon"] / gib, 3),
            "peak_rss_anon_gib": round(peak.peak_anon / gib, 3),
            "peak_rss_gib_incl_mapped_files": round(max(peak.peak_rss, after["VmHWM"]) / gib, 3),
            "epoch_seconds": [round(t, 1) for t in epoch_times], "median_epoch_s": round(per_epoch, 1),
            "measured_epochs": args.epochs, "measured_total_s": round(total, 1),
            "extrapolated_epochs": args.target_epochs,
            "extrapolated_total_h": round(per_epoch * args.target_epochs / 3600, 2),
            "train_top1_sampled": round(acc, 1),
            "machine": {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                        "torch": torch.__version__},
        }
        print(f"{n} rows x {args.dim} ({args.classes} classes x {args.shots} shots), {args.views} view(s): "
              f"{result['cache_files_gib']} GiB of fp16 shards; {result['source']} on {args.device}, "
              f"{args.products} products")
        print(f"  memory: process's own (RssAnon) peak {result['peak_rss_anon_gib']} GiB (before training "
              f"{result['rss_anon_before_gib']}); resident incl. mapped cache pages peak "
              f"{result['peak_rss_gib_incl_mapped_files']} GiB; an eager float32 copy alone would be "
              f"{result['eager_float32_gib']} GiB")
        print(f"  time: {steps} steps/epoch, epochs measured {result['epoch_seconds']} s -> median "
              f"{per_epoch:.1f} s/epoch; {args.target_epochs} epochs EXTRAPOLATED: "
              f"{result['extrapolated_total_h']} h")
        print(f"  train top-1 on a sample of rows after {args.epochs} epoch(s): {acc:.1f} %")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
