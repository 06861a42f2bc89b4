"""Pieces the comparison methods share: training matrices, the linear head, validation search, a loop.

Nothing here reads files. Everything a method sees comes from its ``FitContext``; hyper-parameters are
chosen on ``ctx.val_features`` / ``ctx.val_labels`` (the few-shot validation split) and never on test data,
which a FitContext does not hold.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from ..classifier import Classifier, ClassifierMeta, logit_scale_exp
from .base import FitContext, TrainingError
from .training import Schedule, check_finite, epoch_batches

log = logging.getLogger("taskres")
TRAIN_VIEWS = ("all", "mean", "one")
ROW_CHUNK = 8192  # training rows read at a time where a method streams its samples (memory-mapped views)


def working_float(x: torch.Tensor) -> torch.Tensor:
    """float32 for half, bfloat16 or float32 inputs; float64 stays float64 (the parity checks run the methods in
    float64 against their authors' code, where float32 round-off would hide a real difference)."""
    return x if x.dtype == torch.float64 else x.float()


def train_matrix(ctx: FitContext, views: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """The training images as one matrix, for methods fitted in closed form or full batch.

    ``all``: every cached augmented view is a sample (V * N rows, view by view); ``mean``: the mean of each
    image's views (Tip-Adapter's cache keys average 10 augmented passes); ``one``: the single view each image
    shows in epoch 0. In-memory and memory-mapped views give the same matrix: the mean is accumulated view by
    view, in chunks of rows, the same way for both. ``all`` from memory-mapped views would hold every view in
    memory at once, which ``--memory-map`` exists to avoid: refused there (methods that use every view,
    GDA and CLAP, stream them with :class:`TrainSamples`). CPU float32 tensors (float64 for float64 views).
    """
    check_train_views(views)
    source = cached_source(ctx)
    labels = source.labels.cpu()
    if views == "one":
        return working_float(ctx.all_train_features(0)).cpu(), labels
    if views == "mean":
        return view_mean(source), labels
    v, n = source.num_views, source.num_samples
    if getattr(source, "views", None) is not None:  # in memory already: a view of it, no copy
        return working_float(source.views).cpu().reshape(v * n, source.dim), labels.repeat(v)
    if v > 1:
        raise TrainingError("--set train_views=all with --memory-map: this method holds every cached view in "
                            f"memory at once ({v} x {n} rows); use train_views=mean or one, or drop --memory-map")
    return source.view_rows(0, torch.arange(n)), labels


def check_train_views(views: str) -> None:
    if views not in TRAIN_VIEWS:
        raise ValueError(f"--set train_views must be one of {', '.join(TRAIN_VIEWS)}, not {views!r}")


def cached_source(ctx: FitContext):
    """The training source, which must hold cached views (in memory or memory-mapped)."""
    source = ctx.train
    if not hasattr(source, "view_rows"):  # the online regime: images re-encoded at every step, nothing cached
        raise TrainingError("--regime online: this method reads the training images once, as cached views "
                            "(its reference regime); use --regime cached")
    return source


def row_chunks(n: int, size: int | None = None):
    size = size or ROW_CHUNK
    for start in range(0, n, size):
        yield torch.arange(start, min(n, start + size))


def view_mean(source) -> torch.Tensor:
    """The mean of each image's cached views [N, D], accumulated in float64 view by view, chunk by chunk
    (memory holds the mean and one chunk, never the V views); float32, or float64 for float64 views."""
    n, total = source.num_samples, torch.zeros(source.num_samples, source.dim, dtype=torch.float64)
    dtype = torch.float32
    for v in range(source.num_views):
        for idx in row_chunks(n):
            rows = source.view_rows(v, idx)
            dtype = torch.float64 if rows.dtype == torch.float64 else dtype
            total[idx] += rows.double()
    return (total / source.num_views).to(dtype)


class TrainSamples:
    """The samples ``train_matrix(ctx, views)`` stacks, read chunk by chunk or by index, never all at once.

    For ``views="all"`` sample ``i`` is view ``i // N`` of image ``i % N`` (the matrix's view-major order),
    gathered from the source's views (in memory or memory-mapped: the same rows either way); ``mean`` and
    ``one`` are N rows held in memory (the matrix itself).
    """

    def __init__(self, ctx: FitContext, views: str = "all"):
        check_train_views(views)
        self.source = cached_source(ctx)
        self.matrix = None
        if views == "all":
            self.num_images = self.source.num_samples
            self.labels = self.source.labels.cpu().repeat(self.source.num_views)
        else:
            self.matrix, self.labels = train_matrix(ctx, views)

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Samples ``idx`` (any order) as a float32 CPU tensor [len(idx), D]."""
        if self.matrix is not None:
            return self.matrix[idx]
        view, image = idx // self.num_images, idx % self.num_images
        out = torch.empty(len(idx), self.source.dim)
        for v in view.unique().tolist():
            sel = view == v
            out[sel] = self.source.view_rows(v, image[sel])
        return out

    def chunks(self, size: int | None = None):
        """(samples, labels) in order, ``size`` rows at a time."""
        for idx in row_chunks(len(self), size):
            yield self.rows(idx), self.labels[idx]


@dataclass
class ClassMoments:
    """Per-class counts and means, and the scatter of the class-centred samples sum_i (x_i - mu_y)(x_i - mu_y)^T,
    accumulated in float64 (two passes over the samples, chunk by chunk)."""

    counts: torch.Tensor  # [C]
    means: torch.Tensor  # [C, D]
    scatter: torch.Tensor  # [D, D]

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())


def class_moments(sample_chunks: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], num_classes: int,
                  normalize: bool = True) -> ClassMoments:
    """Class means and centred scatter of the (row-normalised) samples that ``sample_chunks()`` yields as
    (rows, labels) chunks (e.g. ``TrainSamples.chunks``), streamed: memory holds one chunk."""
    def chunks():
        for x, y in sample_chunks():
            yield (F.normalize(x, dim=-1) if normalize else x).double(), y

    sums, counts = None, torch.zeros(num_classes, dtype=torch.float64)
    for x, y in chunks():
        one_hot = F.one_hot(y, num_classes).to(x.dtype)
        sums = one_hot.t() @ x if sums is None else sums + one_hot.t() @ x
        counts += one_hot.sum(dim=0)
    means = sums / counts.clamp(min=1)[:, None]
    scatter = 0
    for x, y in chunks():
        centred = x - means[y]
        scatter = scatter + centred.t() @ centred
    return ClassMoments(counts, means, scatter)


def has_val(ctx: FitContext) -> bool:
    return ctx.val_features is not None and ctx.val_labels is not None and len(ctx.val_labels) > 0


def warn_no_val(method: str, fallback: str) -> None:
    log.warning("%s: no validation split to search on; using %s", method, fallback)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean()) if len(labels) else float("nan")


def normalized_text(ctx: FitContext) -> torch.Tensor:
    """The zero-shot classifier's rows on the unit sphere (t / |t|).

    t is built by the method's text recipe (methods/text_recipe.py): Tip-Adapter, LP++ and GDA's recipe already
    normalises each template's embedding and the mean, so this is then t itself.
    """
    return F.normalize(working_float(ctx.text_classifier), dim=-1)


def zero_shot_logits(features_normed: torch.Tensor, text_normed: torch.Tensor, logit_scale: float) -> torch.Tensor:
    return logit_scale_exp(logit_scale) * features_normed @ text_normed.t()


def seeded_generator(seed: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1000003 + salt)


def linspace_grid(top: float, steps: int, start: float = 0.1) -> list[float]:
    """Tip-Adapter's search grid: ``steps`` values from ``start`` up to (not including) ``top``."""
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"a search grid needs at least one step, not {steps}")
    return [start + i * (top - start) / steps for i in range(steps)]


# -- the linear head shared by the linear probe, LP++ and GDA ------------------------------------------
class LinearClassifier(Classifier):
    """logits = normalize(f) @ W^T + b (or f @ W^T + b with ``normalize`` off)."""

    kind = "linear"

    def __init__(self, meta: ClassifierMeta, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 normalize: bool = True):
        super().__init__(meta)
        self.register_buffer("weight", weight.detach().float().cpu().clone())
        self.register_buffer("bias", torch.zeros(weight.shape[0]) if bias is None else
                             bias.detach().float().cpu().clone())
        self.normalize = bool(normalize)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.float()
        if self.normalize:
            x = F.normalize(x, dim=-1)
        return x @ self.weight.t() + self.bias

    def tensors(self):
        return {"weight": self.weight, "bias": self.bias}

    def config(self):
        return {"normalize": self.normalize}

    @classmethod
    def from_tensors(cls, tensors, meta, config):
        return cls(meta, tensors["weight"], tensors["bias"], config.get("normalize", True))


# -- a training loop for optimisers other than the reference Adam --------------------------------------
@dataclass(frozen=True)
class StepCosine:
    """Cosine annealing per optimiser step over the whole run, no warm-up (torch's CosineAnnealingLR)."""

    lr: float
    epochs: int
    steps_per_epoch: int

    def lr_at_step(self, step: int) -> float:
        total = max(1, self.epochs * self.steps_per_epoch)
        return 0.5 * self.lr * (1 + math.cos(math.pi * step / total))


def run_epochs(params: list[torch.nn.Parameter], loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               source, schedule: Schedule | StepCosine, optimizer: torch.optim.Optimizer, *, batch_size: int,
               seed: int, progress: bool = True, desc: str = "training",
               on_epoch_end: Callable[[int], None] | None = None,
               device: torch.device | None = None, keep_partial: bool = False,
               dtype: torch.dtype | None = None, scaler=None) -> list[float]:
    """Mini-batch training with any optimiser; the batches are those of the shared ``train_loop``.

    ``schedule`` is the reference per-epoch warm-up + cosine (``Schedule``) or a per-step cosine
    (``StepCosine``). Batches are moved to ``device`` (default: the first parameter's) in ``dtype`` (the
    precision the method trains in; default: float32, float64 kept as float64); ``keep_partial`` keeps the last
    short batch (``epoch_batches``). ``scaler``: a ``torch.amp.GradScaler`` scales the loss before the
    backward pass and skips steps whose gradients overflow (mixed precision, as ``torch.cuda.amp`` code does).
    Returns the mean loss of each epoch.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"--set batch_size must be at least 1, not {batch_size}")
    device = device if device is not None else params[0].device
    gen = torch.Generator().manual_seed(seed)
    history, global_step = [], 0
    bar = tqdm(range(schedule.epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        if isinstance(schedule, Schedule):
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr_at(epoch)
        total, steps = 0.0, 0
        for step, idx in enumerate(epoch_batches(source.num_samples, batch_size, gen, keep_partial)):
            if isinstance(schedule, StepCosine):
                for group in optimizer.param_groups:
                    group["lr"] = schedule.lr_at_step(global_step)
            feats, labels = source.features(idx, epoch).to(device), source.labels[idx].to(device)
            loss = loss_fn(working_float(feats) if dtype is None else feats.to(dtype), labels)
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                check_finite(loss, epoch, step)
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                check_finite(loss, epoch, step)
                scaler.step(optimizer)
                scaler.update()
            total += float(loss.detach())
            steps += 1
            global_step += 1
        history.append(total / max(steps, 1))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    bar.close()
    return history


def sgd(params: list[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    # Dassl's SGD (CoOp, CLIP-Adapter): momentum 0.9, no dampening, no Nesterov, coupled weight decay.
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def require_positive(name: str, value: float) -> None:
    if value is None or not value > 0:
        raise ValueError(f"--set {name} must be positive, not {value}")


def check_epochs(epochs: int, name: str = "epochs") -> None:
    if epochs is None or epochs < 0:
        raise ValueError(f"--set {name} must be 0 or more, not {epochs}")


def check_classes(ctx: FitContext, labels: torch.Tensor) -> None:
    missing = sorted(set(range(ctx.num_classes)) - set(labels.unique().tolist()))
    if missing:
        raise TrainingError(f"the training split has no image of class {ctx.classnames[missing[0]]!r} "
                            f"({len(missing)} class(es) without a shot); this method needs every class")
