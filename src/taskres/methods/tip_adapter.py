"""Tip-Adapter and Tip-Adapter-F (Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification", ECCV 2022).

A key-value cache built from the few shots: keys K = normalised training features (the mean of each image's
augmented views, as the reference averages ``augment_epoch`` = 10 augmented passes), values V = one-hot labels.
For a normalised image feature f:

    A = f @ K^T                                   (cosine affinities)
    logits = s * f @ normalize(t)^T + alpha * exp(-beta * (1 - A)) @ V

with s = exp(logit_scale): the release writes 100, OpenAI's weights give exp(4.6055) = 100.03 (kept on purpose:
the backbone's own temperature; its effect is measured in parity/tip_adapter.py). As the release
(gaopengcuhk/Tip-Adapter):
- per-dataset settings (``TIP_ADAPTER_CONFIGS``, from its configs/<dataset>.yaml): the search ranges
  ``search_scale`` [beta, alpha], the initial alpha/beta and Tip-Adapter-F's epochs (100 on EuroSAT, else 20);
  a dataset without a config file (a folder, a demo task) gets imagenet.yaml's values;
- the search (utils.py search_hp): beta_i = 0.1 + i (B - 0.1) / 200, alpha_j = 0.1 + j (A - 0.1) / 20, every
  pair, the first best (strict '>') wins;
- views: RandomResizedCrop scale 0.5-1, bicubic, flip (main.py train_tranform; datasets/imagenet.py);
- Tip-Adapter-F: AdamW(lr 0.001, eps 1e-4), batch 256 with the last short batch kept (its loader's
  drop_last=False), a per-step cosine over epochs x batches, alpha/beta fixed at their initial values while the
  keys train, then searched again.
Not the release's behaviour: the search runs on the split ``--search-split`` names (min(K, 4) per class by
default; ``full`` is the val split the release searches for 10 datasets; its ImageNet script searches the test
set, which this project never does); Tip-Adapter-F keeps the epoch with the best *validation* accuracy (the
release picks it on the test set). The text classifier is the release's (``text_recipe``: names with spaces,
its 7 ImageNet templates, each normalised).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from ..classifier import Classifier, ClassifierMeta
from .kit import text_recipe as recipes
from ..errors import OptionError
from .base import FitContext, Method, one_of, validate_params
from .kit.heads import normalized_text, zero_shot_logits
from .kit.samples import check_classes, train_matrix, working_float
from .kit.search import accuracy, has_val, linspace_grid, warn_no_val
from .kit.training import OptimizerStep, StepCosine, epoch_batches, train_loop


@dataclass(frozen=True)
class TipConfig:
    """One dataset's settings in the release's configs/<dataset>.yaml."""

    search_scale: tuple[float, float]  # largest beta, largest alpha of the search
    init_alpha: float
    init_beta: float
    epochs: int  # train_epoch (Tip-Adapter-F)


# dataset -> its configs/*.yaml in gaopengcuhk/Tip-Adapter (search_step [200, 20], lr 0.001, augment_epoch 10
# in every file).
TIP_ADAPTER_CONFIGS: dict[str, TipConfig] = {
    "imagenet": TipConfig((7, 3), 1.17, 1, 20),  # configs/imagenet.yaml
    "caltech101": TipConfig((12, 5), 3, 1, 20),  # configs/caltech101.yaml
    "oxford_pets": TipConfig((7, 3), 1.17, 1, 20),  # configs/oxford_pets.yaml
    "stanford_cars": TipConfig((20, 10), 3, 1, 20),  # configs/stanford_cars.yaml
    "oxford_flowers": TipConfig((50, 50), 10, 1, 20),  # configs/oxford_flowers.yaml
    "food101": TipConfig((10, 10), 1.17, 1, 20),  # configs/food101.yaml
    "fgvc_aircraft": TipConfig((30, 30), 5, 1, 20),  # configs/fgvc.yaml
    "sun397": TipConfig((12, 10), 1.17, 1, 20),  # configs/sun397.yaml
    "dtd": TipConfig((13, 13), 2, 1, 20),  # configs/dtd.yaml
    "eurosat": TipConfig((12, 10), 2, 1, 100),  # configs/eurosat.yaml
    "ucf101": TipConfig((7, 3), 3, 1, 20),  # configs/ucf101.yaml
}
TIP_FALLBACK = "imagenet"  # datasets without a config file of their own


def tip_config(task_name: str) -> TipConfig:
    return TIP_ADAPTER_CONFIGS.get(task_name, TIP_ADAPTER_CONFIGS[TIP_FALLBACK])


@dataclass
class TipAdapterParams:
    # None: the dataset's value in TIP_ADAPTER_CONFIGS (resolved_params).
    alpha: float | None = None  # None: searched on the val split; a number fixes it (0 = zero-shot CLIP)
    beta: float | None = None  # None: searched on the val split
    init_alpha: float | None = None  # used without a val split, and while fine-tuning the keys (Tip-Adapter-F)
    init_beta: float | None = None
    search_scale: list | None = None  # largest beta, largest alpha
    search_step: list = field(default_factory=lambda: [200, 20])  # grid points for beta, alpha (every yaml)
    keys: str = "mean"  # cache keys: "mean" of each image's cached views, or "one" view each

    def validate(self) -> None:  # the numeric bounds are methods/base.py's PARAM_RULES
        one_of("keys", self.keys, ("mean", "one"))
        for name in ("search_scale", "search_step"):
            value = getattr(self, name)
            if value is not None and len(value) != 2:
                raise OptionError(name, f"takes two values (BETA,ALPHA), not {len(value)}")



@dataclass
class TipAdapterFParams(TipAdapterParams):
    # Source: Tip-Adapter main.py run_tip_adapter_F and configs/*.yaml (lr 0.001, train_epoch, batch 256).
    lr: float = 0.001
    epochs: int | None = None  # None: the dataset's train_epoch (20; 100 on EuroSAT)
    batch_size: int = 256
    eps: float = 1e-4  # torch.optim.AdamW(..., eps=1e-4)
    weight_decay: float = 0.01  # AdamW's default, which the reference keeps


def resolve_tip_params(params, task_name: str):
    """Fill the dataset's values (TIP_ADAPTER_CONFIGS) into the parameters left at None."""
    ref = tip_config(task_name)
    values = {"init_alpha": ref.init_alpha, "init_beta": ref.init_beta, "search_scale": list(ref.search_scale)}
    if hasattr(params, "epochs"):
        values["epochs"] = ref.epochs
    return replace(params, **{k: float(v) if k.startswith("init") else v for k, v in values.items()
                              if getattr(params, k) is None})


