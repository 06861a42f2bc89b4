"""TaskRes* : TaskRes on an enhanced text base, for any backbone (``--method taskres_enhanced``).

The paper's enhanced base replaces CLIP's ``text_projection`` by one fine-tuned on the same K shots and
recomputes the base with the same templates; the authors released such projections for RN50 only and not the
code that trains them, so this procedure is ours:

1. Text side, once: for every (class, template) prompt, the text transformer's pooled EOT feature *before*
   the projection; their template mean H [C, width]. Because the projection is linear, the base under any
   projection P is exactly t(P) = H @ P (+ bias), the template mean of the unnormalised embeddings, as the
   paper's base. Each training step is therefore a matmul, not a text-encoder pass.
2. Fine-tune P from its pre-trained value with CLIP's logits and cross-entropy on the cached K-shot features:
       logits = exp(logit_scale) * normalize(f) @ normalize(H @ P)^T
   Adam without weight decay (decay toward 0 would shrink P, not keep it near CLIP), batch 256, one warm-up
   epoch at 1e-5 then cosine, as TaskRes's own regime. One run per learning rate in ``proj_lrs``.
3. Select the learning rate and epoch on the few-shot validation split: highest val accuracy, ties broken by
   lower val cross-entropy. The pre-trained projection (epoch 0) is a candidate too, so when fine-tuning does
   not help on val, TaskRes* is exactly TaskRes. Without a val split, the smallest learning rate and the last
   epoch are used (with a warning).
4. Recompute the base t* = H @ P*, then run TaskRes unchanged on top: ``TaskRes.fit(ctx, base=t*)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..classifier import CosineClassifier, logit_scale_exp
from .kit import text_recipe as recipes
from .base import FitContext, Method, TrainingError, not_empty, validate_params
from .kit.search import accuracy, has_val, warn_no_val
from .kit.training import OptimizerStep, Schedule, make_adam, train_loop
from .taskres import TaskRes, TaskResParams
from .kit.text_encoder import TextTower


@dataclass
class TaskResEnhancedParams(TaskResParams):
    # TaskRes's own parameters (alpha, lr, epochs, ...) are inherited and used unchanged in step 4; alpha/lr
    # "auto" searches them there, on the enhanced base (methods/taskres/autotune.py).
    proj_lrs: list = field(default_factory=lambda: [1e-5, 1e-4, 1e-3])  # searched on the val split
    proj_epochs: int = 50  # per learning rate; every epoch is a candidate
    proj_batch_size: int = 256
    proj_weight_decay: float = 0.0
    proj_warmup_epochs: int = 1

    def validate(self) -> None:  # the numeric bounds are methods/base.py's PARAM_RULES
        super().validate()
        not_empty("proj_lrs", self.proj_lrs)



def template_mean_pre_projection(tower: TextTower, classnames: list[str], templates: list[str]) -> torch.Tensor:
    prompts = [tpl.format(name) for name in classnames for tpl in templates]
    return tower.pre_projection(prompts).reshape(len(classnames), len(templates), -1).mean(dim=1)


def projected_base(pre: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    base = pre @ weight
    return base if bias is None else base + bias


def enhanced_base(ctx: FitContext, params: TaskResEnhancedParams) -> tuple[torch.Tensor | None, dict]:
    """The fine-tuned projection's base t* (None when the pre-trained projection wins on val) and a summary."""
    validate_params(params, "taskres_enhanced", warn=False)
    if ctx.backbone is None:
        raise TrainingError("TaskRes* fine-tunes the text projection, but no backbone was given")
    tower = TextTower(ctx.backbone)
    weight0, bias0 = tower.projection()
    if weight0 is None:
        raise TrainingError(f"backbone {ctx.backbone_identity.get('model')} has no text projection to fine-tune")
    device = tower.device
    pre = template_mean_pre_projection(tower, ctx.prompt_classnames, ctx.templates).to(device)
    weight0 = weight0.detach().float().clone()
    bias0 = None if bias0 is None else bias0.detach().float().clone()
    scale = logit_scale_exp(ctx.logit_scale)

    def logits_for(feats, weight, bias):
        base = F.normalize(projected_base(pre, weight, bias), dim=-1)
        return scale * F.normalize(feats, dim=-1) @ base.t()

    use_val = has_val(ctx)
    val_f = ctx.val_features.float().to(device) if use_val else None
    val_y = ctx.val_labels.to(device) if use_val else None

    @torch.no_grad()
    def score(weight, bias) -> tuple[float, float]:
        logits = logits_for(val_f, weight, bias)
        return accuracy(logits, val_y), float(F.cross_entropy(logits, val_y))

    best = {"lr": None, "epoch": 0, "weight": weight0, "bias": bias0}
    if use_val:
        best["acc"], best["loss"] = score(weight0, bias0)
        pretrained_acc = best["acc"]
    else:
        warn_no_val("TaskRes*", f"proj lr {min(params.proj_lrs)} for all {params.proj_epochs} epochs")
        best["acc"] = best["loss"] = pretrained_acc = None
    lrs = sorted(float(lr) for lr in params.proj_lrs) if use_val else [min(float(lr) for lr in params.proj_lrs)]
    for lr in lrs:
        weight = torch.nn.Parameter(weight0.clone())
        bias = None if bias0 is None else torch.nn.Parameter(bias0.clone())
        trained = [weight] + ([bias] if bias is not None else [])

        def loss_fn(feats, labels):
            return F.cross_entropy(logits_for(feats, weight, bias), labels)

        def on_epoch_end(epoch, lr=lr, weight=weight, bias=bias):
            snapshot = {"lr": lr, "epoch": epoch + 1, "weight": weight.detach().clone(),
                        "bias": None if bias is None else bias.detach().clone()}
            if not use_val:
                best.update(snapshot)
                return
            acc, loss = score(weight, bias)
            if acc > best["acc"] or (acc == best["acc"] and loss < best["loss"]):
                best.update(snapshot, acc=acc, loss=loss)

        schedule = Schedule(lr, params.proj_epochs, params.proj_warmup_epochs, params.warmup_lr)
        step = OptimizerStep(trained, loss_fn, make_adam(trained, lr, params.proj_weight_decay), device=device)
        train_loop(step, ctx.train, schedule, batch_size=params.proj_batch_size, seed=ctx.seed,
                   progress=ctx.progress, desc=f"TaskRes* projection (lr {lr:g})", on_epoch_end=on_epoch_end)
    summary = {"proj_lr": best["lr"], "proj_epoch": best["epoch"], "proj_val_top1": best["acc"],
               "pretrained_proj_val_top1": pretrained_acc}
    if best["epoch"] == 0:
        return None, summary
    return projected_base(pre, best["weight"], best["bias"]).float().cpu(), summary


@dataclass
class TaskResEnhanced(Method):
    name = "taskres_enhanced"
    paper = ('Yu et al., "Task Residual for Tuning Vision-Language Models"'
             ', CVPR 2023 (TaskRes*; the base tuning is ours)')
    Params = TaskResEnhancedParams
    description = "TaskRes*: TaskRes on a base from a text projection fine-tuned on the shots (selected on val)"
    text_recipe = recipes.TASKRES  # the base recomputed with TaskRes's own prompts

    def resolved_params(self, ctx: FitContext) -> TaskResEnhancedParams:
        return TaskRes(self.params or TaskResEnhancedParams()).resolved_params(ctx)

    def fit(self, ctx: FitContext) -> CosineClassifier:
        params = self.resolved_params(ctx)
        base, summary = enhanced_base(ctx, params)
        clf = TaskRes(params).fit(ctx, base=base)  # base None: the pre-trained base, i.e. plain TaskRes
        clf.meta.method = self.name
        clf.meta.extra.update(summary)
        return clf
