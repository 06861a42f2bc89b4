"""Task Residual Tuning (Yu et al., CVPR 2023).

The frozen text classifier t (template mean of unnormalised class-name embeddings) is kept; a residual x,
zero at the start, is learned; classification uses t' = t + alpha * x with CLIP's logit scale:

    logits = exp(logit_scale) * normalize(f) @ normalize(t + alpha * x)^T

Loss: cross-entropy. Regulariser: Adam's coupled weight decay 5e-4 on x (pulls x back to 0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F

from ..classifier import CosineClassifier, logit_scale_exp
from . import autotune
from .autotune import check_auto_params
from . import text_recipe as recipes
from .base import FitContext, Method
from .fused import available as fused_available
from .products import check_choice, choose_products
from .training import Schedule, resolve_device, train_loop

RN50_NAMES = ("RN50", "RN50-quickgelu")  # one architecture: the -quickgelu name only sets the activation


@dataclass
class TaskResParams:
    # "auto" (alpha, lr or both): searched on the few-shot val split, see methods/autotune.py
    alpha: float | Literal["auto"] | None = None  # None: the dataset's (0.5; 1.0 for Oxford Flowers)
    lr: float | Literal["auto"] | None = None  # None: 2e-3 for the 10 non-ImageNet datasets on RN50, else 2e-4
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
        if self.gradient not in GRADIENTS:
            raise ValueError(f"--set gradient must be one of {', '.join(GRADIENTS)}, not {self.gradient!r}")
        check_choice(self.products)  # "auto" too: resolved to fp32 or bf16 in fit


def reference_defaults(task_name: str, backbone_model: str, shots: int, dataset_alpha: float,
                       dataset_lr: float | None) -> dict:
    """The reference configs' alpha / lr / epochs for a (dataset, backbone, shots) cell."""
    is_rn50 = backbone_model in RN50_NAMES
    if dataset_lr is not None:
        lr = dataset_lr  # ImageNet: 2e-4
    else:
        lr = 2e-3 if is_rn50 else 2e-4
    epochs = (100 if shots <= 4 else 200) if is_rn50 else 200
    return {"alpha": dataset_alpha, "lr": lr, "epochs": epochs}


def taskres_logits(features: torch.Tensor, base: torch.Tensor, residual: torch.Tensor, alpha: float,
                   logit_scale: float) -> torch.Tensor:
    """The paper's forward pass."""
    weights = base + alpha * residual  # t' = t + alpha * x
    return logit_scale_exp(logit_scale) * F.normalize(features, dim=-1) @ F.normalize(weights, dim=-1).t()


PRODUCTS = ("fp32", "bf16")
GRADIENTS = ("closed_form", "autograd")


def check_products(products: str) -> None:
    if products not in PRODUCTS:
        raise ValueError(f"--set products must be one of {', '.join(PRODUCTS)}, not {products!r}")