def cache_logits(features_normed: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 beta: float) -> torch.Tensor:
    affinity = features_normed @ keys.t()
    return torch.exp(-beta * (1 - affinity)) @ values


class CacheClassifier(Classifier):
    """Tip-Adapter's head: zero-shot logits plus alpha times the cache model's logits.

    ``text`` is the zero-shot classifier already normalised (stored as given, so loading is exact). The
    tensors are kept in float32, or float64 when given in float64 (the parity checks).
    """

    kind = "tip_adapter"

    def __init__(self, meta: ClassifierMeta, text: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor,
                 alpha: float, beta: float, logit_scale: float):
        super().__init__(meta)
        self.register_buffer("text", working_float(text.detach()).cpu().clone())
        self.register_buffer("keys", working_float(keys.detach()).cpu().clone())
        # V is one-hot: the file keeps the labels (the one-hot matrix would be N x C floats).
        self.register_buffer("labels", labels.detach().long().cpu().clone())
        self.register_buffer("values", F.one_hot(self.labels, text.shape[0]).to(self.keys.dtype))
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.logit_scale = float(logit_scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(working_float(features).to(self.keys.dtype), dim=-1)
        logits = zero_shot_logits(f, self.text, self.logit_scale)
        if self.alpha != 0:
            logits = logits + self.alpha * cache_logits(f, self.keys, self.values, self.beta)
        return logits

    def tensors(self):
        return {"text": self.text, "keys": self.keys, "labels": self.labels}

    def config(self):
        return {"alpha": self.alpha, "beta": self.beta, "logit_scale": self.logit_scale}

    @classmethod
    def from_tensors(cls, tensors, meta, config):
        return cls(meta, tensors["text"], tensors["keys"], tensors["labels"], config["alpha"], config["beta"],
                   config["logit_scale"])


def build_cache(ctx: FitContext, keys: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys K (normalised), values V (one-hot) and the labels behind V."""
    if keys not in ("mean", "one"):
        raise OptionError("keys", f"must be 'mean' or 'one', not {keys!r}")
    feats, labels = train_matrix(ctx, keys)
    check_classes(ctx, labels)
    return F.normalize(feats, dim=-1), F.one_hot(labels, ctx.num_classes).to(feats.dtype), labels


def search_alpha_beta(params: TipAdapterParams, keys: torch.Tensor, values: torch.Tensor, text_normed: torch.Tensor,
                      ctx: FitContext) -> tuple[float, float, float | None]:
    """The reference's grid search on the val split: every beta, then every alpha; the first best wins."""
    fixed_alpha, fixed_beta = params.alpha, params.beta
    if fixed_alpha is not None and fixed_beta is not None:
        return float(fixed_alpha), float(fixed_beta), None
    if not has_val(ctx):
        warn_no_val("Tip-Adapter", f"alpha={params.init_alpha}, beta={params.init_beta}")
        return (float(params.init_alpha if fixed_alpha is None else fixed_alpha),
                float(params.init_beta if fixed_beta is None else fixed_beta), None)
    if len(params.search_scale) != 2 or len(params.search_step) != 2:
        raise OptionError("search_scale", "and search_step take two values each: BETA,ALPHA")
    betas = [float(fixed_beta)] if fixed_beta is not None else linspace_grid(params.search_scale[0],
                                                                             params.search_step[0])
    alpha_grid = ([float(fixed_alpha)] if fixed_alpha is not None else
                  linspace_grid(params.search_scale[1], params.search_step[1]))
    f = F.normalize(working_float(ctx.val_features).to(keys.dtype), dim=-1)
    alphas = torch.tensor(alpha_grid, dtype=f.dtype)
    labels = ctx.val_labels
    zs = zero_shot_logits(f, text_normed, ctx.logit_scale)
    best = (-1.0, 0.0, 0.0)
    for beta in betas:
        cache = cache_logits(f, keys, values, beta)
        # every alpha at once: [A, N, C]
        correct = ((zs[None] + alphas[:, None, None] * cache[None]).argmax(dim=2) == labels[None]).float()
        accs = correct.mean(dim=1)
        i = int(accs.argmax())  # first maximum: the smallest alpha among ties, as the reference's strict '>'
        if float(accs[i]) > best[0]:
            best = (float(accs[i]), alpha_grid[i], float(beta))  # the grid's value, not its float32 copy
    return best[1], best[2], best[0]


@dataclass
class TipAdapter(Method):
    name = "tip_adapter"
    paper = 'Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification", ECCV 2022'
    Params = TipAdapterParams
    description = "Tip-Adapter: training-free key-value cache of the few shots, alpha/beta searched on val"
    text_recipe = recipes.TIP_ADAPTER  # spaces, 7 ImageNet templates, each normalised
    aug_scale = (0.5, 1.0)  # main.py train_tranform: RandomResizedCrop(224, scale=(0.5, 1), bicubic)
    no_online = "is training-free: its cache keys average the augmented passes encoded once (augment_epoch; --views)"

    def resolved_params(self, ctx: FitContext) -> TipAdapterParams:
        return resolve_tip_params(self.params or self.Params(), ctx.task_name)

    def fit(self, ctx: FitContext) -> CacheClassifier:
        params = self.resolved_params(ctx)
        keys, values, labels = build_cache(ctx, params.keys)
        text = normalized_text(ctx)
        alpha, beta, val_acc = search_alpha_beta(params, keys, values, text, ctx)
        meta = ctx.meta(self.name, params, alpha=alpha, beta=beta, val_top1=val_acc)
        return CacheClassifier(meta, text, keys, labels, alpha, beta, ctx.logit_scale)


@dataclass
class TipAdapterF(Method):
    name = "tip_adapter_f"
    paper = TipAdapter.paper
    Params = TipAdapterFParams
    description = "Tip-Adapter-F: Tip-Adapter with the cache keys fine-tuned (AdamW, 20 epochs; 100 on EuroSAT)"
    text_recipe = recipes.TIP_ADAPTER  # the same clip_weights as Tip-Adapter
    aug_scale = (0.5, 1.0)  # main.py: train_loader_F uses the same train_tranform (scale 0.5-1)
    no_online = ("builds its cache keys from the augmented passes encoded once (augment_epoch; --views), which "
                 "the online regime does not keep (only its key fine-tuning could run online)")

    def resolved_params(self, ctx: FitContext) -> TipAdapterFParams:
        return resolve_tip_params(self.params or self.Params(), ctx.task_name)

    def fit(self, ctx: FitContext) -> CacheClassifier:
        params = self.resolved_params(ctx)
        validate_params(params, self.name, warn=False)
        keys0, values, labels = build_cache(ctx, params.keys)
        text = normalized_text(ctx)
        keys = torch.nn.Parameter(keys0.clone())  # the reference's adapter: a Linear layer initialised to K
        scale_alpha, scale_beta = params.init_alpha, params.init_beta

        def forward(f_normed):
            return zero_shot_logits(f_normed, text, ctx.logit_scale) + scale_alpha * cache_logits(
                f_normed, keys, values, scale_beta)

        def loss_fn(feats, labels):
            return F.cross_entropy(forward(F.normalize(feats, dim=-1)), labels)

        best = {"acc": -1.0, "epoch": -1, "keys": keys0.clone()}
        val_f = F.normalize(working_float(ctx.val_features).to(keys.dtype), dim=-1) if has_val(ctx) else None

        def on_epoch_end(epoch):
            if val_f is None:
                best.update(epoch=epoch, keys=keys.detach().clone())
                return
            with torch.no_grad():
                acc = accuracy(forward(val_f), ctx.val_labels)
            if acc > best["acc"]:
                best.update(acc=acc, epoch=epoch, keys=keys.detach().clone())

        # main.py's train_loader_F keeps the last short batch (datasets/utils.py: drop_last=False), and its
        # CosineAnnealingLR spans train_epoch * len(train_loader_F) steps, that batch included.
        steps = len(epoch_batches(ctx.train.num_samples, params.batch_size, torch.Generator().manual_seed(0),
                                  keep_partial=True))
        schedule = StepCosine(params.lr, params.epochs, steps)
        optimizer = torch.optim.AdamW([keys], lr=params.lr, eps=params.eps, weight_decay=params.weight_decay)
        history = train_loop(OptimizerStep([keys], loss_fn, optimizer), ctx.train, schedule,
                             batch_size=params.batch_size, seed=ctx.seed, progress=ctx.progress, desc="Tip-Adapter-F",
                             on_epoch_end=on_epoch_end, keep_partial=True)
        if val_f is None and params.epochs > 0:
            warn_no_val("Tip-Adapter-F", "the keys of the last epoch")
        tuned = best["keys"]
        alpha, beta, val_acc = search_alpha_beta(params, tuned, values, text, ctx)
        meta = ctx.meta(self.name, params, loss_history=history, best_epoch=best["epoch"], alpha=alpha, beta=beta,
                        val_top1=val_acc, steps_per_epoch=steps)
        return CacheClassifier(meta, text, tuned, labels, alpha, beta, ctx.logit_scale)
