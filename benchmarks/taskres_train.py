"""TaskRes training on cached features at ImageNet 16-shot scale, against plain PyTorch.

Defaults: 16,000 x 1,024 features (1,000 classes x 16 shots), batch 256 (the reference batch: 62 steps an
epoch), 200 epochs. Prints what it measured: our trainer's seconds for the whole run, once with fp32
matrix products (the faithful path) and once with bf16 products (``--set products=bf16``), the held-out
top-1 of both and how far apart their residuals are; a plain-PyTorch implementation (autograd, per-step
normalisation, stock Adam) timed over a few epochs; and the two matrix products alone in each precision, so
the distance to the floor is visible.

On the CPU it also times each step alone (the fused kernels and the torch ops, each precision), in rounds
that alternate with the two products alone, and prints the ratios of one run: each step against its own
products, bf16 against fp32, fused against torch. On a machine shared with other work the alternation keeps
a ratio's two sides under the same load; the rounds' median is printed with their range.

    python benchmarks/taskres_train.py                           # the full 200 epochs, both precisions
    python benchmarks/taskres_train.py --epochs 20 --products bf16
    python benchmarks/taskres_train.py --epochs 0 --rounds 9     # only the interleaved step ratios
    python benchmarks/taskres_train.py --device cuda
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import torch
import torch.nn.functional as F

from taskres.features import CachedViews
from taskres.methods.base import FitContext
from taskres.methods.taskres.fused import available as fused_available
from taskres.methods.taskres import FusedStep, ResidualGradient, TaskRes, TaskResParams
from taskres.methods.kit.training import CoupledAdam, Schedule, epoch_batches


def make_data(classes, shots, dim, views, seed=0):
    """Training views, held-out features of the same classes, and a text-like base that is useful but noisy."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(shots)
    feats = centres[labels][None] + 2.0 * torch.randn(views, len(labels), dim, generator=g)
    held_out = centres[labels] + 2.0 * torch.randn(len(labels), dim, generator=g)
    base = centres + 3.0 * torch.randn(classes, dim, generator=g)
    return feats, labels, held_out, base