class SoftmaxTerms:
    """The [B, C] part of a TaskRes step, shared by :class:`ResidualGradient` and :class:`FusedStep`.

    From d = f t'^T and |t'|: the loss, g scaled per class by alpha s / (n_c B), and the correction's
    per-class coefficient coef_c = alpha s / n_c^3 * sum_b g_bc d_bc / B, so that dL/dx = g^T f - coef t'.
    """

    def __init__(self, alpha: float, scale: float):
        self.alpha, self.scale = alpha, scale
        self._row_cache = {}

    def _rows(self, batch: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (batch, device, dtype)
        if key not in self._row_cache:
            self._row_cache[key] = (torch.arange(batch, device=device),
                                    torch.full((batch,), -1.0, dtype=dtype, device=device))
        return self._row_cache[key]

    def __call__(self, dots: torch.Tensor, norms: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = len(labels)
        col = self.scale / norms  # s / n_c
        z = dots * col
        g = torch.softmax(z, dim=1)
        rows, minus_one = self._rows(batch, labels.device, g.dtype)
        # log-sum-exp from the row maxima: lse = max z - log(max p), exact, and p's maximum cannot underflow
        loss = (z.amax(dim=1) - g.amax(dim=1).log_() - z[rows, labels]).mean()
        g.index_put_((rows, labels), minus_one, accumulate=True)  # softmax - onehot
        k = col * (self.alpha / batch)
        coef = torch.linalg.vecdot(g, dots, dim=0).mul_(k).div_(norms.square())
        return loss, g.mul_(k), coef


class ResidualGradient:
    """A batch's cross-entropy and its exact gradient w.r.t. the residual x, without autograd.

    With t' = t + alpha x, n_c = |t'_c|, d_bc = f_b . t'_c, z_bc = s d_bc / n_c and g = (softmax(z) - onehot) / B:

        dL/dx_c = alpha (s / n_c) [ sum_b g_bc f_b  -  (sum_b g_bc d_bc / n_c^2) t'_c ]

    The normalisation of t' is folded into per-class scalings of g, so besides the two matrix products
    (f t'^T and g^T f) a step makes three passes over the [C, D] weights; their buffers are allocated once.

    ``products``: "fp32" computes everything in the dtype of ``base`` (the faithful path). "bf16" gives the
    two products bfloat16 operands (the features and t' rounded to 8 significant bits) with float32
    accumulation, and keeps the rest in float32: the norms, the softmax, the gradient's correction term and
    the residual that Adam updates. Where the hardware has bf16 dot products (x86 avx512_bf16/AMX, recent
    GPUs) the products run 2-3 times faster; BENCHMARKS.md measures the accuracy gap.

    Call with L2-normalised features of dtype ``feature_dtype``. The gradient returned is a buffer that the
    next call overwrites (an optimiser step consumes it first).
    """

    def __init__(self, base: torch.Tensor, alpha: float, scale: float, products: str = "fp32"):
        check_products(products)
        self.base, self.alpha, self.products = base, alpha, products
        self.feature_dtype = torch.bfloat16 if products == "bf16" else base.dtype
        self.terms = SoftmaxTerms(alpha, scale)
        self.weights = torch.empty_like(base)  # t'
        self.norms = torch.empty(base.shape[0], dtype=base.dtype, device=base.device)
        self.grad = torch.empty_like(base)
        self._low = torch.empty_like(base, dtype=torch.bfloat16) if products == "bf16" else None

    def __call__(self, feats: torch.Tensor, labels: torch.Tensor,
                 residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights, norms, grad = self.weights, self.norms, self.grad
        torch.add(self.base, residual, alpha=self.alpha, out=weights)  # t' = t + alpha * x
        torch.linalg.vector_norm(weights, dim=1, out=norms)
        if self._low is None:
            dots = torch.mm(feats, weights.t())  # d [B, C]
        else:
            self._low.copy_(weights)
            dots = torch.mm(feats, self._low.t()).to(weights.dtype)
        loss, g, coef = self.terms(dots, norms, labels)
        if self._low is None:
            torch.mm(g.t(), feats, out=grad)
        else:
            grad.copy_(torch.mm(g.t().to(torch.bfloat16), feats))
        grad.addcmul_(weights, coef[:, None], value=-1.0)
        return loss, grad


def taskres_loss_and_grad(feats_normed: torch.Tensor, labels: torch.Tensor, base: torch.Tensor,
                          residual: torch.Tensor, alpha: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One call of :class:`ResidualGradient` in full precision (the loss and a fresh gradient tensor)."""
    return ResidualGradient(base, alpha, scale)(feats_normed, labels, residual)


class FusedStep:
    """A whole training step on the CPU with the fused kernels of :mod:`.fused`: the same loss and gradient as
    ``ResidualGradient(..., products)`` followed by Adam (:class:`CoupledAdam`'s update), with the passes over
    the weights fused. fp32: the two products, the [B, C] softmax part and one kernel that makes the
    gradient, the Adam update and the next step's t' and norms. bf16: two kernels (t' to bf16 with its
    norms; gradient and Adam). ``residual`` is updated in place."""

    def __init__(self, base: torch.Tensor, residual: torch.Tensor, alpha: float, scale: float, lr: float,
                 weight_decay: float, products: str = "bf16"):
        from .fused import FusedBf16Adam, FusedFp32Adam, FusedSoftmaxTerms

        check_products(products)
        self.products = products
        self.terms = FusedSoftmaxTerms(alpha, scale)
        self.feature_dtype = torch.bfloat16 if products == "bf16" else torch.float32
        if products == "bf16":
            self.adam = FusedBf16Adam(base, residual, alpha, lr, weight_decay)
        else:
            self.adam = FusedFp32Adam(base, residual, alpha, lr, weight_decay)
            self._product = torch.empty_like(base)

    def __call__(self, feats: torch.Tensor, labels: torch.Tensor, lr: float) -> torch.Tensor:
        weights, norms = self.adam.weights()
        self.adam.lr = lr
        if self.products == "bf16":
            dots = torch.mm(feats, weights.t()).float()
            loss, g, coef = self.terms(dots, norms, labels)
            self.adam.step(torch.mm(g.t().to(torch.bfloat16), feats), coef)
        else:
            loss, g, coef = self.terms(torch.mm(feats, weights.t()), norms, labels)
            self.adam.step(torch.mm(g.t(), feats, out=self._product), coef)
        return loss


class _DeviceSource:
    """A training source whose batches (float32) and labels are moved to ``device``."""

    def __init__(self, source, device: torch.device):
        self.source, self.device = source, device
        self.labels = source.labels.to(device)
        self.num_samples = source.num_samples

    def features(self, idx, epoch):
        return self.source.features(idx, epoch).float().to(self.device)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 cached views are normalised in float32; float64 ones (parity checks) stay float64."""
    return x if x.dtype == torch.float64 else x.float()


class _NormalisedSource:
    """A training source whose rows come L2-normalised, in the products' dtype, on the training device.

    Cached views are normalised and converted once, not at every step (in bf16 they take half the memory).
    """

    def __init__(self, source, dtype: torch.dtype, device: torch.device):
        self.source, self.dtype, self.device = source, dtype, device
        self.labels = source.labels.to(device)
        self.num_samples = source.num_samples
        views = getattr(source, "views", None)
        self._views = None if views is None else F.normalize(_at_least_fp32(views), dim=-1).to(device, dtype)

    def features(self, idx, epoch):
        if self._views is None:
            return F.normalize(_at_least_fp32(self.source.features(idx, epoch)), dim=-1).to(self.device, self.dtype)
        if self._views.shape[0] == 1:
            return self._views[0].index_select(0, idx.to(self.device))
        return self._views[self.source.view_choice(epoch)[idx].to(self.device), idx.to(self.device)]


@dataclass
class TaskRes(Method):
    name = "taskres"
    paper = 'Yu et al., "Task Residual for Tuning Vision-Language Models", CVPR 2023'
    Params = TaskResParams
    description = "Task Residual Tuning: t' = t + alpha * x, x learned from the few shots"
    text_recipe = recipes.TASKRES  # raw names, the dataset's templates, the unnormalised mean

    def resolved_params(self, ctx: FitContext) -> TaskResParams:
        params = self.params or TaskResParams()
        ref = reference_defaults(ctx.task_name, ctx.backbone_identity.get("model", ""), ctx.shots,
                                 ctx.dataset_alpha, ctx.dataset_lr)
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
            ref = reference_defaults(ctx.task_name, ctx.backbone_identity.get("model", ""), ctx.shots,
                                     ctx.dataset_alpha, ctx.dataset_lr)
            return autotune.search(ctx, params, base, lambda p, c: TaskRes(p).fit(c, base=base, on_step=on_step),
                                   ref)
        check_choice(params.products)
        device = (getattr(ctx.backbone, "device", None) or torch.device("cpu")) if params.device == "auto" \
            else resolve_device(params.device)
        base = (ctx.text_classifier if base is None else base).float().to(device)
        params = replace(params, products=self.products_for(params, ctx, base, device))
        residual = torch.nn.Parameter(torch.zeros_like(base))  # x, initialised to zeros
        schedule = Schedule(params.lr, params.epochs, params.warmup_epochs, params.warmup_lr)
        scale = logit_scale_exp(ctx.logit_scale)
        common = dict(batch_size=params.batch_size, weight_decay=params.weight_decay, seed=ctx.seed,
                      progress=ctx.progress, desc="TaskRes", on_step=on_step)
        if params.gradient == "closed_form" and params.fused and device.type == "cpu" and fused_available():
            stepper = FusedStep(base, residual.detach(), params.alpha, scale, schedule.lr_at(0),
                                params.weight_decay, params.products)
            source = _NormalisedSource(ctx.train, stepper.feature_dtype, device)
            history = train_loop([residual], None, source, schedule, step_fn=stepper, **common)
        elif params.gradient == "closed_form":
            step = ResidualGradient(base, params.alpha, scale, params.products)
            source = _NormalisedSource(ctx.train, step.feature_dtype, device)
            history = train_loop([residual], None, source, schedule,
                                 grad_fn=lambda feats, labels: step(feats, labels, residual.detach()), **common)
        elif params.gradient == "autograd":
            if params.products != "fp32":
                raise ValueError("--set products=bf16 needs gradient=closed_form")
            source = _DeviceSource(ctx.train, device)

            def loss_fn(feats, labels):
                logits = taskres_logits(feats, base, residual, params.alpha, ctx.logit_scale)
                return F.cross_entropy(logits, labels)

            history = train_loop([residual], loss_fn, source, schedule, **common)
        else:
            raise ValueError(f"--set gradient must be 'closed_form' or 'autograd', not {params.gradient!r}")
        meta = ctx.meta(self.name, params, loss_history=history)
        return CosineClassifier(meta, base.cpu(), residual.detach().cpu(), params.alpha, ctx.logit_scale)
