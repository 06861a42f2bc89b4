"""Task Residual Tuning (Yu et al., CVPR 2023).

The frozen text classifier t (template mean of unnormalised class-name embeddings) is kept; a residual x,
zero at the start, is learned; classification uses t' = t + alpha * x with CLIP's logit scale:

    logits = exp(logit_scale) * normalize(f) @ normalize(t + alpha * x)^T

Loss: cross-entropy. Regulariser: Adam's coupled weight decay 5e-4 on x (pulls x back to 0).

This file holds the equation (``taskres_logits``), the method's parameters and the method. The fast paths
behind it, each held by a test to the equation, have their own files: ``gradient.py`` (the closed-form
gradient and the fused step), ``fused.py`` (numba kernels), ``products.py`` (the fp32/bf16 probe) and
``autotune.py`` (``alpha=auto`` / ``lr=auto``). They import from here nothing, and nothing here imports
lazily from them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F

from ...classifier import CosineClassifier, logit_scale_exp
from ..kit import text_recipe as recipes
from ..base import FitContext, Method, one_of, validate_params
from ...errors import OptionError
from ...mini.tasks import DEMO_TASKS, TUNING_TASKS
from ..kit.training import (ClosedFormStep, OptimizerStep, Schedule, make_adam, resolve_device,
                             train_loop)
# the fast paths behind the equation, each in its own file (the equation and the method stay here)
from . import autotune
from .autotune import check_auto_params
from .fused import available as fused_available
from .gradient import (GRADIENTS, PRODUCTS, DeviceSource, FusedStep, NormalisedSource, ResidualGradient,
                       SoftmaxTerms, check_products, taskres_loss_and_grad)
from .products import check_choice, choose_products


def taskres_logits(features: torch.Tensor, base: torch.Tensor, residual: torch.Tensor, alpha: float,
                   logit_scale: float) -> torch.Tensor:
    """The paper's forward pass."""
    weights = base + alpha * residual  # t' = t + alpha * x
    return logit_scale_exp(logit_scale) * F.normalize(features, dim=-1) @ F.normalize(weights, dim=-1).t()


RN50_NAMES = ("RN50", "RN50-quickgelu")  # one architecture: the -quickgelu name only sets the activation

# Per-dataset defaults, kept here as the other methods keep theirs (tip_adapter.TIP_ADAPTER_CONFIGS); a dataset
# not listed (a class folder, a domain-shift target) gets the default. Source: REFERENCE.md.
# alpha: the release passes it per run (scripts/taskres/main.sh's SCALE -> TRAINER.TaskRes.RESIDUAL_SCALE);
# REFERENCE.md gives 0.5 for every dataset but Oxford Flowers (1.0).
DEFAULT_ALPHA = 0.5
TASKRES_ALPHA: dict[str, float] = {"oxford_flowers": 1.0}
# The mini tasks' lr is the demo's: its reference 2e-4 times the factor benchmarks/demo_lr.py chose
# (taskres.demo.DEMO_LR_FACTOR; a test holds the two equal). The paper's 2e-4 is sized for CLIP; the mini
# model's text features are larger (|t| ~ 17 over 128 dims), so the residual needs a larger step.
DEMO_TASKRES_LR = 2e-2
# None of these depends on the backbone: the backbone rule (lr_for) applies only to datasets not listed.
TASKRES_LR: dict[str, float] = {
    "imagenet": 2e-4,  # configs/trainers/TaskRes/adam_lr2e-4_B256_ep*.yaml, on every backbone
    **dict.fromkeys((*DEMO_TASKS, *TUNING_TASKS), DEMO_TASKRES_LR),
}


def alpha_for(task_name: str) -> float:
    """The residual scale the authors use for ``task_name`` (TASKRES_ALPHA, else DEFAULT_ALPHA)."""
    return TASKRES_ALPHA.get(task_name, DEFAULT_ALPHA)


def lr_for(task_name: str, backbone_model: str) -> float:
    """TASKRES_LR's value for ``task_name``, else the reference configs' backbone rule: 2e-3 on RN50 (the 10
    non-ImageNet datasets: configs/trainers/TaskRes/adam_lr2e-3_B256_ep{100,200}.yaml), 2e-4 on every other
    backbone (adam_lr2e-4_B256_ep200_{RN101,RN50x16,ViT16,ViT32}.yaml)."""
    if task_name in TASKRES_LR:
        return TASKRES_LR[task_name]
    return 2e-3 if backbone_model in RN50_NAMES else 2e-4


@dataclass
class TaskResParams:
    # "auto" (alpha, lr or both): searched on the few-shot val split, see methods/taskres/autotune.py
    alpha: float | Literal["auto"] | None = None  # None: alpha_for(dataset): 0.5; 1.0 for Oxford Flowers
    lr: float | Literal["auto"] | None = None  # None: lr_for(dataset, backbone): 2e-3 for the 10 non-ImageNet
    #   datasets on RN50, else 2e-4; the mini tasks' DEMO_TASKRES_LR
    epochs: int | None = None  # None: RN50: 100 (1/2/4 shots) or 200 (8/16 shots); other backbones 200
    batch_size: int = 256
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    gradient: str = "closed_form"  # "closed_form" (fast, exact) | "autograd"
    products: str = "fp32"  # "fp32" (faithful) | "bf16": bf16 operands for the two matrix products | "auto":
    #   bf16 where a short probe measures it faster on this machine, else fp32 (products.py)
    fused: bool = True  # on the CPU: fused kernels for the passes over the weights, if numba is installed
    device: str = "auto"  # where x is trained: "auto" (the backbone's device: --device), "cpu", "cuda[:N]"

    def validate(self) -> None:  # the numeric bounds are methods/base.py's PARAM_RULES
        one_of("gradient", self.gradient, GRADIENTS)
        check_choice(self.products)  # "auto" too: resolved to fp32 or bf16 in fit


