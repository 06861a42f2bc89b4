"""TaskRes training on cached features at ImageNet 16-shot scale, against plain PyTorch.

Defaults: 16,000 x 1,024 features (1,000 classes x 16 shots), batch 256 (the reference batch: 62 steps an
epoch), 200 epochs. Prints what it measured: our trainer's seconds for the whole run, a plain-PyTorch
implementation (autograd, per-step normalisation, stock Adam) timed over a few epochs, and the two matrix
products alone, so the distance to the floor is visible.

    python benchmarks/taskres_train.py                 # the full 200 epochs
    python benchmarks/taskres_train.py --epochs 20     # quicker look
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
from taskres.methods.taskres import TaskRes, TaskResParams, taskres_loss_and_grad
from taskres.methods.training import Schedule, epoch_batches


def make_data(classes, shots, dim, views, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(shots)
    feats = centres[labels][None] + 2.0 * torch.randn(views, len(labels), dim, generator=g)
    base = centres + 3.0 * torch.randn(classes, dim, generator=g)
    return feats, labels, base


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
    ap.add_argument("--plain-epochs", type=int, default=5, help="epochs of the plain-PyTorch baseline (0: skip)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    feats, labels, base = make_data(args.classes, args.shots, args.dim, args.views)
    n = feats.shape[1]
    steps = len(epoch_batches(n, args.batch, torch.Generator().manual_seed(0)))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print(f"data: {n} x {args.dim} features, {args.views} view(s), {args.classes} classes, batch {args.batch}, "
          f"{steps} steps/epoch, {args.epochs} epochs")

    # the two matrix products of a step, alone: the floor for any exact fp32 implementation
    f = F.normalize(feats[0, :args.batch], dim=-1)
    w = torch.randn(args.classes, args.dim)
    g = torch.randn(args.batch, args.classes)
    for _ in range(3):
        torch.mm(f, w.t()), torch.mm(g.t(), f)
    t = time.perf_counter()
    reps = 3 * steps
    for _ in range(reps):
        torch.mm(f, w.t())
        torch.mm(g.t(), f)
    matmul_epoch = (time.perf_counter() - t) / reps * steps
    print(f"matrix products alone: {matmul_epoch:.3f} s/epoch")

    t = time.perf_counter()
    x = torch.zeros_like(base)
    for _ in range(steps):
        taskres_loss_and_grad(f, labels[:args.batch], base, x, 0.5, 100.0)
    print(f"closed-form loss+gradient alone: {time.perf_counter() - t:.3f} s/epoch")

    ctx = FitContext(task_name="bench", classnames=[str(i) for i in range(args.classes)], templates=["{}"],
                     text_classifier=base, logit_scale=math.log(100.0), train=CachedViews(feats, labels, 0),
                     shots=args.shots, seed=1, backbone_identity={"model": "bench"}, progress=True)
    t = time.perf_counter()
    clf = TaskRes(TaskResParams(alpha=0.5, lr=2e-4, epochs=args.epochs, batch_size=args.batch)).fit(ctx)
    ours = time.perf_counter() - t
    train_acc = float((clf(feats[0]).argmax(1) == labels).float().mean()) * 100
    print(f"taskres (closed-form gradient, fused Adam): {ours:.1f} s for {args.epochs} epochs = "
          f"{ours / args.epochs:.3f} s/epoch ({ours / args.epochs / matmul_epoch:.2f}x the matrix products); "
          f"train top-1 {train_acc:.1f} %")

    if args.plain_epochs:
        t = time.perf_counter()
        plain_pytorch_epochs(feats, labels, base, args.plain_epochs, args.batch, 2e-4)
        plain = (time.perf_counter() - t) / args.plain_epochs
        print(f"plain PyTorch (autograd, stock Adam): {plain:.3f} s/epoch, measured over {args.plain_epochs} "
              f"epochs -> {plain * args.epochs:.0f} s for {args.epochs} epochs (extrapolated); ours is "
              f"{plain * args.epochs / ours:.1f}x faster")


if __name__ == "__main__":
    main()
