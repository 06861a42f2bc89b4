"""CoOp: Context Optimization (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022).

The prompt of class c is ``[SOS] v_1 ... v_M [CLASS c] . [EOS]``: M context vectors v shared by every class
(the unified context, class token at the end), learned through the frozen text encoder. Logits are CLIP's:

    logits = exp(logit_scale) * normalize(f) @ normalize(g([v, name_c]))^T

with g the text encoder. Image features come from the cache, so each step costs one pass of the C prompts
through the text transformer. The exported classifier (``PromptClassifier``) is a cosine classifier whose
base is the learned prompts' text features, so evaluating it needs no text encoder; it also keeps the
learned context vectors, from which the prompts of other class names are built (base-to-new).

Precision (``precision``, CoOp's ``TRAINER.COOP.PREC``): the reference trains in fp16 by default: CLIP's
weights as OpenAI releases them (``convert_weights``), the context and SGD in fp16. ``auto`` does that on
a GPU and fp32 on a CPU; ``fp16`` also runs on a CPU (torch has the kernels; held to the official fp16 path
by the parity golden); ``amp`` is fp32 weights under CUDA autocast with a gradient scaler, and on a CPU,
where the reference's ``torch.cuda.amp.autocast`` does nothing, it is fp32. The precision used is in the
classifier's hparams and so in ``metrics.json``.

Against the release (KaiyangZhou/CoOp trainers/coop.py with Dassl's SGD and warm-up cosine; the goldens
of parity/coop.py hold taskres to it within 1.2e-13 in float64): the random context comes from a generator
seeded by the run's seed rather than the global RNG; training reads cached augmented views; a training step
runs the text transformer only up to the prompts' last EOT token (the same features under the causal mask);
class-specific context and the middle/front class-token positions are not offered.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..classifier import ClassifierMeta, CosineClassifier
from .kit import text_recipe as recipes
from ..errors import OptionError
from .base import FitContext, Method, TrainingError, one_of, validate_params
from .kit.training import OptimizerStep, Schedule, seeded_generator, sgd, train_loop
from .kit.text_encoder import TextTower

log = logging.getLogger("taskres")

PLACEHOLDER = "X"  # CoOp's stand-in word for a context slot when the context is initialised at random
PRECISIONS = ("auto", "fp16", "fp32", "amp")  # TRAINER.COOP.PREC's values (check_cfg), and auto


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
    # TRAINER.COOP.PREC: "fp16" in CoOp's train.py (extend_cfg), also "fp32" and "amp" (trainers/coop.py).
    # auto = fp16 where CUDA is (the reference's default), fp32 on a CPU; see resolve_precision.
    precision: str = "auto"

    def validate(self) -> None:  # the numeric bounds are methods/base.py's PARAM_RULES
        one_of("precision", self.precision, PRECISIONS)


def resolve_precision(asked: str, device: torch.device) -> tuple[str, str | None]:
    """(the precision CoOp trains in on ``device``, a one-line note when it is not the one asked for)."""
    cuda = torch.device(device).type == "cuda"
    if asked == "auto":
        return ("fp16", None) if cuda else ("fp32", "CoOp: fp32 on a CPU (the reference's default fp16 is "
                                             "for a GPU; precision=fp16 runs fp16 here too)")
    if asked == "amp" and not cuda:
        # trainers/coop.py wraps the step in torch.cuda.amp.autocast, which is inactive without CUDA
        return "fp32", "CoOp: precision amp is CUDA's autocast; on a CPU the reference, and this run, use fp32"
    return asked, None


def coop_epochs(task_name: str, shots: int) -> int:
    """CoOp's schedule length: rn50_ep50 (1 shot), rn50_ep100 (2/4), rn50 (8/16); *_ep50 for all ImageNet runs."""
    if task_name == "imagenet":
        return 50
    return 50 if shots <= 1 else 100 if shots <= 4 else 200


class PromptLearner(torch.nn.Module):
    """The learned context and the fixed start / class-name token embeddings around it."""

    def __init__(self, tower: TextTower, classnames: list[str], params: CoOpParams, seed: int):
        super().__init__()
        dtype = tower.dtype  # the context and the fixed embeddings live in the precision trained in
        init = (params.ctx_init or "").strip().replace("_", " ")
        if init:
            # CoOp counts words, not tokens: n_ctx = len(ctx_init.split(" ")) and the context is the first
            # n_ctx token embeddings; the tokens of a word that BPE splits in several stay in the fixed part
            n_ctx = len(init.split(" "))
            prefix_text = init
        else:
            n_ctx = int(params.n_ctx)
            if n_ctx < 1:
                raise OptionError("n_ctx", f"must be at least 1, not {n_ctx}", method="coop")
            prefix_text = " ".join([PLACEHOLDER] * n_ctx)
        prompts = [f"{prefix_text} {name}." for name in classnames]
        for name, prompt in zip(classnames, prompts):
            count = tower.token_count(prompt)
            if count is not None and count + 2 > tower.context_length:
                raise TrainingError(
                    f"CoOp: the prompt for class {name!r} needs {count + 2} tokens with {n_ctx} context "
                    f"vectors, more than the text encoder's {tower.context_length}; lower n_ctx")
        tokens = tower.tokenize(prompts)
        ctx_tokens = tower.tokenize([prefix_text])[0]
        # The context must sit right after one start token in every prompt; check rather than assume.
        if not bool((tokens[:, 1:1 + n_ctx] == ctx_tokens[1:1 + n_ctx]).all()):
            raise TrainingError("CoOp: the tokenizer does not put the context words right after a start token "
                                "(a CLIP-style BPE tokenizer is needed)")
        with torch.no_grad():
            embedding = tower.embed(tokens).to(dtype)
            if init:
                ctx_vectors = tower.embed(ctx_tokens[None])[0, 1:1 + n_ctx].to(dtype).clone()
            else:
                ctx_vectors = torch.empty(n_ctx, tower.width).normal_(
                    0.0, params.init_std, generator=seeded_generator(seed, 17)).to(embedding.device, dtype)
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


