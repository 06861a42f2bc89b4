"""GDA (Wang, Lian, Du, Qiao, Li, "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation",
ICLR 2024): Gaussian discriminant analysis on normalised CLIP features, blended with zero-shot CLIP.

Classes are Gaussians N(mu_c, Sigma) with one covariance shared by all classes and uniform priors, so Bayes'
rule gives a linear classifier:

    W = mu Sigma^-1,   b_c = log(1/C) - mu_c Sigma^-1 mu_c / 2
    logits = s * f @ normalize(t)^T + alpha * (f @ W^T + b)

mu_c are the class means of the few shots; Sigma^-1 is the authors' shrinkage estimate from the class-centred
shots (their code calls it the KS estimator): D * pinv((N-1) S + tr(S) I), S the sample covariance. alpha is
searched over 10^-4 .. 10^2, the grid of the released code (mrflogs/ICLR24 main_few_shots.py: [0.0001, ...,
100.0], strict '>' from 0, best_alpha 0.1 when nothing beats 0). Training-free. The training samples are every
cached augmented view (the release stacks augment_epoch = 10 passes, configs/few_shots/*.yaml, cropped with
scale 0.5-1, main_few_shots.py train_tranform). Since both terms are linear in f, the export is one
``LinearClassifier``. Not the release's behaviour: alpha is searched on the split ``--search-split`` names
(min(K, 4) per class by default; the release searches the whole val split, ``full``, and on ImageNet the test
set, which this project never does). The text weights are the release's ``clip_classifier`` (``text_recipe``:
names with spaces, its 7 ImageNet templates, each normalised); the zero-shot term's temperature is the
backbone's exp(logit_scale) where the release writes 100. ImageNet's views are cropped at 0.08-1 as the
release's datasets/imagenet.py does (``crop_scale``). The class statistics stream over the training views
(memory-mapped views are never all loaded). parity/gda.py runs the release's ``run`` on fixed features:
``gda_statistics``, ``gda_head`` and ``search_alpha`` match it to 3e-13 in float64
(tests/parity/golden/gda.safetensors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..classifier import logit_scale_exp
from .kit import text_recipe as recipes
from .base import FitContext, Method, not_empty
from .kit.heads import LinearClassifier, normalized_text
from .kit.samples import ClassMoments, TrainSamples, check_classes, class_moments
from .kit.search import accuracy, has_val, warn_no_val


@dataclass
class GDAParams:
    alpha: float | None = None  # None: searched on the val split; a number fixes it (0 = zero-shot CLIP)
    alpha_grid: list = field(default_factory=lambda: [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0])
    fallback_alpha: float = 0.1  # without a val split: the released code's starting value
    train_views: str = "all"

    def validate(self) -> None:  # the numeric bounds are methods/base.py's PARAM_RULES
        not_empty("alpha_grid", self.alpha_grid)



def gda_statistics(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means mu [C, D] and the shared shrunk precision D * pinv((N-1) S + tr(S) I) [D, D], in float64."""
    return gda_statistics_from_moments(class_moments(lambda: [(x, y)], num_classes, normalize=False))


def gda_statistics_from_moments(moments: ClassMoments) -> tuple[torch.Tensor, torch.Tensor]:
    """The same from streamed class moments (float64): the sample covariance S of the class-centred samples."""
    mus, n, d = moments.means, moments.num_samples, moments.means.shape[1]
    cov = moments.scatter / max(n - 1, 1)  # sample covariance S (the class means already removed)
    precision = d * torch.linalg.pinv((n - 1) * cov + torch.trace(cov) * torch.eye(d, dtype=cov.dtype))
    return mus, precision


def gda_head(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear head (W [C, D], b [C]) of the Gaussians, computed in float64 and returned in x's dtype."""
    moments = class_moments(lambda: [(x, y)], num_classes, normalize=False)
    return gda_head_from_moments(moments, num_classes, x.dtype)


def gda_head_from_moments(moments: ClassMoments, num_classes: int,
                          dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear head (W [C, D], b [C]) from the class moments, returned in ``dtype``."""
    mus, precision = gda_statistics_from_moments(moments)
    weight = mus @ precision
    bias = math.log(1.0 / num_classes) - 0.5 * (weight * mus).sum(dim=1)
    return weight.to(dtype), bias.to(dtype)


def search_alpha(zero_shot: torch.Tensor, gda: torch.Tensor, labels: torch.Tensor, grid: list,
                 fallback: float) -> tuple[float, float]:
    """(alpha, val accuracy): the first grid value whose blend beats every earlier one, strict '>' from 0."""
    alpha, best = float(fallback), 0.0
    for a in grid:
        acc = accuracy(zero_shot + float(a) * gda, labels)
        if acc > best:
            alpha, best = float(a), acc
    return alpha, best


@dataclass
class GDA(Method):
    name = "gda"
    paper = 'Wang et al., "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation", ICLR 2024'
    Params = GDAParams
    description = "GDA: training-free Gaussian discriminant analysis blended with zero-shot CLIP"
    text_recipe = recipes.GDA  # spaces, 7 ImageNet templates, each normalised
    aug_scale = (0.5, 1.0)  # main_few_shots.py train_tranform: RandomResizedCrop(224, scale=(0.5, 1), bicubic)
    no_online = "is training-free: its class statistics come from the augmented passes encoded once (--views)"

    @classmethod
    def crop_scale(cls, dataset: str) -> tuple[float, float] | None:
        # ImageNet's loader crops with its own train_preprocess: datasets/imagenet.py RandomResizedCrop(224,
        # scale=(0.08, 1.0), bicubic); every other dataset goes through main_few_shots.py's train_tranform
        return (0.08, 1.0) if dataset == "imagenet" else cls.aug_scale

    def fit(self, ctx: FitContext) -> LinearClassifier:
        params = self.params or GDAParams()
        samples = TrainSamples(ctx, params.train_views)  # streamed: memory-mapped views are never all loaded
        check_classes(ctx, samples.labels)
        weight, bias = gda_head_from_moments(class_moments(samples.chunks, ctx.num_classes), ctx.num_classes)
        text = normalized_text(ctx)
        scale = logit_scale_exp(ctx.logit_scale)
        val_acc = None
        if params.alpha is not None:
            alpha = float(params.alpha)
        elif not has_val(ctx):
            warn_no_val("GDA", f"alpha={params.fallback_alpha}")
            alpha = float(params.fallback_alpha)
        else:
            f = F.normalize(ctx.val_features.float(), dim=-1)
            alpha, val_acc = search_alpha(scale * f @ text.t(), f @ weight.t() + bias, ctx.val_labels,
                                          params.alpha_grid, params.fallback_alpha)
        meta = ctx.meta(self.name, params, alpha=alpha, val_top1=val_acc)
        return LinearClassifier(meta, scale * text + alpha * weight, alpha * bias, normalize=True)
