"""The reference training regime shared by the trained methods: batches, Adam, warm-up + cosine schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from .base import TrainingError


@dataclass(frozen=True)
class Schedule:
    """Epoch 0..warmup-1 at ``warmup_lr``; then lr_e = 0.5 * lr * (1 + cos(pi * (e - warmup) / epochs))."""

    lr: float
    epochs: int
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5

    def lr_at(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return self.warmup_lr
        return 0.5 * self.lr * (1 + math.cos(math.pi * (epoch - self.warmup_epochs) / self.epochs))


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A random permutation cut into batches; the last short batch is dropped only when n >= batch size."""
    perm = torch.randperm(n, generator=generator)
    drop_last = n >= batch_size
    stop = (n // batch_size) * batch_size if drop_last else n
    return [perm[i:i + batch_size] for i in range(0, stop, batch_size)]


def make_adam(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Adam:
    # Coupled L2 (torch Adam's weight_decay), as the reference: not AdamW. The fused kernel does the whole
    # update in one pass over the parameters (the same algorithm; it matters at 1,000 x 1,024 per step).
    params = list(params)
    fused = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, fused=fused or None)


def check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(f"the loss became {loss.item()} at epoch {epoch}, step {step}; lower the learning "
                            "rate (--set lr=...) or check the features for NaN")


def train_loop(params: list[torch.nn.Parameter], loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               source, schedule: Schedule, *, batch_size: int, weight_decay: float, seed: int,
               progress: bool = True, desc: str = "training",
               grad_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
               on_step: Callable[[int, int, float, float], None] | None = None) -> list[float]:
    """Run the schedule over ``source`` and return the mean loss of each epoch.

    ``loss_fn(features, labels)`` gives the loss. A method with a closed-form gradient passes
    ``grad_fn(features, labels) -> loss`` instead, which must fill ``.grad`` of ``params`` itself.
    ``on_step(epoch, step, lr, loss)`` is called after every optimiser step (for tests and logging).
    """
    from tqdm.auto import tqdm

    opt = make_adam(params, schedule.lr_at(0), weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(range(schedule.epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        for group in opt.param_groups:
            group["lr"] = schedule.lr_at(epoch)
        total, steps = torch.zeros(()), 0
        for step, idx in enumerate(epoch_batches(source.num_samples, batch_size, gen)):
            feats, labels = source.features(idx, epoch), source.labels[idx]
            if grad_fn is not None:
                loss = grad_fn(feats, labels)
            else:
                loss = loss_fn(feats, labels)
                for p in params:
                    p.grad = None
                loss.backward()
            check_finite(loss, epoch, step)
            opt.step()
            if on_step is not None:
                on_step(epoch, step, opt.param_groups[0]["lr"], float(loss.detach()))
            total += loss.detach()
            steps += 1
        history.append(float(total) / max(steps, 1))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    bar.close()
    return history