def prompt_logits(tower: TextTower, learner: PromptLearner, features: torch.Tensor, scale: torch.Tensor,
                  prefix_only: bool = False) -> torch.Tensor:
    """CustomCLIP.forward on image features: both sides divided by their norms, then scale * f @ g^T.

    In CoOp's order of operations (trainers/coop.py), which matters in fp16: the scale multiplies the image
    features before the product."""
    text = prompt_features(tower, learner, prefix_only)
    features = features / features.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return scale * features @ text.t()


def logit_scale_tensor(logit_scale: float, dtype: torch.dtype, device) -> torch.Tensor:
    """exp(logit_scale) as CLIP's parameter gives it: in the weights' dtype, fp32 at least (convert_weights
    leaves ``logit_scale`` in fp32 in the fp16 model)."""
    return torch.tensor(logit_scale, dtype=torch.promote_types(dtype, torch.float32), device=device).exp()


def training_tower(tower: TextTower, precision: str) -> TextTower:
    """The text encoder CoOp trains through: fp16 weights for ``fp16``, the backbone's own otherwise."""
    return tower.converted(torch.float16) if precision == "fp16" else tower


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
        device = ctx.backbone.device if ctx.backbone is not None else torch.device("cpu")
        return replace(params, precision=resolve_precision(params.precision, device)[0])

    def make_learner(self, tower: TextTower, ctx: FitContext, params: CoOpParams) -> PromptLearner:
        """The prompt learner that ``fit`` trains (the parity check overrides it to set the starting context)."""
        return PromptLearner(tower, ctx.prompt_classnames, params, ctx.seed)

    def fit(self, ctx: FitContext) -> CosineClassifier:
        params = self.resolved_params(ctx)
        validate_params(params, self.name, warn=False)
        if ctx.backbone is None:
            raise TrainingError("CoOp learns through the text encoder, but no backbone was given")
        asked = (self.params or CoOpParams()).precision
        note = resolve_precision(asked, ctx.backbone.device)[1]
        if note and params.precision != asked:  # the CPU default quietly; an amp that cannot be out loud
            (log.info if asked == "auto" else log.warning)(note)
        tower = training_tower(TextTower(ctx.backbone), params.precision)
        learner = self.make_learner(tower, ctx, params)
        device, dtype = tower.device, tower.dtype
        scale = logit_scale_tensor(ctx.logit_scale, dtype, device)
        amp = params.precision == "amp"  # fp32 weights, fp16 compute under autocast (trainers/coop.py)
        autocast = torch.autocast(device.type, dtype=torch.float16) if amp else contextlib.nullcontext()

        def loss_fn(feats, labels):
            with autocast:
                # under CoOp's autocast the image encoder hands over fp16 features, normalised in fp16
                feats = feats.half() if amp else feats
                logits = prompt_logits(tower, learner, feats, scale, prefix_only=True)
                return F.cross_entropy(logits, labels)

        schedule = Schedule(params.lr, params.epochs, params.warmup_epochs, params.warmup_lr)
        optimizer = sgd([learner.ctx], params.lr, params.momentum, params.weight_decay)
        step = OptimizerStep([learner.ctx], loss_fn, optimizer, device=device, dtype=dtype,
                             scaler=torch.amp.GradScaler(device.type) if amp else None)
        history = train_loop(step, ctx.train, schedule, batch_size=params.batch_size, seed=ctx.seed,
                             progress=ctx.progress, desc="CoOp")
        with torch.no_grad():
            base = prompt_features(tower, learner).float().cpu()
        meta = ctx.meta(self.name, params, loss_history=history, n_ctx=learner.n_ctx,
                        prompt_prefix=learner.prompt_prefix, train_dtype=str(dtype).replace("torch.", ""))
        return PromptClassifier(meta, base, learner.ctx, ctx.logit_scale)

    def classifier_for_new_classes(self, classifier: CosineClassifier, ctx: FitContext) -> PromptClassifier | None:
        """Classes never trained on (base-to-new): the learned context in front of their names."""
        if not isinstance(classifier, PromptClassifier):
            return None  # saved before the context was kept: the prompts cannot be rebuilt
        if ctx.backbone is None:
            raise TrainingError("CoOp builds prompts through the text encoder, but no backbone was given")
        # the prompts of the new names go through the text encoder in the precision the context was learned in
        params = replace(self.resolved_params(ctx), precision=classifier.meta.hparams.get("precision", "fp32"))
        tower = training_tower(TextTower(ctx.backbone), params.precision)
        learner = PromptLearner(tower, ctx.prompt_classnames, params, ctx.seed)
        if learner.ctx.shape != classifier.context.shape:
            raise TrainingError(f"CoOp: the classifier has {classifier.context.shape[0]} context vectors, the "
                                f"settings give {learner.n_ctx}")
        with torch.no_grad():
            learner.ctx.copy_(classifier.context.to(learner.ctx.dtype))
            base = prompt_features(tower, learner).float().cpu()
        meta = ctx.meta(self.name, classifier.meta.hparams, new_classes="learned context, new class names",
                        n_ctx=learner.n_ctx, prompt_prefix=learner.prompt_prefix)
        return PromptClassifier(meta, base, classifier.context, ctx.logit_scale)