def reference_defaults(task_name: str, backbone_model: str, shots: int) -> dict:
    """The reference configs' alpha / lr / epochs for a (dataset, backbone, shots) cell."""
    epochs = (100 if shots <= 4 else 200) if backbone_model in RN50_NAMES else 200
    return {"alpha": alpha_for(task_name), "lr": lr_for(task_name, backbone_model), "epochs": epochs}


@dataclass
class TaskRes(Method):
    name = "taskres"
    paper = 'Yu et al., "Task Residual for Tuning Vision-Language Models", CVPR 2023'
    Params = TaskResParams
    description = "Task Residual Tuning: t' = t + alpha * x, x learned from the few shots"
    text_recipe = recipes.TASKRES  # raw names, the dataset's templates, the unnormalised mean

    def resolved_params(self, ctx: FitContext) -> TaskResParams:
        params = self.params or TaskResParams()
        ref = reference_defaults(ctx.task_name, ctx.backbone_identity.get("model", ""), ctx.shots)
        return replace(params, **{k: v for k, v in ref.items() if getattr(params, k) is None})

    def products_for(self, params: TaskResParams, ctx: FitContext, base: torch.Tensor, device: torch.device) -> str:
        """``--set products`` resolved for this run: ``auto`` by a probe on this machine, a slow bf16 warned
        (:mod:`.products`). The classifier's hparams record what ran."""
        if params.gradient != "closed_form":
            return "fp32" if params.products == "auto" else params.products  # autograd has fp32 products only
        batch = min(params.batch_size, ctx.train.num_samples)
        return choose_products(params.products, base, batch, device, params.fused)

    def fit(self, ctx: FitContext, base: torch.Tensor | None = None, on_step=None) -> CosineClassifier:
        params = self.resolved_params(ctx)
        if check_auto_params(params):  # alpha and/or lr "auto": a grid of fixed-value fits, chosen on val
            base = ctx.text_classifier if base is None else base
            ref = reference_defaults(ctx.task_name, ctx.backbone_identity.get("model", ""), ctx.shots)
            return autotune.search(ctx, params, base, lambda p, c: TaskRes(p).fit(c, base=base, on_step=on_step),
                                   ref)
        validate_params(params, self.name, warn=False)
        device = (getattr(ctx.backbone, "device", None) or torch.device("cpu")) if params.device == "auto" \
            else resolve_device(params.device, self.name)
        base = (ctx.text_classifier if base is None else base).float().to(device)
        params = replace(params, products=self.products_for(params, ctx, base, device))
        residual = torch.nn.Parameter(torch.zeros_like(base))  # x, initialised to zeros
        schedule = Schedule(params.lr, params.epochs, params.warmup_epochs, params.warmup_lr)
        scale = logit_scale_exp(ctx.logit_scale)
        common = dict(batch_size=params.batch_size, seed=ctx.seed, progress=ctx.progress, desc="TaskRes",
                      on_step=on_step)
        if params.gradient == "closed_form" and params.fused and device.type == "cpu" and fused_available():
            step = FusedStep(base, residual.detach(), params.alpha, scale, schedule.lr_at(0),
                             params.weight_decay, params.products)
            source = NormalisedSource(ctx.train, step.feature_dtype, device)
        elif params.gradient == "closed_form":
            gradient = ResidualGradient(base, params.alpha, scale, params.products)
            source = NormalisedSource(ctx.train, gradient.feature_dtype, device)
            step = ClosedFormStep(residual, lambda feats, labels: gradient(feats, labels, residual.detach()),
                                  schedule.lr_at(0), params.weight_decay)
        elif params.gradient == "autograd":
            if params.products != "fp32":
                raise OptionError("products", f"must be fp32 with gradient=autograd, not {params.products}",
                                  method=self.name)
            source = DeviceSource(ctx.train, device)

            def loss_fn(feats, labels):
                logits = taskres_logits(feats, base, residual, params.alpha, ctx.logit_scale)
                return F.cross_entropy(logits, labels)

            step = OptimizerStep([residual], loss_fn, make_adam([residual], schedule.lr_at(0), params.weight_decay),
                                 check_each_step=False)
        else:
            raise OptionError("gradient", f"must be 'closed_form' or 'autograd', not {params.gradient!r}",
                              method=self.name)
        history = train_loop(step, source, schedule, **common)
        meta = ctx.meta(self.name, params, loss_history=history)
        return CosineClassifier(meta, base.cpu(), residual.detach().cpu(), params.alpha, ctx.logit_scale)

    def classifier_for_new_classes(self, classifier: CosineClassifier, ctx: FitContext) -> CosineClassifier:
        """Base-to-new: no residual was learned for an unseen class, so its row is the frozen text base t (x = 0)."""
        alpha = getattr(classifier, "alpha", 0.0)
        return CosineClassifier(ctx.meta(self.name, classifier.meta.hparams, new_classes="zero residual"),
                                ctx.text_classifier, None, alpha, ctx.logit_scale)