def cpu_description():
    """The CPU's model and the vector / bf16 flags that decide these timings (x86 /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = {f for f in value.split() if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")}
    except OSError:
        pass
    return f"{model} ({' '.join(sorted(flags)) or 'no AVX2/AVX-512 flags'})"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def products_alone(feats, classes, batch, steps, dtype, device):
    """Seconds an epoch for the step's two matrix products (f W^T and g^T f) alone, in ``dtype``."""
    f = F.normalize(feats[0, :batch], dim=-1).to(device, dtype)
    w = torch.randn(classes, f.shape[1], device=device, dtype=dtype)
    g = torch.randn(f.shape[0], classes, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(f, w.t()), torch.mm(g.t(), f)
    sync(device)
    reps = 3 * steps
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(f, w.t())
        torch.mm(g.t(), f)
    sync(device)
    return (time.perf_counter() - t) / reps * steps


def step_makers(base, fused):
    """Each TaskRes step on its own (what ``TaskRes.fit`` runs, without the loop around it): name -> (feature
    dtype, a function making a fresh step(feats, labels))."""
    def torch_step(products):
        def make():
            x = torch.zeros_like(base)
            grad, adam = ResidualGradient(base, 0.5, 100.0, products), CoupledAdam(x, 2e-4, 5e-4)
            return lambda f, y: adam.step(grad(f, y, x)[1])
        return make

    def fused_step(products):
        def make():
            step = FusedStep(base, torch.zeros_like(base), 0.5, 100.0, 2e-4, 5e-4, products)
            return lambda f, y: step(f, y, 2e-4)
        return make

    makers = {}
    for products, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if fused:
            makers[f"{products} fused"] = (products, dtype, fused_step(products))
        makers[f"{products} torch"] = (products, dtype, torch_step(products))
    return makers


def interleaved_ratios(feats, labels, base, batch, rounds, products, fused):
    """Per-step seconds of each step and of the two products alone, in alternating rounds of one epoch's
    batches each; returns {name: [seconds per step, one per round]}."""
    normed = F.normalize(feats[0], dim=-1)
    gen = torch.Generator().manual_seed(0)
    batches = epoch_batches(normed.shape[0], batch, gen)
    classes = base.shape[0]
    data = {dtype: [(normed[idx].to(dtype), labels[idx]) for idx in batches]
            for dtype in (torch.float32, torch.bfloat16)}
    runs = {}
    for name in products:
        dtype = torch.float32 if name == "fp32" else torch.bfloat16
        w = torch.randn(classes, base.shape[1], dtype=dtype)
        g = torch.randn(batch, classes, dtype=dtype)
        runs[f"{name} products alone"] = (dtype, lambda w=w, g=g: lambda f, y: (torch.mm(f, w.t()),
                                                                                  torch.mm(g.t(), f)))
    for name, (p, dtype, make) in step_makers(base, fused).items():
        if p in products:
            runs[name] = (dtype, make)
    steps = {name: make() for name, (_, make) in runs.items()}
    for name, step in steps.items():  # warm-up: compiled kernels, buffers
        for f, y in data[runs[name][0]][:3]:
            step(f, y)
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            for f, y in data[runs[name][0]]:
                step(f, y)
            times[name].append((time.perf_counter() - t) / len(batches))
    return times


def print_ratios(times):
    """Ratios of the same rounds: median over rounds, with the range."""
    def ratio(a, b):
        if a not in times or b not in times:
            return
        r = sorted(x / y for x, y in zip(times[a], times[b]))
        print(f"  {a} / {b}: {r[len(r) // 2]:.3f}x (rounds {r[0]:.3f}-{r[-1]:.3f})")

    for name, t in times.items():
        print(f"  {name}: {sorted(t)[len(t) // 2] * 1e3:.2f} ms/step (median; min {min(t) * 1e3:.2f})")
    for p in ("fp32", "bf16"):
        for how in ("fused", "torch"):
            ratio(f"{p} {how}", f"{p} products alone")
    ratio("bf16 fused", "fp32 fused")
    ratio("bf16 torch", "fp32 torch")
    ratio("bf16 products alone", "fp32 products alone")
    for p in ("fp32", "bf16"):
        ratio(f"{p} fused", f"{p} torch")


def plain_pytorch_epochs(feats, labels, base, epochs, batch, lr, alpha=0.5):
    """The straightforward way: autograd through F.normalize and cross-entropy, torch Adam defaults."""
    x = torch.nn.Parameter(torch.zeros_like(base))
    opt = torch.optim.Adam([x], lr=lr, weight_decay=5e-4)
    scale = torch.tensor(math.log(100.0)).exp()
    gen = torch.Generator().manual_seed(0)
    sched = Schedule(lr, epochs)
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = sched.lr_at(epoch)
        for idx in epoch_batches(feats.shape[1], batch, gen):
            f = feats[0, idx]
            logits = scale * F.normalize(f, dim=-1) @ F.normalize(base + alpha * x, dim=-1).t()
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return x.detach()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--views", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--products", default="fp32,bf16", help="comma-separated: fp32 (faithful), bf16")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--no-fused", action="store_true",
                    help="bf16 on the CPU: plain torch ops instead of numba's fused kernels")
    ap.add_argument("--plain-epochs", type=int, default=5, help="epochs of the plain-PyTorch baseline (0: skip)")
    ap.add_argument("--rounds", type=int, default=7,
                    help="CPU: alternating rounds of the per-step timing (0: skip)")
    ap.add_argument("--torch-runs", action="store_true",
                    help="also time whole runs with torch ops instead of the fused kernels")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--figure", default=None, help="also draw the measured seconds for the whole run (PNG/SVG)")
    ap.add_argument("--target", type=float, default=60.0, help="the line drawn on the figure, in seconds")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    products = [p.strip() for p in args.products.split(",") if p.strip()]
    feats, labels, held_out, base = make_data(args.classes, args.shots, args.dim, args.views)
    n = feats.shape[1]
    steps = len(epoch_batches(n, args.batch, torch.Generator().manual_seed(0)))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu_description()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    print(f"machine: {where}, torch {torch.__version__}")
    print(f"data: {n} x {args.dim} features, {args.views} view(s), {args.classes} classes, batch {args.batch}, "
          f"{steps} steps/epoch, {args.epochs} epochs")

    floor = {}
    for name in products:
        floor[name] = products_alone(feats, args.classes, args.batch, steps,
                                     torch.float32 if name == "fp32" else torch.bfloat16, device)
        print(f"matrix products alone, {name}: {floor[name]:.3f} s/epoch "
              f"({floor[name] * args.epochs:.1f} s for {args.epochs} epochs)")

    if args.rounds and device.type == "cpu":
        fused = not args.no_fused and fused_available()
        print(f"each step alone, alternating with the products alone ({args.rounds} rounds of {steps} steps):")
        print_ratios(interleaved_ratios(feats, labels, base, args.batch, args.rounds, products, fused))

    ctx = FitContext(task_name="bench", classnames=[str(i) for i in range(args.classes)], templates=["{}"],
                     text_classifier=base, logit_scale=math.log(100.0), train=CachedViews(feats, labels, 0),
                     shots=args.shots, seed=1, backbone_identity={"model": "bench"}, progress=False)
    fitted, seconds_of, label_of = {}, {}, {}
    runs = [(name, not args.no_fused) for name in products]
    if args.torch_runs and not args.no_fused:
        runs += [(name, False) for name in products]
    for name, fused in runs if args.epochs else []:
        params = TaskResParams(alpha=0.5, lr=2e-4, epochs=args.epochs, batch_size=args.batch, products=name,
                               device=str(device), fused=fused)
        t = time.perf_counter()
        clf = TaskRes(params).fit(ctx)
        seconds = time.perf_counter() - t
        how = " (fused kernels)" if fused and device.type == "cpu" and fused_available() else ""
        key = name if fused else f"{name}, torch ops"
        fitted[key], seconds_of[key] = clf, seconds
        train_acc = float((clf(feats[0]).argmax(1) == labels).float().mean()) * 100
        test_acc = float((clf(held_out).argmax(1) == labels).float().mean()) * 100
        label_of[key] = f"ours, {name} products{how or (', torch ops' if device.type == 'cpu' else '')}"
        print(f"taskres, {name} products{how or (', torch ops' if device.type == 'cpu' else '')}: {seconds:.1f} s "
              f"for {args.epochs} epochs = {seconds / args.epochs:.3f} s/epoch "
              f"({seconds / args.epochs / floor[name]:.2f}x its matrix products); "
              f"top-1 train {train_acc:.2f} %, held-out {test_acc:.2f} %", flush=True)
    if "fp32" in fitted and "bf16" in fitted:
        a, b = fitted["fp32"], fitted["bf16"]
        rel = float((b.residual - a.residual).norm() / a.residual.norm())
        agree = float((a(held_out).argmax(1) == b(held_out).argmax(1)).float().mean()) * 100
        print(f"bf16 vs fp32 products: residuals differ by {rel:.2e} (relative L2); held-out predictions agree "
              f"on {agree:.2f} %")

    plain = None
    if args.plain_epochs:
        t = time.perf_counter()
        plain_pytorch_epochs(feats.to(device), labels.to(device), base.to(device), args.plain_epochs, args.batch,
                             2e-4)
        sync(device)
        plain = (time.perf_counter() - t) / args.plain_epochs
        print(f"plain PyTorch (autograd, stock Adam): {plain:.3f} s/epoch, measured over {args.plain_epochs} "
              f"epochs -> {plain * args.epochs:.0f} s for {args.epochs} epochs (extrapolated)")
    if args.figure:
        draw(args, where, floor, seconds_of, label_of, plain)
        print(f"figure: {args.figure}")


