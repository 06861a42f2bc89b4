"""The training loop the trained methods share and its parts: batches, optimisers, schedules, devices."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from ...errors import OptionError
from ..base import TrainingError
from .samples import working_float


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

    def lr_for(self, epoch: int, step: int) -> float:
        return self.lr_at(epoch)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator,
                  keep_partial: bool = False) -> list[torch.Tensor]:
    """A random permutation cut into batches.

    The last short batch is dropped only when n >= batch size (Dassl's ``drop_last=is_train and
    len(data_source) >= batch_size``: TaskRes, CoOp, CLIP-Adapter), or never with ``keep_partial``
    (a torch DataLoader with ``drop_last=False``: Tip-Adapter-F's datasets/utils.py build_data_loader).
    """
    perm = torch.randperm(n, generator=generator)
    drop_last = n >= batch_size and not keep_partial
    stop = (n // batch_size) * batch_size if drop_last else n
    return [perm[i:i + batch_size] for i in range(0, stop, batch_size)]


def make_adam(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Adam:
    # Coupled L2 (torch Adam's weight_decay), as the reference: not AdamW. The fused kernel does the whole
    # update in one pass over the parameters (the same algorithm; it matters at 1,000 x 1,024 per step).
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params)
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, fused=fused or None)


class CoupledAdam:
    """``torch.optim.Adam`` with coupled weight decay (``make_adam``) for one float32 tensor, stepping the
    fused kernel directly.

    The update is torch's fused Adam, bit for bit (a test holds it to ``torch.optim.Adam``); what is skipped
    is torch.optim's per-step bookkeeping (grouping, state look-ups), about 0.15 ms a step on a 2-core CPU:
    2 s of a 200-epoch ImageNet TaskRes run whose whole step takes 4 ms. Where the fused kernel is missing
    (another torch, another device type) it falls back to ``make_adam``.
    """

    def __init__(self, param: torch.Tensor, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.param, self.lr, self.weight_decay, self.betas, self.eps = param, lr, weight_decay, betas, eps
        self._fallback = None
        if not (hasattr(torch, "_fused_adam_") and param.dtype == torch.float32
                and param.device.type in ("cpu", "cuda")):
            self._fallback = make_adam([param], lr, weight_decay)
            return
        self.param = param.detach()  # the same storage; the kernel updates it in place
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self.state_step = torch.zeros((), dtype=torch.float32, device=param.device)

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        if self._fallback is not None:
            self.param.grad = grad
            for group in self._fallback.param_groups:
                group["lr"] = self.lr
            self._fallback.step()
            return
        self.state_step.add_(1)
        torch._fused_adam_([self.param], [grad], [self.exp_avg], [self.exp_avg_sq], [], [self.state_step],
                           lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=self.weight_decay,
                           eps=self.eps, amsgrad=False, maximize=False)


def resolve_device(name: str, method: str | None = None) -> torch.device:
    """A method's ``device`` parameter: "auto" (a GPU if there is one), "cpu", "cuda", "cuda:N"."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError("device", f"{name!r} is not a device (auto, cpu, cuda, cuda:N)", method=method) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("device", f"{name!r}: no CUDA device is available", method=method)
    return device


def check_finite(loss: torch.Tensor, epoch: int, step: int | None = None) -> None:
    if not torch.isfinite(loss):
        where = f"epoch {epoch}" if step is None else f"epoch {epoch}, step {step}"
        raise TrainingError(f"the loss became {float(loss)} in {where}; lower the learning rate (lr) "
                            "or check the features for NaN")


def seeded_generator(seed: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1000003 + salt)


@dataclass(frozen=True)
class StepCosine:
    """Cosine annealing per optimiser step over the whole run, no warm-up (torch's CosineAnnealingLR)."""

    lr: float
    epochs: int
    steps_per_epoch: int

    def lr_at_step(self, step: int) -> float:
        total = max(1, self.epochs * self.steps_per_epoch)
        return 0.5 * self.lr * (1 + math.cos(math.pi * step / total))

    def lr_for(self, epoch: int, step: int) -> float:
        return self.lr_at_step(step)


# -- the one training loop and the steps it takes ---------------------------------------------------------
class ClosedFormStep:
    """A step of one parameter whose gradient a method computes itself (TaskRes's ``ResidualGradient``):
    ``grad_fn(features, labels) -> (loss, gradient)``, then :class:`CoupledAdam`'s update."""

    check_each_step = False  # the loss stays on the device; the loop checks the epoch's sum

    def __init__(self, param: torch.Tensor, grad_fn: Callable[[torch.Tensor, torch.Tensor],
                 tuple[torch.Tensor, torch.Tensor]], lr: float, weight_decay: float):
        self.param = param  # what the step updates (in place)
        self.grad_fn, self.adam = grad_fn, CoupledAdam(param, lr, weight_decay)

    def __call__(self, feats: torch.Tensor, labels: torch.Tensor, lr: float) -> torch.Tensor:
        loss, grad = self.grad_fn(feats, labels)
        self.adam.lr = lr
        self.adam.step(grad)
        return loss


class OptimizerStep:
    """A step by autograd and any torch optimiser: ``loss_fn(features, labels)``, backward, ``optimizer.step``.

    Batches are moved to ``device`` (default: the first parameter's) in ``dtype`` (the precision the method
    trains in; default: float32, float64 kept as float64). ``scaler``: a ``torch.amp.GradScaler`` scales the
    loss before the backward pass and skips steps whose gradients overflow (mixed precision, as
    ``torch.cuda.amp`` code does). ``check_each_step``: the loop checks (and reads) every step's loss, as the
    comparison methods' loops do; off, it sums them on the device and checks once an epoch.
    """

    def __init__(self, params: list[torch.nn.Parameter], loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 optimizer: torch.optim.Optimizer, *, device: torch.device | None = None,
                 dtype: torch.dtype | None = None, scaler=None, check_each_step: bool = True):
        self.loss_fn, self.optimizer, self.scaler, self.dtype = loss_fn, optimizer, scaler, dtype
        self.device = device if device is not None else params[0].device
        self.check_each_step = check_each_step

    def __call__(self, feats: torch.Tensor, labels: torch.Tensor, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        feats, labels = feats.to(self.device), labels.to(self.device)
        loss = self.loss_fn(working_float(feats) if self.dtype is None else feats.to(self.dtype), labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss


def train_loop(step: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor], source,
               schedule: Schedule | StepCosine, *, batch_size: int, seed: int, progress: bool = True,
               desc: str = "training", keep_partial: bool = False,
               on_step: Callable[[int, int, float, float], None] | None = None,
               on_epoch_end: Callable[[int], None] | None = None) -> list[float]:
    """Run ``schedule`` over ``source`` in random batches and return the mean loss of each epoch.

    ``step(features, labels, lr) -> loss`` makes one optimiser step: :class:`OptimizerStep` (autograd, any
    optimiser), :class:`ClosedFormStep` (a gradient the method computes) or a step that does everything
    itself (TaskRes's fused kernels). ``schedule`` gives each step's learning rate: the reference per-epoch
    warm-up + cosine (:class:`Schedule`) or a per-step cosine (:class:`StepCosine`). ``keep_partial`` keeps
    the last short batch (:func:`epoch_batches`). ``on_step(epoch, step, lr, loss)`` is called after every
    step (tests, logging), ``on_epoch_end(epoch)`` after every epoch (per-epoch validation).

    A NaN or infinite loss stops the run with the epoch named: a step whose ``check_each_step`` is true has
    each loss read and checked (and summed in double precision on the host); otherwise the losses are summed
    where they are computed and checked once an epoch, so a GPU is not made to wait for the host at every step.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    each = getattr(step, "check_each_step", False)
    gen = torch.Generator().manual_seed(seed)
    history, global_step = [], 0
    bar = tqdm(range(schedule.epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        total, steps = None, 0
        for i, idx in enumerate(epoch_batches(source.num_samples, batch_size, gen, keep_partial)):
            lr = schedule.lr_for(epoch, global_step)
            loss = step(source.features(idx, epoch), source.labels[idx], lr).detach()
            if on_step is not None:
                on_step(epoch, i, lr, float(loss))
            if each:
                check_finite(loss, epoch, i)
                total = float(loss) if total is None else total + float(loss)
            else:
                total = loss.clone() if total is None else total.add_(loss)
            steps += 1
            global_step += 1
        if total is not None and not each:
            check_finite(total, epoch)
        history.append(float(total) / steps if steps else 0.0)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    bar.close()
    return history


def sgd(params: list[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    # Dassl's SGD (CoOp, CLIP-Adapter): momentum 0.9, no dampening, no Nesterov, coupled weight decay.
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
