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
  "select" templates and "a photo of a {}.", the same 8 as ours), class names as written (no "_" replaced),
  i.e. ``ctx.text_classifier`` (``text_recipe``, TaskRes's);
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
from typing import Callable

import torch
import torch.nn.functional as F

from ..classifier import logit_scale_exp
from .kit import text_recipe as recipes
from .base import FitContext, Method, one_of, validate_params
from .kit.heads import LinearClassifier
from .kit.samples import TrainSamples, check_classes
from .kit.training import Schedule, check_finite

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

    def validate(self) -> None:  # the numeric bounds are methods/base.py's PARAM_RULES
        one_of("constraint", self.constraint, CONSTRAINTS)
        one_of("multipliers", self.multipliers, MULTIPLIERS)



def zero_shot_confidence(x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, logit_scale: float,
                         num_classes: int, scale: float | None = None) -> torch.Tensor:
    """lambda_c: the mean zero-shot probability of class c over the class-c samples.

    The temperature is exp(logit_scale), or ``scale`` when given.
    """
    sums, counts = own_class_probability(x, y, text, logit_scale, num_classes, scale)
    return sums / counts.clamp(min=1)


def own_class_probability(x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, logit_scale: float,
                          num_classes: int, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class c: the sum of the zero-shot probability of c over the class-c samples, and their count."""
    scale = logit_scale_exp(logit_scale) if scale is None else scale
    probs = torch.softmax(scale * F.normalize(x, dim=-1) @ F.normalize(text, dim=-1).t(), 1)
    one_hot = F.one_hot(y, num_classes).to(probs.dtype)
    return (probs * one_hot).sum(dim=0), one_hot.sum(dim=0)


def streamed_confidence(samples: TrainSamples, text: torch.Tensor, logit_scale: float,
                        num_classes: int) -> torch.Tensor:
    """zero_shot_confidence over every sample, read chunk by chunk (sums in float64)."""
    sums, counts = torch.zeros(num_classes, dtype=torch.float64), torch.zeros(num_classes, dtype=torch.float64)
    for x, y in samples.chunks():
        s, c = own_class_probability(x, y, text, logit_scale, num_classes)
        sums, counts = sums + s.double(), counts + c.double()
    return (sums / counts.clamp(min=1)).float()


def outer_step(multipliers: torch.Tensor, penalty: torch.Tensor,
               dissimilarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One PHR augmented-Lagrangian update: lambda <- max(0, lambda + rho d) (the penalty's gradient), rho <- d."""
    step = multipliers + penalty * dissimilarity
    return torch.where(step >= 0, step, torch.zeros_like(step)), dissimilarity.clone()


@dataclass
class CLAPResult:
    prototypes: torch.Tensor  # W [C, D] after the last epoch (unnormalised)
    initial_multipliers: torch.Tensor  # lambda [C] from the zero-shot confidence
    multipliers: torch.Tensor  # lambda [C] at the end (the same unless multipliers="adaptive")
    loss_history: list


def clap_train(x: torch.Tensor | Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, text: torch.Tensor,
               scale: float, params: CLAPParams, batches: int, generator: torch.Generator,
               multipliers: torch.Tensor | None = None) -> CLAPResult:
    """CLAP's training on normalised samples x [M, D] from prototypes W = t [C, D], in t's dtype.

    ``x``: the samples, or a function from sample indices to their normalised rows (streamed views; then the
    l2 constraint's ``multipliers`` are given, computed over the stream). ``scale`` is the temperature
    exp(logit_scale); each epoch shuffles the M samples with ``generator`` and takes ``batches`` batches of
    ``params.batch_size`` (fewer if the samples run out).
    """
    rows = x if callable(x) else x.__getitem__
    c, dtype = text.shape[0], text.dtype
    constrained = params.constraint == "l2"
    if not constrained:
        multipliers = torch.zeros(c, dtype=dtype)
    elif multipliers is None:
        multipliers = zero_shot_confidence(x, y, text, 0.0, c, scale=scale)
    initial_multipliers = multipliers.clone()
    penalty = torch.zeros(c, dtype=dtype)
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
            loss = F.cross_entropy(scale * rows(idx) @ F.normalize(weight, dim=-1).t(), y[idx])
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
    paper = ('Silva-Rodriguez et al., "A Closer Look at the Few-Shot Adaptation of Large Vision-Language Models"'
             ', CVPR 2024')
    Params = CLAPParams
    description = "CLAP: zero-shot-initialised linear probe, per-class penalty towards the text prototypes"
    text_recipe = recipes.CLAP  # raw names and TaskRes's unnormalised mean
    aug_scale = (0.08, 1.0)  # SGD_lr1e-1_B256_ep300.yaml random_resized_crop at Dassl's RRCROP_SCALE
    no_online = "trains on augmented passes encoded once (epochs_aumentation; here --views), as released"

    def fit(self, ctx: FitContext) -> LinearClassifier:
        params = self.params or self.Params()
        validate_params(params, self.name, warn=False)
        samples = TrainSamples(ctx, "all")  # every cached view is a sample, read by batch (memory-mapped or not)
        y = samples.labels
        check_classes(ctx, y)
        text = ctx.text_classifier.float().cpu()
        scale = logit_scale_exp(ctx.logit_scale)
        # the confidence weights stream over every view; each batch reads (and normalises) its own rows
        multipliers = (streamed_confidence(samples, text, ctx.logit_scale, ctx.num_classes)
                       if params.constraint == "l2" else None)
        fit = clap_train(lambda idx: F.normalize(samples.rows(idx), dim=-1), y, text, scale, params,
                         image_loader_batches(ctx.train.num_samples, params.batch_size),
                         torch.Generator().manual_seed(ctx.seed), multipliers)
        summary = {k: [round(float(v.mean()), 6), round(float(v.min()), 6), round(float(v.max()), 6)]
                   for k, v in (("initial", fit.initial_multipliers), ("final", fit.multipliers))}
        meta = ctx.meta(self.name, params, loss_history=fit.loss_history, multipliers_mean_min_max=summary)
        return LinearClassifier(meta, scale * F.normalize(fit.prototypes, dim=-1), None, normalize=True)
