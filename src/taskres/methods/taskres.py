"""Task Residual Tuning (Yu et al., CVPR 2023).

The frozen text classifier t (template mean of unnormalised class-name embeddings) is kept; a residual x,
zero at the start, is learned; classification uses t' = t + alpha * x with CLIP's logit scale:

    logits = exp(logit_scale) * normalize(f) @ normalize(t + alpha * x)^T

Loss: cross-entropy. Regulariser: Adam's coupled weight decay 5e-4 on x (pulls x back to 0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..classifier import CosineClassifier, logit_scale_exp
from .base import FitContext, Method
from .training import Schedule, train_loop

RN50_NAMES = ("RN50",)


@dataclass
class TaskResParams:
    alpha: float | None = None  # None: the dataset's (0.5; 1.0 for Oxford Flowers)
    lr: float | None = None  # None: 2e-3 for the 10 non-ImageNet datasets on RN50, else 2e-4
    epochs: int | None = None  # None: RN50: 100 (1/2/4 shots) or 200 (8/16 shots); other backbones 200
    batch_size: int = 256
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    gradient: str = "closed_form"  # "closed_form" (fast, exact) | "autograd"


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


def taskres_loss_and_grad(feats_normed: torch.Tensor, labels: torch.Tensor, base: torch.Tensor,
                          residual: torch.Tensor, alpha: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and its exact gradient w.r.t. the residual x, without autograd.

    With t' = t + alpha x, n_c = |t'_c|, d_bc = f_b . t'_c, z_bc = s d_bc / n_c and g = (softmax(z) - onehot) / B:

        dL/dx_c = alpha (s / n_c) [ sum_b g_bc f_b  -  (sum_b g_bc d_bc / n_c^2) t'_c ]

    The normalisation of t' is folded into per-class scalings of g, so besides the two matrix products
    only three passes over the [C, D] weights are needed. ``feats_normed`` must be L2-normalised.
    """
    weights = torch.add(base, residual, alpha=alpha)  # t' = t + alpha * x
    norms = torch.linalg.vector_norm(weights, dim=1)
    dots = torch.mm(feats_normed, weights.t())  # d [B, C]
    col = scale / norms  # s / n_c
    logp = torch.log_softmax(dots * col, dim=1)
    loss = -logp.gather(1, labels[:, None]).mean()
    g = logp.exp_()
    g[torch.arange(len(labels)), labels] -= 1.0
    g.div_(len(labels))
    coef = (g * dots).sum(dim=0).mul_(col).div_(norms.square()).mul_(alpha)
    g.mul_(col * alpha)
    grad = torch.mm(g.t(), feats_normed)
    grad.addcmul_(weights, coef[:, None], value=-1.0)
    return loss, grad


class _NormalisedSource:
    """Wraps a training source so that each feature row is L2-normalised once, not at every step."""

    def __init__(self, source):
        self.source = source
        self.labels = source.labels
        self.num_samples = source.num_samples
        views = getattr(source, "views", None)
        self._views = F.normalize(views, dim=-1) if views is not None else None

    def features(self, idx, epoch):
        if self._views is None:
            return F.normalize(self.source.features(idx, epoch), dim=-1)
        if self._views.shape[0] == 1:
            return self._views[0, idx]
        return self._views[self.source.view_choice(epoch)[idx], idx]


@dataclass
class TaskRes(Method):
    name = "taskres"
    Params = TaskResParams
    description = "Task Residual Tuning: t' = t + alpha * x, x learned from the few shots"

    def resolved_params(self, ctx: FitContext) -> TaskResParams:
        params = self.params or TaskResParams()
        ref = reference_defaults(ctx.task_name, ctx.backbone_identity.get("model", ""), ctx.shots,
                                 ctx.dataset_alpha, ctx.dataset_lr)
        return replace(params, **{k: v for k, v in ref.items() if getattr(params, k) is None})

    def fit(self, ctx: FitContext, base: torch.Tensor | None = None, on_step=None) -> CosineClassifier:
        params = self.resolved_params(ctx)
        base = (ctx.text_classifier if base is None else base).float()
        residual = torch.nn.Parameter(torch.zeros_like(base))  # x, initialised to zeros
        schedule = Schedule(params.lr, params.epochs, params.warmup_epochs, params.warmup_lr)
        scale = logit_scale_exp(ctx.logit_scale)
        if params.gradient == "closed_form":
            source = _NormalisedSource(ctx.train)

            def grad_fn(feats, labels):
                loss, grad = taskres_loss_and_grad(feats, labels, base, residual.detach(), params.alpha, scale)
                residual.grad = grad
                return loss

            history = train_loop([residual], None, source, schedule, batch_size=params.batch_size,
                                 weight_decay=params.weight_decay, seed=ctx.seed, progress=ctx.progress,
                                 desc="TaskRes", grad_fn=grad_fn, on_step=on_step)
        elif params.gradient == "autograd":
            def loss_fn(feats, labels):
                logits = taskres_logits(feats, base, residual, params.alpha, ctx.logit_scale)
                return F.cross_entropy(logits, labels)

            history = train_loop([residual], loss_fn, ctx.train, schedule, batch_size=params.batch_size,
                                 weight_decay=params.weight_decay, seed=ctx.seed, progress=ctx.progress,
                                 desc="TaskRes", on_step=on_step)
        else:
            raise ValueError(f"--set gradient must be 'closed_form' or 'autograd', not {params.gradient!r}")
        meta = ctx.meta(self.name, params, loss_history=history)
        return CosineClassifier(meta, base, residual.detach(), params.alpha, ctx.logit_scale)