def draw(args, where, floor, seconds_of, label_of, plain):
    """Horizontal bars of seconds for the whole run: what was timed, the products' floor, the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []  # (label, seconds, kind)
    if plain is not None:
        rows.append(("plain PyTorch (extrapolated)", plain * args.epochs, "plain"))
    for name, seconds in seconds_of.items():
        products = name.split(",")[0]
        rows.append((label_of[name], seconds, products))
        if products == name:
            rows.append((f"{name} products alone", floor[name] * args.epochs, "floor"))
    colours = {"plain": "#9e9e9e", "fp32": "#1f77b4", "bf16": "#2ca02c", "floor": "#d9d9d9"}
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.4))
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, [r[1] for r in rows], color=[colours[r[2]] for r in rows])
    for y, (_, value, _) in zip(ys, rows):
        ax.text(value, y, f" {value:.1f} s", va="center", fontsize=9)
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=9)
    ax.axvline(args.target, color="#d62728", linestyle="--", linewidth=1)
    ax.text(args.target, -0.55, f" target {args.target:g} s", color="#d62728", fontsize=9, va="center")
    ax.set_xlabel(f"seconds for {args.epochs} epochs")
    ax.set_xlim(0, max(max(r[1] for r in rows), args.target) * 1.18)
    n = args.classes * args.shots
    ax.set_title(f"TaskRes, {n:,} x {args.dim} features, {args.classes:,} classes, batch {args.batch}\n{where}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(args.figure, dpi=130)


if __name__ == "__main__":
    main()
