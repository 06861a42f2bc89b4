"""Pieces the comparison methods share: training matrices, the linear head, validation search, a loop.

Nothing here reads files. Everything a method sees comes from its ``FitContext``; hyper-parameters are
chosen on ``ctx.val_features`` / ``ctx.val_labels`` (the few-shot validation split) and never on test data,
which a FitContext does not hold.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..classifier import Classifier, ClassifierMeta, logit_scale_exp
from .base import FitContext, TrainingError
from .training import Schedule, check_finite, epoch_batches

log = logging.getLogger("taskres")
TRAIN_VIEWS = ("all", "mean", "one")


def train_matrix(ctx: FitContext, views: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """The training images as one matrix, for methods fitted in closed form or full batch.

    ``all``: every cached augmented view is a sample (V * N rows); ``mean``: the mean of each image's
    views (Tip-Adapter's cache keys average 10 augmented passes); ``one``: the single view each image
    shows in epoch 0. A source that holds no in-memory ``views`` tensor (the online regime, memory-mapped
    views) gives that one view per image whatever is asked. CPU tensors.
    """
    if views not in TRAIN_VIEWS:
        raise ValueError(f"--set train_views must be one of {', '.join(TRAIN_VIEWS)}, not {views!r}")
    source = ctx.train
    labels = source.labels.cpu()
    cached = getattr(source, "views", None)
    if cached is None or views == "one":
        return ctx.all_train_features(0).float().cpu(), labels
    cached = cached.float().cpu()
    if views == "mean":
        return cached.mean(dim=0), labels
    v, n, d = cached.shape
    return cached.reshape(v * n, d), labels.repeat(v)


def has_val(ctx: FitContext) -> bool:
    return ctx.val_features is not None and ctx.val_labels is not None and len(ctx.val_labels) > 0


def warn_no_val(method: str, fallback: str) -> None:
    log.warning("%s: no validation split to search on; using %s", method, fallback)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean()) if len(labels) else float("nan")


def normalized_text(ctx: FitContext) -> torch.Tensor:
    """The zero-shot classifier's rows on the unit sphere (t / |t|).

    t is the template mean of unnormalised embeddings (the project's base). Tip-Adapter, LP++ and GDA's code
    normalise each template's embedding before averaging; with one template (all but ImageNet) both agree.
    """
    return F.normalize(ctx.text_classifier.float(), dim=-1)


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
               device: torch.device | None = None, dtype: torch.dtype = torch.float32,
               scaler=None) -> list[float]:
    """Mini-batch training with any optimiser; the batches are those of the shared ``train_loop``.

    ``schedule`` is the reference per-epoch warm-up + cosine (``Schedule``) or a per-step cosine
    (``StepCosine``). Batches are moved to ``device`` (default: the first parameter's) in ``dtype`` (the
    precision the method trains in). ``scaler``: a ``torch.amp.GradScaler`` scales the loss before the
    backward pass and skips steps whose gradients overflow (mixed precision, as ``torch.cuda.amp`` code
    does). Returns the mean loss of each epoch.
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
        for step, idx in enumerate(epoch_batches(source.num_samples, batch_size, gen)):
            if isinstance(schedule, StepCosine):
                for group in optimizer.param_groups:
                    group["lr"] = schedule.lr_at_step(global_step)
            feats, labels = source.features(idx, epoch).to(device), source.labels[idx].to(device)
            loss = loss_fn(feats.to(dtype), labels)
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
