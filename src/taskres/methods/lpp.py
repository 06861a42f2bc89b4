"""LP++ (Huang, Shakeri, Dolz, Boudiaf, Bahig, Ben Ayed, "LP++: A Surprisingly Strong Linear Probe for
Few-Shot CLIP", CVPR 2024).

A linear probe whose class weights are functions of the text embeddings: with normalised image features f and
normalised zero-shot text weights t_c,

    logit_c(f) = f . w_c + b_c + alpha_c * (f . t_c)

learned by block-coordinate descent with data-driven step sizes (the paper's Lipschitz bounds) instead of a
learning-rate search. What follows mirrors the authors' released code (FereshteShakeri/FewShot-CLIP-Strong-
Baseline, methods/linear_probe_p2.py), which we read to check the details:
- init: w_c = sum of the class's training features; every alpha_c = 250 * the mean over classes c of the
  class-c mean of f . t_c, each class scored by its own text weight only (``calculate_init_alpha`` via
  ``compute_centroids_alpha``, whose one-hot mask keeps the own-class score); b = 0 (the released code keeps
  nn.Linear's random bias; zero keeps our fit free of that incidental draw).
- steps: lr_w = 4 N / lambda_max(F^T F), SGD with momentum 0.9 on (w, b) every epoch, full batch;
  lr_alpha = N / (4 max_c sum_i (f_i . t_c)^2), a plain gradient step on alpha every 10 epochs.
- 300 epochs (its base.yaml ``train_epoch``); the epoch with the best validation accuracy is kept.
The released code never zeroes alpha's gradient, so each alpha step uses the gradients summed over all
epochs so far; ``alpha_grad="accumulated"`` (default) reproduces that, ``"current"`` steps on the current
gradient, the textbook block-coordinate step.
The training features are one augmented view per image, as its single pass over the augmented loader, cropped
with scale 0.5-1 (main.py train_tranform). Not the release's behaviour: the epoch is selected on the split
``--search-split`` names (main.py draws K images per class from the val split: ``generate_fewshot_dataset_(
shots, split="val")``; ``fewshot`` takes min(K, 4), ``full`` the whole split). The text weights are the
release's ``clip_classifier`` (``text_recipe``: names with spaces, its 7 ImageNet templates, each normalised);
float32 (on a GPU the release trains in its CLIP's fp16: get_one_hot's float16 one-hot only multiplies fp16
features). parity/lpp.py runs the release's ``forward`` on fixed features (b zeroed): ``lpp_train`` matches
it to 1e-14 in float64 (tests/parity/golden/lpp.safetensors).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kit import text_recipe as recipes
from .base import FitContext, Method, one_of, validate_params
from .kit.heads import LinearClassifier, normalized_text
from .kit.samples import check_classes, train_matrix
from .kit.search import accuracy, has_val, warn_no_val
from .kit.training import check_finite


@dataclass
class LPPParams:
    epochs: int = 300  # configs/base.yaml: train_epoch 300 (linear probe / LP++)
    alpha_every: int = 10  # alpha is updated every 10 epochs
    init_scale: float = 250.0  # alpha_init = 250 * mean over c of the class-c mean of f . t_c
    momentum: float = 0.9  # torch.optim.SGD(classifier.parameters(), lr_w, momentum=0.9)
    alpha_grad: str = "accumulated"  # "accumulated" (as released) | "current"
    train_views: str = "one"  # one augmented view per image; "mean" or "all" to use every cached view

    def validate(self) -> None:  # the numeric bounds are methods/base.py's PARAM_RULES
        one_of("alpha_grad", self.alpha_grad, ("accumulated", "current"))



def class_sums(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(y, num_classes).to(x.dtype).t() @ x


def lpp_step_sizes(x: torch.Tensor, text_scores: torch.Tensor) -> tuple[float, float]:
    """lr_w = 4N / lambda_max(X^T X) and lr_alpha = N / (4 max_c sum_i s_ic^2), as the released code."""
    n = x.shape[0]
    lam_max = float(torch.linalg.eigvalsh((x.t() @ x).double()).max())
    lr_w = 4.0 * n / lam_max
    lr_alpha = n / (4.0 * float(text_scores.pow(2).sum(dim=0).max()))
    return lr_w, lr_alpha


def init_alpha(scores: torch.Tensor, y: torch.Tensor, num_classes: int, scale: float) -> float:
    """scale * mean_c (mean over the class-c images i of f_i . t_c): each class's own text score only."""
    class_means = class_sums(scores, y, num_classes) / torch.bincount(y, minlength=num_classes).clamp(min=1)[:, None]
    return scale * float(class_means.diagonal().mean())


