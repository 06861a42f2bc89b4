"""CoOp: Context Optimization (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022).

The prompt of class c is ``[SOS] v_1 ... v_M [CLASS c] . [EOS]``: M context vectors v shared by every class
(the unified context, class token at the end), learned through the frozen text encoder. Logits are CLIP's:

    logits = exp(logit_scale) * normalize(f) @ normalize(g([v, name_c]))^T

with g the text encoder. Image features come from the cache, so each step costs one pass of the C prompts
through the text transformer. The exported classifier (``PromptClassifier``) is a cosine classifier whose
base is the learned prompts' text features, so evaluating it needs no text encoder; it also keeps the
learned context vectors, from which the prompts of other class names are built (base-to-new).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..classifier import ClassifierMeta, CosineClassifier, logit_scale_exp
from . import text_recipe as recipes
from .base import FitContext, Method, TrainingError
from .common import check_epochs, require_positive, run_epochs, seeded_generator, sgd
from .text_encoder import TextTower
from .training import Schedule

PLACEHOLDER = "X"  # CoOp's stand-in word for a context slot when the context is initialised at random


@dataclass
class CoOpParams:
    # Sources: CoOp's configs/trainers/CoOp/rn50*.yaml, scripts/main.sh and COOP.md (KaiyangZhou/CoOp).
    n_ctx: int = 16  # M, the number of context vectors ("M=16, end" in the few-shot table)
    ctx_init: str = ""  # "" = random N(0, 0.02); words (e.g. "a photo of a") = their embeddings, M = token count
    lr: float = 0.002  # OPTIM.LR
    epochs: int | None = None  # None: 50 (1 shot), 100 (2/4 shots), 200 (8/16 shots); 50 for ImageNet
    batch_size: int = 32  # DATALOADER.TRAIN_X.BATCH_SIZE
    momentum: float = 0.9  # Dassl's SGD defaults
    weight_decay: float = 5e-4
    warmup_epochs: int = 1  # WARMUP_EPOCH, constant WARMUP_CONS_LR
    warmup_lr: float = 1e-5
    init_std: float = 0.02  # nn.init.normal_(ctx_vectors, std=0.02)


def coop_epochs(task_name: str, shots: int) -> int:
    """CoOp's schedule length: rn50_ep50 (1 shot), rn50_ep100 (2/4), rn50 (8/16); *_ep50 for all ImageNet runs."""
    if task_name == "imagenet":
        return 50
    return 50 if shots <= 1 else 100 if shots <= 4 else 200


class PromptLearner(torch.nn.Module):
    """The learned context and the fixed start / class-name token embeddings around it."""

    def __init__(self, tower: TextTower, classnames: list[str], params: CoOpParams, seed: int):
        super().__init__()
        init = (params.ctx_init or "").strip().replace("_", " ")
        if init:
            n_ctx = tower.token_count(init)
            if n_ctx is None:
                n_ctx = len(init.split())
            prefix_text = init
        else:
            n_ctx = int(params.n_ctx)
            if n_ctx < 1:
                raise ValueError(f"--set n_ctx must be at least 1, not {n_ctx}")
            prefix_text = " ".join([PLACEHOLDER] * n_ctx)
        prompts = [f"{prefix_text} {name}." for name in classnames]
        for name, prompt in zip(classnames, prompts):
            count = tower.token_count(prompt)
            if count is not None and count + 2 > tower.context_length:
                raise TrainingError(
                    f"CoOp: the prompt for class {name!r} needs {count + 2} tokens with {n_ctx} context "
                    f"vectors, more than the text encoder's {tower.context_length}; lower --set n_ctx")
        tokens = tower.tokenize(prompts)
        ctx_tokens = tower.tokenize([prefix_text])[0]
        # The context must sit right after one start token in every prompt; check rather than assume.
        if not bool((tokens[:, 1:1 + n_ctx] == ctx_tokens[1:1 + n_ctx]).all()):
            raise TrainingError("CoOp: the tokenizer does not put the context words right after a start token "
                                "(a CLIP-style BPE tokenizer is needed)")
        with torch.no_grad():
            embedding = tower.embed(tokens).float()
            if init:
                ctx_vectors = tower.embed(ctx_tokens[None])[0, 1:1 + n_ctx].float().clone()
            else:
                ctx_vectors = torch.empty(n_ctx, tower.width).normal_(
                    0.0, params.init_std, generator=seeded_generator(seed, 17)).to(embedding.device)
        self.ctx = torch.nn.Parameter(ctx_vectors)  # v_1..v_M, unified across classes
        self.register_buffer("token_prefix", embedding[:, :1].clone())  # [SOS]
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:].clone())  # class name, ".", [EOS], padding
        self.tokens = tokens
        self.n_ctx = n_ctx
        self.prompt_prefix = prefix_text

    def forward(self) -> torch.Tensor:
        ctx = self.ctx.unsqueeze(0).expand(self.token_prefix.shape[0], -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)  # class token at the end


