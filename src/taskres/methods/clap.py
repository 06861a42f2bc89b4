"""CLAP: CLass-Adaptive linear Probing (Silva-Rodriguez, Hajimiri, Ben Ayed, Dolz, "A Closer Look at the
Few-Shot Adaptation of Large Vision-Language Models", CVPR 2024).

A linear probe on the sphere whose class prototypes W start at the zero-shot ones t and are held near them by
a per-class penalty, with no validation split and no hyper-parameter search:

    logits = exp(logit_scale) * normalize(f) @ normalize(W)^T,        W initialised to t
    loss   = CE(logits, y) + mean_c lambda_c |w_c - t_c|^2
    lambda_c = mean over the class-c training samples i of softmax(zero-shot logits_i)_c

lambda_c is the zero-shot model's confidence in class c on its own shots: a class that zero-shot CLIP already
gets right is held close to its text prototype, one it gets wrong may move. This is the paper's augmented-
Lagrangian multiplier after its one outer step from the zero-shot solution. Everything follows the release
(jusiro/CLAP trainers/adapters.py, ``INIT=ZS CONSTRAINT=l2`` as its README and experiments/experiment_CLAP.txt
run it):
- t: the template mean of unnormalised text embeddings (``_get_base_text_features``; on ImageNet the 7
  "select" templates and "a photo of a {}.", the same 8 as ours), i.e. ``ctx.text_classifier``;
- the multipliers from the zero-shot softmax on the augmented training features (``init_lagrangian_
  multipliers``), fixed during training: the release's outer step (``outer_step``) runs only for a
  constraint named "adaptative", which no released script uses; ``multipliers="adaptive"`` runs it after
  every epoch (PHR: lambda <- max(0, lambda + rho d), then rho <- d, with d_c = |w_c - t_c|^2, rho from 0);
- optimiser (configs/trainers/SGD_lr1e-1_B256_ep300.yaml and Dassl's defaults): SGD lr 0.1, momentum 0.9, no
  weight decay, 300 epochs, one warm-up epoch at 1e-5 then cosine per epoch, batch 256;
- samples: every augmented view is a sample (the release encodes 20 augmented passes, ``epochs_aumentation``;
  here the ``--views`` cached views: pass ``--views 20`` to match), RandomResizedCrop 0.08-1 (Dassl's default
  RRCROP_SCALE); each epoch shuffles all of them and takes as many batches of 256 as the image loader has
  (N // 256 for N >= 256 images, else one), as ``TrainerXCostume.run_epoch`` does; the last epoch is kept.
``constraint="none"`` is the paper's ZS-LP (the same probe without the penalty). Not the release's behaviour:
each epoch's shuffle comes from torch's generator seeded by the run (the release's from numpy's global one);
fp32 throughout (the release trains in fp32 too and its image encoder ends up in fp32: CustomCLIP.forward's
fp16 cast fails against the weights its build_model made fp32 and falls back; its text prototypes come from
its fp16 text encoder). parity/clap.py runs the release's trainer on fixed features: ``clap_train`` matches
it to 1e-14 in float64 (tests/parity/golden/clap.safetensors).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..classifier import logit_scale_exp
from .base import FitContext, Method
from .common import LinearClassifier, check_classes, check_epochs, require_positive, train_matrix
from .training import Schedule, check_finite

CONSTRAINTS = ("l2", "none")
MULTIPLIERS = ("fixed", "adaptive")


@dataclass
class CLAPParams:
    # Source: jusiro/CLAP configs/trainers/SGD_lr1e-1_B256_ep300.yaml; momentum from Dassl's OPTIM defaults.
    lr: float = 0.1  # OPTIM.LR
    epochs: int = 300  # OPTIM.MAX_EPOCH
    batch_size: int = 256  # DATALOADER.TRAIN_X.BATCH_SIZE
    momentum: float = 0.9  # Dassl OPTIM.MOMENTUM
    weight_decay: float = 0.0  # OPTIM.WEIGHT_DECAY
    warmup_epochs: int = 1  # WARMUP_EPOCH, constant
    warmup_lr: float = 1e-5  # WARMUP_CONS_LR
    constraint: str = "l2"  # "l2": CLAP (train.py's default CONSTRAINT) | "none": ZS-LP
    multipliers: str = "fixed"  # "fixed" (as released) | "adaptive" (the outer PHR step after each epoch)


def zero_shot_confidence(x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, logit_scale: float,
                         num_classes: int, scale: float | None = None) -> torch.Tensor:
    """lambda_c: the mean zero-shot probability of class c over the class-c samples.

    The temperature is exp(logit_scale), or ``scale`` when given.
    """
    scale = logit_scale_exp(logit_scale) if scale is None else scale
    probs = torch.softmax(scale * F.normalize(x, dim=-1) @ F.normalize(text, dim=-1).t(), 1)
    one_hot = F.one_hot(y, num_classes).to(probs.dtype)
    return (probs * one_hot).sum(dim=0) / one_hot.sum(dim=0).clamp(min=1)


def outer_step(multipliers: torch.Tensor, penalty: torch.Tensor,
               dissimilarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One PHR augmented-Lagrangian update: lambda <- max(0, lambda + rho d) (the penalty's gradient), rho <- d."""
    step = multipliers + penalty * dissimilarity
    return torch.where(step >= 0, step, torch.zeros_like(step)), dissimilarity.clone()