@dataclass
class LPPResult:
    """The kept epoch's (w, b, alpha) and what led to it."""

    weight: torch.Tensor  # w [C, D]
    bias: torch.Tensor  # b [C]
    alpha: torch.Tensor  # alpha [C]
    best_epoch: int
    val_top1: float | None
    lr_w: float
    lr_alpha: float
    alpha_init: float
    loss_history: list


def lpp_train(x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, num_classes: int, params: LPPParams,
              val_x: torch.Tensor | None = None, val_y: torch.Tensor | None = None) -> LPPResult:
    """LP++'s full-batch training on normalised features x [N, D] and text weights t [C, D], in x's dtype.

    With a val split the epoch of best val accuracy is kept (the latest of equals), else the last epoch.
    """
    dtype = x.dtype
    scores = x @ text.t()  # f_i . t_c, fixed during training
    alpha0 = init_alpha(scores, y, num_classes, params.init_scale)
    lr_w, lr_alpha = lpp_step_sizes(x, scores)
    weight = torch.nn.Parameter(class_sums(x, y, num_classes))  # visual prototypes (class sums, as released)
    bias = torch.nn.Parameter(torch.zeros(num_classes, dtype=dtype))
    alpha = torch.nn.Parameter(torch.full((num_classes,), alpha0, dtype=dtype))
    opt = torch.optim.SGD([weight, bias], lr=lr_w, momentum=params.momentum)
    alpha_grad_sum = torch.zeros(num_classes, dtype=dtype)
    val_scores = val_x @ text.t() if val_x is not None else None

    def state() -> tuple[torch.Tensor, ...]:
        return weight.detach().clone(), bias.detach().clone(), alpha.detach().clone()

    best = {"acc": -1.0, "epoch": -1, "state": state()}
    history = []
    for epoch in range(params.epochs):
        loss = F.cross_entropy(x @ weight.t() + bias + alpha * scores, y)
        opt.zero_grad(set_to_none=True)
        alpha.grad = None
        loss.backward()
        check_finite(loss, epoch, 0)
        opt.step()
        alpha_grad_sum += alpha.grad
        if (epoch + 1) % params.alpha_every == 0:
            grad = alpha_grad_sum if params.alpha_grad == "accumulated" else alpha.grad
            with torch.no_grad():
                alpha -= lr_alpha * grad
        history.append(float(loss.detach()))
        if val_x is None:
            best = {"acc": None, "epoch": epoch, "state": state()}
            continue
        with torch.no_grad():
            acc = accuracy(val_x @ weight.t() + bias + alpha * val_scores, val_y)
        if acc >= best["acc"]:  # '>=' as released: the latest of equally good epochs
            best = {"acc": acc, "epoch": epoch, "state": state()}
    w, b, a = best["state"]
    return LPPResult(w, b, a, best["epoch"], best["acc"], lr_w, lr_alpha, alpha0, history)


@dataclass
class LPP(Method):
    name = "lpp"
    paper = 'Huang et al., "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024'
    Params = LPPParams
    description = "LP++: linear probe blended with learnable per-class text weights, data-driven step sizes"
    text_recipe = recipes.LPP  # spaces, 7 ImageNet templates, each normalised
    aug_scale = (0.5, 1.0)  # main.py train_tranform: RandomResizedCrop(224, scale=(0.5, 1), bicubic)
    no_online = "fits full batch on one augmented pass encoded once, as released"
    all_views_in_memory = True  # train_views=all: full-batch steps on every view

    def fit(self, ctx: FitContext) -> LinearClassifier:
        params = self.params or LPPParams()
        validate_params(params, self.name, warn=False)
        x, y = train_matrix(ctx, params.train_views)
        check_classes(ctx, y)
        text = normalized_text(ctx)  # t_c
        use_val = has_val(ctx)
        if not use_val and params.epochs > 0:
            warn_no_val("LP++", "the last epoch")
        val_x = F.normalize(ctx.val_features.float(), dim=-1) if use_val else None
        fit = lpp_train(F.normalize(x, dim=-1), y, text, ctx.num_classes, params, val_x,
                        ctx.val_labels if use_val else None)
        meta = ctx.meta(self.name, params, loss_history=fit.loss_history, best_epoch=fit.best_epoch,
                        val_top1=fit.val_top1, lr_w=fit.lr_w, lr_alpha=fit.lr_alpha, alpha_init=fit.alpha_init)
        # The blend folds into one linear layer: f . (w_c + alpha_c t_c) + b_c.
        return LinearClassifier(meta, fit.weight + fit.alpha[:, None] * text, fit.bias, normalize=True)
