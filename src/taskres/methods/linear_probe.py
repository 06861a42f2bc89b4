"""Linear-probe CLIP, as CLIP (Radford et al., 2021, appendix A.3) and CoOp's ``lpclip`` run it.

Multinomial logistic regression with an L2 penalty on the raw image features, solved with L-BFGS. As
lpclip/feat_extractor.py: each training image once, under the test transform (``build_transform(cfg,
is_train=False)``: no augmentation, ``aug_scale = None``), features straight from ``clip_model.visual``, not
normalised (``normalize=True`` is an option, not the release's behaviour). The penalty follows
scikit-learn's convention (CoOp's script calls ``LogisticRegression(C=...)``):

    minimise  0.5 * |W|^2 + C * sum_i CE(W f_i + b, y_i)      (the bias is not penalised)

which we solve in the equivalent scaled form mean_i CE + |W|^2 / (2 C N). C is searched on the few-shot
validation split: first the coarse grid 1e6, 1e4, ..., 1e-6, then CoOp's bisection in log space around the
best value (8 steps). The validation images are min(K, 4) per class (lpclip/linear_probe.py val_shot_list),
the default ``--search-split fewshot``. Not the release's behaviour: L-BFGS is torch's (from zeros, tolerance
1e-4) rather than scikit-learn's. Only ``ctx`` is read: the training features, and the val split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import OptionError
from .base import FitContext, Method, not_empty
from .kit.heads import LinearClassifier
from .kit.samples import check_classes, train_matrix
from .kit.search import accuracy, has_val, warn_no_val
from .kit.training import resolve_device


@dataclass
class LinearProbeParams:
    # Source: CoOp lpclip/linear_probe.py (search_list, num_step=8, LogisticRegression(max_iter=1000)).
    c: float | None = None  # inverse L2 strength; None: searched on the val split
    c_grid: list = field(default_factory=lambda: [1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6])
    refine_steps: int = 8
    max_iter: int = 1000
    fallback_c: float = 1.0  # without a val split (scikit-learn's default C)
    normalize: bool = False  # lpclip fits the raw features (feat_extractor.py: clip_model.visual(data))
    train_views: str = "mean"  # "mean" of the cached views per image, "all" views as samples, or "one"
    device: str = "auto"  # where L-BFGS runs: "auto" (a GPU if there is one), "cpu", "cuda", ...

    def validate(self) -> None:  # the numeric bounds are methods/base.py's PARAM_RULES
        not_empty("c_grid", self.c_grid)



def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float,
                 max_iter: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised multinomial logistic regression by L-BFGS, from zeros (deterministic)."""
    if not c > 0:
        raise OptionError("c", f"must be positive, not {c}", method="linear_probe")
    n, d = x.shape
    weight = torch.zeros(num_classes, d, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    lam = 1.0 / (c * n)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=10,
                            tolerance_grad=1e-4, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.t() + bias, y) + 0.5 * lam * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


class _Search:
    """Fits memoised by C, scored by val accuracy."""

    def __init__(self, x, y, val_x, val_y, num_classes, max_iter):
        self.x, self.y, self.val_x, self.val_y = x, y, val_x, val_y
        self.num_classes, self.max_iter = num_classes, max_iter
        self.fits: dict[float, tuple] = {}

    def score(self, c: float) -> float:
        if c not in self.fits:
            w, b = fit_logistic(self.x, self.y, self.num_classes, c, self.max_iter)
            self.fits[c] = (w, b, accuracy(self.val_x @ w.t() + b, self.val_y))
        return self.fits[c][2]


def search_c(search: _Search, grid: list[float], steps: int) -> float:
    """CoOp's lpclip search: the grid's best C (first among ties), then bisection of log10 C."""
    accs = [search.score(float(c)) for c in grid]
    peak = float(grid[max(range(len(grid)), key=lambda i: (accs[i], -i))])
    left, right = 0.1 * peak, 10.0 * peak
    best = peak
    for _ in range(int(steps)):
        acc_left, acc_right = search.score(left), search.score(right)
        mid = 0.5 * (math.log10(left) + math.log10(right))
        if acc_left < acc_right:
            best, left = right, 10 ** mid
        else:
            best, right = left, 10 ** mid
    return best


@dataclass
class LinearProbe(Method):
    name = "linear_probe"
    paper = ('Radford et al., "Learning Transferable Visual Models From Natural Language Supervision"'
             ', ICML 2021 (appendix A.3), as CoOp runs it')
    Params = LinearProbeParams
    description = "linear-probe CLIP: L2 logistic regression (L-BFGS), C searched on the val split"
    aug_scale = None  # lpclip/feat_extractor.py: build_transform(cfg, is_train=False), the test transform
    no_online = "encodes each training image once, under the test transform (lpclip), and fits on those features"

    def fit(self, ctx: FitContext) -> LinearClassifier:
        params = self.params or LinearProbeParams()
        x, y = train_matrix(ctx, params.train_views)
        check_classes(ctx, y)
        device = resolve_device(params.device)
        x, y = x.to(device), y.to(device)
        if params.normalize:
            x = F.normalize(x, dim=-1)
        if params.c is not None:
            c, val_acc = float(params.c), None
            weight, bias = fit_logistic(x, y, ctx.num_classes, c, params.max_iter)
        elif not has_val(ctx):
            warn_no_val("linear probe", f"C={params.fallback_c}")
            c, val_acc = float(params.fallback_c), None
            weight, bias = fit_logistic(x, y, ctx.num_classes, c, params.max_iter)
        else:
            val_x = ctx.val_features.float().to(device)
            if params.normalize:
                val_x = F.normalize(val_x, dim=-1)
            search = _Search(x, y, val_x, ctx.val_labels.to(device), ctx.num_classes, params.max_iter)
            c = search_c(search, params.c_grid, params.refine_steps)
            weight, bias, val_acc = search.fits[c]
        meta = ctx.meta(self.name, params, c=c, val_top1=val_acc)
        return LinearClassifier(meta, weight.cpu(), bias.cpu(), normalize=params.normalize)