class PromptClassifier(CosineClassifier):
    """CoOp's head: the learned prompts' text features (the cosine classifier's base) and the learned context."""

    kind = "coop"

    def __init__(self, meta: ClassifierMeta, base: torch.Tensor, context: torch.Tensor, logit_scale: float):
        super().__init__(meta, base, None, 0.0, logit_scale)
        self.register_buffer("context", context.detach().float().cpu().clone())  # v_1..v_M [M, width]

    def tensors(self):
        return {"base": self.base, "context": self.context}

    def config(self):
        return {"logit_scale": self.logit_scale}

    @classmethod
    def from_tensors(cls, tensors, meta, config):
        return cls(meta, tensors["base"], tensors["context"], config["logit_scale"])


def prompt_features(tower: TextTower, learner: PromptLearner, prefix_only: bool = False) -> torch.Tensor:
    """g([v, name_c]) for every class of ``learner``: the prompts through the frozen text encoder.

    ``prefix_only`` (training steps): skip the padding after the prompts, see TextTower.pooled."""
    return tower.project(tower.pooled(learner(), learner.tokens, prefix_only), *tower.projection())


@dataclass
class CoOp(Method):
    name = "coop"
    paper = 'Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022'
    Params = CoOpParams
    description = "CoOp: 16 learned context vectors through the frozen text encoder (SGD, cosine)"
    text_recipe = recipes.COOP  # prompts the names with spaces

    def resolved_params(self, ctx: FitContext) -> CoOpParams:
        params = self.params or CoOpParams()
        if params.epochs is None:
            params = replace(params, epochs=coop_epochs(ctx.task_name, ctx.shots))
        return params

    def fit(self, ctx: FitContext) -> CosineClassifier:
        params = self.resolved_params(ctx)
        check_epochs(params.epochs)
        require_positive("lr", params.lr)
        if ctx.backbone is None:
            raise TrainingError("CoOp learns through the text encoder, but no backbone was given")
        tower = TextTower(ctx.backbone)
        learner = PromptLearner(tower, ctx.prompt_classnames, params, ctx.seed)
        scale = logit_scale_exp(ctx.logit_scale)
        device = tower.device

        def loss_fn(feats, labels):
            text = F.normalize(prompt_features(tower, learner, prefix_only=True), dim=-1)
            logits = scale * F.normalize(feats, dim=-1) @ text.t()
            return F.cross_entropy(logits, labels)

        schedule = Schedule(params.lr, params.epochs, params.warmup_epochs, params.warmup_lr)
        optimizer = sgd([learner.ctx], params.lr, params.momentum, params.weight_decay)
        history = run_epochs([learner.ctx], loss_fn, ctx.train, schedule, optimizer,
                             batch_size=params.batch_size, seed=ctx.seed, progress=ctx.progress, desc="CoOp",
                             device=device)
        with torch.no_grad():
            base = prompt_features(tower, learner).float().cpu()
        meta = ctx.meta(self.name, params, loss_history=history, n_ctx=learner.n_ctx,
                        prompt_prefix=learner.prompt_prefix)
        return PromptClassifier(meta, base, learner.ctx, ctx.logit_scale)

    def classifier_for_new_classes(self, classifier: CosineClassifier, ctx: FitContext) -> PromptClassifier | None:
        """Classes never trained on (base-to-new): the learned context in front of their names."""
        if not isinstance(classifier, PromptClassifier):
            return None  # saved before the context was kept: the prompts cannot be rebuilt
        if ctx.backbone is None:
            raise TrainingError("CoOp builds prompts through the text encoder, but no backbone was given")
        params = self.resolved_params(ctx)
        tower = TextTower(ctx.backbone)
        learner = PromptLearner(tower, ctx.prompt_classnames, params, ctx.seed)
        if learner.ctx.shape != classifier.context.shape:
            raise TrainingError(f"CoOp: the classifier has {classifier.context.shape[0]} context vectors, the "
                                f"settings give {learner.n_ctx}")
        with torch.no_grad():
            learner.ctx.copy_(classifier.context)
            base = prompt_features(tower, learner).float().cpu()
        meta = ctx.meta(self.name, classifier.meta.hparams, new_classes="learned context, new class names",
                        n_ctx=learner.n_ctx, prompt_prefix=learner.prompt_prefix)
        return PromptClassifier(meta, base, classifier.context, ctx.logit_scale)
