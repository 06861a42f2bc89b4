"""CLIP-Adapter (Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters", IJCV 2023).

A bottleneck MLP A (Linear D->D/4, ReLU, Linear D/4->D, ReLU, no biases) on the image feature f, blended
with f by the residual ratio r, and classified by the frozen zero-shot text classifier t:

    f' = r * A(f) + (1 - r) * f
    logits = exp(logit_scale) * normalize(f') @ normalize(t)^T

With r = 0 it is zero-shot CLIP exactly.

The release (gaopengcuhk/CLIP-Adapter) is one file, clip_adapter.py: ``Adapter(1024, 4)``, ``ratio = 0.2``
hard-coded, and its README says to train with CoOp's commands. So the optimiser and schedule are CoOp's
(configs/trainers/CoOp/rn50*.yaml: SGD lr 0.002, batch 32, one warm-up epoch at 1e-5, cosine) with CoOp's
per-cell length (scripts: rn50_ep50 for 1 shot, rn50_ep100 for 2/4, rn50 (200) for 8/16; *_ep50 for every
ImageNet run; ``coop_epochs``), and the views are Dassl's RandomResizedCrop 0.08-1. Not the release's
behaviour, or not checked: the paper reports tuning r per dataset, but its per-dataset values could not be
read here (the repository's Adapter.pdf is not in the stored snapshot), so ``CLIP_ADAPTER_RATIOS`` holds the
released code's 0.2 for every dataset (``--set ratio=`` changes it). The text classifier is the release's
(``text_recipe``: names with spaces, the dataset's one template, "a photo of a {}." on ImageNet).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..classifier import Classifier, ClassifierMeta, cosine_logits
from .kit import text_recipe as recipes
from .base import FitContext, Method, validate_params
from .kit.samples import working_float
from .kit.training import OptimizerStep, Schedule, seeded_generator, sgd, train_loop
from .coop import coop_epochs

# dataset -> r. Every value is the released clip_adapter.py's ``ratio = 0.2`` (CustomCLIP.forward); datasets
# without a row (folders, demo tasks) get CLIP_ADAPTER_DEFAULT_RATIO.
CLIP_ADAPTER_DEFAULT_RATIO = 0.2  # clip_adapter.py
CLIP_ADAPTER_RATIOS: dict[str, float] = {
    name: CLIP_ADAPTER_DEFAULT_RATIO  # clip_adapter.py: ratio = 0.2
    for name in ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                 "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
}


@dataclass
class ClipAdapterParams:
    ratio: float | None = None  # r, the residual ratio; None: CLIP_ADAPTER_RATIOS
    reduction: int = 4  # bottleneck D -> D / reduction (clip_adapter.py: Adapter(1024, 4))
    lr: float = 0.002  # CoOp rn50*.yaml: SGD lr 0.002, cosine, batch 32
    epochs: int | None = None  # None: CoOp's schedule, 50 (1 shot), 100 (2/4), 200 (8/16); 50 on ImageNet
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5


def adapter_features(features: torch.Tensor, fc1: torch.Tensor, fc2: torch.Tensor, ratio: float) -> torch.Tensor:
    """f' = r * A(f) + (1 - r) * f with A = ReLU(ReLU(f W1^T) W2^T)."""
    adapted = F.relu(F.relu(features @ fc1.t()) @ fc2.t())
    return ratio * adapted + (1 - ratio) * features


class AdapterClassifier(Classifier):
    """CLIP-Adapter's head: the adapter's two weight matrices, the frozen text classifier and r."""

    kind = "clip_adapter"

    def __init__(self, meta: ClassifierMeta, fc1: torch.Tensor, fc2: torch.Tensor, text: torch.Tensor,
                 ratio: float, logit_scale: float):
        super().__init__(meta)
        # float32, or float64 when trained in float64 (the parity checks)
        self.register_buffer("fc1", working_float(fc1.detach()).cpu().clone())
        self.register_buffer("fc2", working_float(fc2.detach()).cpu().clone())
        self.register_buffer("text", working_float(text.detach()).cpu().clone())
        self.ratio = float(ratio)
        self.logit_scale = float(logit_scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        adapted = adapter_features(working_float(features).to(self.fc1.dtype), self.fc1, self.fc2, self.ratio)
        return cosine_logits(adapted, self.text, self.logit_scale)

    def tensors(self):
        return {"fc1": self.fc1, "fc2": self.fc2, "text": self.text}

    def config(self):
        return {"ratio": self.ratio, "logit_scale": self.logit_scale}

    @classmethod
    def from_tensors(cls, tensors, meta, config):
        return cls(meta, tensors["fc1"], tensors["fc2"], tensors["text"], config["ratio"], config["logit_scale"])


def init_linear(out_dim: int, in_dim: int, generator: torch.Generator) -> torch.Tensor:
    """nn.Linear's default initialisation, drawn from our own generator so each seed gives one adapter."""
    weight = torch.empty(out_dim, in_dim)
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    return weight


@dataclass
class ClipAdapter(Method):
    name = "clip_adapter"
    paper = 'Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters", IJCV 2023'
    Params = ClipAdapterParams
    description = "CLIP-Adapter: residual bottleneck MLP on the image features, frozen text classifier"
    text_recipe = recipes.CLIP_ADAPTER  # names with spaces, one template ("a photo of a {}." on ImageNet)

    def resolved_params(self, ctx: FitContext) -> ClipAdapterParams:
        params = self.params or ClipAdapterParams()
        ref = {"ratio": CLIP_ADAPTER_RATIOS.get(ctx.task_name, CLIP_ADAPTER_DEFAULT_RATIO),
               "epochs": coop_epochs(ctx.task_name, ctx.shots)}
        return replace(params, **{k: v for k, v in ref.items() if getattr(params, k) is None})

    def fit(self, ctx: FitContext) -> AdapterClassifier:
        params = self.resolved_params(ctx)
        validate_params(params, self.name, warn=False)
        dim = ctx.text_classifier.shape[1]
        hidden = max(1, dim // params.reduction)
        gen = seeded_generator(ctx.seed, 31)
        text = working_float(ctx.text_classifier)
        fc1 = torch.nn.Parameter(init_linear(hidden, dim, gen).to(text.dtype))
        fc2 = torch.nn.Parameter(init_linear(dim, hidden, gen).to(text.dtype))

        def loss_fn(feats, labels):
            adapted = adapter_features(feats, fc1, fc2, params.ratio)
            return F.cross_entropy(cosine_logits(adapted, text, ctx.logit_scale), labels)

        schedule = Schedule(params.lr, params.epochs, params.warmup_epochs, params.warmup_lr)
        optimizer = sgd([fc1, fc2], params.lr, params.momentum, params.weight_decay)
        history = train_loop(OptimizerStep([fc1, fc2], loss_fn, optimizer), ctx.train, schedule,
                             batch_size=params.batch_size, seed=ctx.seed, progress=ctx.progress, desc="CLIP-Adapter")
        meta = ctx.meta(self.name, params, loss_history=history)
        return AdapterClassifier(meta, fc1.detach(), fc2.detach(), text, params.ratio, ctx.logit_scale)

    def classifier_for_new_classes(self, classifier: AdapterClassifier, ctx: FitContext) -> AdapterClassifier:
        """Classes never trained on (base-to-new): the trained adapter acts on image features only, so it is
        kept, in front of the new classes' zero-shot text classifier."""
        meta = ctx.meta(self.name, classifier.meta.hparams, new_classes="trained adapter, new text classifier")
        return AdapterClassifier(meta, classifier.fc1, classifier.fc2, ctx.text_classifier, classifier.ratio,
                                 ctx.logit_scale)