def check_params(params: CLAPParams) -> None:
    check_epochs(params.epochs)
    require_positive("lr", params.lr)
    if params.batch_size < 1:
        raise ValueError(f"--set batch_size must be at least 1, not {params.batch_size}")
    if params.constraint not in CONSTRAINTS:
        raise ValueError(f"--set constraint must be one of {', '.join(CONSTRAINTS)}, not {params.constraint!r}")
    if params.multipliers not in MULTIPLIERS:
        raise ValueError(f"--set multipliers must be one of {', '.join(MULTIPLIERS)}, "
                         f"not {params.multipliers!r}")


@dataclass
class CLAPResult:
    prototypes: torch.Tensor  # W [C, D] after the last epoch (unnormalised)
    initial_multipliers: torch.Tensor  # lambda [C] from the zero-shot confidence
    multipliers: torch.Tensor  # lambda [C] at the end (the same unless multipliers="adaptive")
    loss_history: list


def clap_train(x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, scale: float, params: CLAPParams,
               batches: int, generator: torch.Generator) -> CLAPResult:
    """CLAP's training on normalised samples x [M, D] from prototypes W = t [C, D], in x's dtype.

    ``scale`` is the temperature exp(logit_scale); each epoch shuffles the M samples with ``generator`` and
    takes ``batches`` batches of ``params.batch_size`` (fewer if the samples run out).
    """
    c = text.shape[0]
    constrained = params.constraint == "l2"
    multipliers = (zero_shot_confidence(x, y, text, 0.0, c, scale=scale) if constrained
                   else torch.zeros(c, dtype=x.dtype))
    initial_multipliers = multipliers.clone()
    penalty = torch.zeros(c, dtype=x.dtype)
    weight = torch.nn.Parameter(text.clone())  # W = t
    opt = torch.optim.SGD([weight], lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)
    schedule = Schedule(params.lr, params.epochs, params.warmup_epochs, params.warmup_lr)
    history = []
    for epoch in range(params.epochs):
        for group in opt.param_groups:
            group["lr"] = schedule.lr_at(epoch)
        perm = torch.randperm(len(y), generator=generator)
        total, steps = 0.0, 0
        for b in range(batches):
            idx = perm[b * params.batch_size:(b + 1) * params.batch_size]
            if len(idx) == 0:
                break
            loss = F.cross_entropy(scale * x[idx] @ F.normalize(weight, dim=-1).t(), y[idx])
            if constrained:
                loss = loss + (multipliers * (weight - text).pow(2).sum(dim=1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            check_finite(loss, epoch, b)
            opt.step()
            total += float(loss.detach())
            steps += 1
        history.append(total / max(steps, 1))
        if constrained and params.multipliers == "adaptive":
            with torch.no_grad():
                multipliers, penalty = outer_step(multipliers, penalty, (weight - text).pow(2).sum(dim=1))
    return CLAPResult(weight.detach(), initial_multipliers, multipliers, history)


def image_loader_batches(n_images: int, batch_size: int) -> int:
    """Batches per epoch: as many as the image loader has (drop_last from batch_size images on), at least one."""
    return n_images // batch_size if n_images >= batch_size else 1


@dataclass
class CLAP(Method):
    name = "clap"
    Params = CLAPParams
    description = "CLAP: zero-shot-initialised linear probe, per-class penalty towards the text prototypes"
    aug_scale = (0.08, 1.0)  # SGD_lr1e-1_B256_ep300.yaml random_resized_crop at Dassl's RRCROP_SCALE

    def fit(self, ctx: FitContext) -> LinearClassifier:
        params = self.params or self.Params()
        check_params(params)
        x, y = train_matrix(ctx, "all")  # every cached view is a sample
        check_classes(ctx, y)
        x = F.normalize(x, dim=-1)  # the logits normalise f; doing it once is the same
        scale = logit_scale_exp(ctx.logit_scale)
        fit = clap_train(x, y, ctx.text_classifier.float().cpu(), scale, params,
                         image_loader_batches(ctx.train.num_samples, params.batch_size),
                         torch.Generator().manual_seed(ctx.seed))
        summary = {k: [round(float(v.mean()), 6), round(float(v.min()), 6), round(float(v.max()), 6)]
                   for k, v in (("initial", fit.initial_multipliers), ("final", fit.multipliers))}
        meta = ctx.meta(self.name, params, loss_history=fit.loss_history, multipliers_mean_min_max=summary)
        return LinearClassifier(meta, scale * F.normalize(fit.prototypes, dim=-1), None, normalize=True)
