"""CoOp against its authors' code: KaiyangZhou/CoOp's trainers/coop.py, trained by Dassl's own trainer pieces.

``python -m parity.coop --repo COOP_SNAPSHOT --dassl DASSL_SNAPSHOT`` builds CoOp's trainer (``CoOp.build_model``:
PromptLearner, TextEncoder, CustomCLIP, Dassl's build_optimizer / build_lr_scheduler from the config that
CoOp's train.py layers: Dassl defaults, ``extend_cfg``, ``configs/trainers/CoOp/rn50.yaml``, overrides) on the
fixture's tiny CLIP and images, runs Dassl's ``TrainerX.run_epoch`` for a few full-batch epochs (one step
each: epoch 0 at the constant warm-up lr, then cosine) and saves, per precision, the seeded starting context,
the prompts' text features and the test logits at the start, every step's lr and loss, the learned context,
the final text features, logits and predictions, and the learned context in front of new class names
(base-to-new, as CoOp's load_model rebuilds the prompts). ``recompute`` gives the same from
``taskres.methods.coop`` (``CoOp.fit`` and ``classifier_for_new_classes``), started from CoOp's draw.

Runs: float64 and float32 (what the CI test compares), float16 (CoOp's default ``PREC``) and amp (its autocast
path moved to the CPU); tests/test_coop.py holds taskres's ``precision=fp16`` / ``amp`` to those within fp16
round-off, and to a few ulps without taskres's two shortcuts (prefix pass, batch order). Two goldens: ``coop``
(16 random context vectors, generic, class token at the end: the few-shot table's setting) and
``coop_words`` (a context initialised from words, one of which BPE splits into two tokens).

Snapshots used: KaiyangZhou/CoOp ff61507 (Oct 2022) and KaiyangZhou/Dassl.pytorch c61a1b5. Besides the dev
extra the script needs ``yacs`` and ``tabulate`` (pip); the imports of Dassl it never uses (tensorboard, gdown,
wilds, scikit-learn, pandas) are stubbed. Regenerating gives the same bytes on the machine that made them.
"""

from __future__ import annotations

import argparse
import copy
from contextlib import contextmanager, nullcontext
import importlib
import importlib.machinery
import sys
import types
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

from parity import _stats_harness as harness
from parity import fixture
from parity._adapters import stub_modules
from taskres.features.views import CachedViews
from taskres.methods.base import FitContext
from taskres.methods.coop import (CoOp, CoOpParams, logit_scale_tensor, prompt_features, prompt_logits,
                                  training_tower)
from taskres.methods.kit.text_encoder import TextTower
from taskres.methods.kit.training import Schedule

OFFICIAL = {
    "repo": "KaiyangZhou/CoOp",
    "files": ["trainers/coop.py", "clip/model.py", "clip/clip.py", "train.py", "configs/trainers/CoOp/rn50.yaml"],
    "what": "CoOp's prompts' text features and logits at the start, lr and loss of each full-batch SGD step, "
            "the learned context, final text features, logits and predictions, new class names' features "
            "with the learned context (base-to-new)",
}
DASSL = {
    "repo": "KaiyangZhou/Dassl.pytorch",
    "files": ["dassl/engine/trainer.py", "dassl/optim/optimizer.py", "dassl/optim/lr_scheduler.py",
              "dassl/config/defaults.py"],
}
CONFIG_FILE = "configs/trainers/CoOp/rn50.yaml"  # SGD lr 0.002, cosine, 1 constant warm-up epoch at 1e-5
# OPTIM.MAX_EPOCH: epoch 0 at the warm-up lr, then cosine. 12 because amp's GradScaler (initial scale 2^16)
# skips the first 7 steps on this model's gradients (inf in fp16) before it halves its way to a usable scale.
EPOCHS = 12
SEED = 1
VARIANTS = {
    "coop": {"N_CTX": 16, "CTX_INIT": ""},
    # "itap" is two BPE tokens: CoOp learns len(words) = 3 vectors and keeps the 4th token fixed
    "coop_words": {"N_CTX": 16, "CTX_INIT": "an itap of"},
}
# Base-to-new: classes never trained on get the learned context in front of their names (CoOp.load_model
# keeps ctx and rebuilds token_prefix / token_suffix for the current class names).
NEW_CLASSNAMES = ["tree_frog", "Rock_Climbing_Indoor", "car"]
OUTPUTS = ["init_text_features", "init_logits", "lrs", "losses", "ctx", "ctx_delta", "text_features", "logits",
           "predictions", "new_text_features"]
# run -> (the dtype of CLIP's weights, TRAINER.COOP.PREC); "amp" runs CoOp's autocast path moved to the CPU
RUNS = {"float64": (torch.float64, "fp16"), "float32": (torch.float32, "fp32"), "float16": (torch.float16, "fp16"),
        "amp": (torch.float32, "amp")}
PATCHES = [
    "load_clip_to_cpu returns clip/model.py's build_model(the fixture's state dict) instead of downloading "
    "OpenAI's archive (build_model converts the weights to fp16 as with the archive; the fixture's weights "
    "are fp16 values, so nothing is rounded)",
    "the trainer is made without SimpleTrainer.__init__ (no DataManager): cfg, device (cpu), dm.dataset."
    "classnames and train_loader_x = [one batch of all training images] are set by hand; build_model, "
    "run_epoch, forward_backward, model_backward_and_update and update_lr run unchanged",
    "float64 run: PREC='fp16' with the model converted to float64 (that branch only keeps the loaded dtype) "
    "and clip.model.LayerNorm computing in its input's dtype (fixture.exact_layernorm) instead of fp32",
    "torch 2.14 no longer takes the verbose argument that Dassl's warm-up scheduler passes to LRScheduler: its base "
    "class is given one that takes and ignores it",
    "Dassl's optional imports that this path never uses (tensorboard, gdown, wilds, sklearn, pandas) are stubs",
    "amp run (keys amp/*): trainers/coop.py's torch.cuda.amp.autocast and GradScaler, inactive without CUDA, "
    "are replaced by torch.autocast('cpu', float16) and torch.amp.GradScaler('cpu') (the same defaults)",
    "run on 1 CPU thread (torch.set_num_threads(1), as the test suite runs)",
    "images: the fixture's, through CoOp's clip._transform (resize, centre crop); no augmentation, so the "
    "image features are fixed inputs that taskres takes as a single cached view",
]
DEVIATIONS = [
    ("the random context draws N(0, 0.02) from a private generator seeded by the run's seed, not from "
     "the global RNG after set_random_seed",
     "the same law, other numbers (a change of seed); the goldens start both sides from CoOp's draw"),
    ("training on cached augmented views (10 per image) instead of a fresh augmentation per step",
     "the project-wide regime, measured in BENCHMARKS.md; --regime online trains as CoOp does"),
    ("training steps run the text transformer on the prompts' positions up to the last EOT token only, and "
     "the batch order is taskres's own seeded permutation",
     "round-off only: fp64 outputs move by at most 1.8e-13 against the 77-position pass; in fp16 both "
     "together make the difference to CoOp's run (up to 9 fp16 ulps of an output's largest value), "
     "without them it is within 4 ulps, mostly bit for bit"),
    ("precision auto is fp32 on a CPU (CoOp's PREC default fp16 is for its GPU runs; precision=fp16 gives it)",
     "CoOp's own fp32 and fp16 runs on the goldens: test logits apart by up to 1.1e-3 (coop) and 2.8e-2 "
     "(coop_words) of the largest logit, the learned context's update by 0.23-0.38 %, test predictions "
     "by 10 % and 3 % (near-ties of the tiny model)"),
    ("an fp16-trained CoOp is evaluated in fp32 (cosine logits of its prompts' fp16 text features and the "
     "cached image features), where CoOp evaluates its fp16 model",
     "on the fp16 goldens the logits are within 0.06 (largest 41) and 0.13 (largest 13) of CoOp's fp16 "
     "logits: 2 and 16 fp16 ulps"),
    ("class-specific context (CSC) and the middle/front class-token positions are not offered",
     "CoOp's few-shot results use the generic context with the class token at the end (M=16, end)"),
]


# ---------------------------------------------------------------------------------------- the official run
class _LRSchedulerTakingVerbose(torch.optim.lr_scheduler.LRScheduler):
    """torch's scheduler base as it was when Dassl was written: ``verbose`` as a third argument (since removed)."""

    def __init__(self, optimizer, last_epoch=-1, verbose=False):
        super().__init__(optimizer, last_epoch)


def _import_official(repo: Path, dassl: Path):
    """trainers.coop, CoOp's clip package and Dassl, imported from the snapshots (CoOp's clip, not the
    clip-anytorch the fixture uses: CoOp ships its own copy of clip/model.py)."""
    tensorboard = types.ModuleType("torch.utils.tensorboard")
    tensorboard.SummaryWriter = object
    tensorboard.__spec__ = importlib.machinery.ModuleSpec("torch.utils.tensorboard", None)
    sys.modules["torch.utils.tensorboard"] = tensorboard
    stub_modules(["gdown", "wilds", "sklearn", "sklearn.metrics", "pandas"], only_missing=True)
    for name in [m for m in sys.modules if m == "clip" or m.startswith("clip.")]:
        del sys.modules[name]
    sys.path[:0] = [str(repo), str(dassl)]
    schedulers = torch.optim.lr_scheduler
    saved, schedulers._LRScheduler = schedulers._LRScheduler, _LRSchedulerTakingVerbose
    try:  # dassl/optim/lr_scheduler.py subclasses _LRScheduler when imported
        coop = importlib.import_module("trainers.coop")
    finally:
        schedulers._LRScheduler = saved
    train = importlib.import_module("train")  # CoOp's train.py: extend_cfg
    return SimpleNamespace(coop=coop, train=train, clip=importlib.import_module("clip.clip"),
                           model=importlib.import_module("clip.model"),
                           config=importlib.import_module("dassl.config"),
                           engine=importlib.import_module("dassl.engine"),
                           utils=importlib.import_module("dassl.utils"))


def _config(off, repo: Path, variant: dict, prec: str, batch: int):
    """CoOp's train.py setup_cfg: Dassl defaults, extend_cfg, the trainer's config file, then overrides."""
    cfg = off.config.get_cfg_default()
    off.train.extend_cfg(cfg)
    cfg.merge_from_file(str(repo / CONFIG_FILE))
    cfg.merge_from_list(["OPTIM.MAX_EPOCH", EPOCHS, "DATALOADER.TRAIN_X.BATCH_SIZE", batch,
                         "INPUT.SIZE", (fixture.IMAGE_SIZE, fixture.IMAGE_SIZE), "SEED", SEED, "USE_CUDA", False,
                         "TRAINER.NAME", "CoOp", "TRAINER.COOP.PREC", prec,
                         "TRAINER.COOP.N_CTX", variant["N_CTX"], "TRAINER.COOP.CTX_INIT", variant["CTX_INIT"]])
    cfg.freeze()
    return cfg


def _trainer(off, cfg, clip_model):
    """CoOp's trainer as SimpleTrainer.__init__ makes it, minus the DataManager (see PATCHES)."""
    off.coop.load_clip_to_cpu = lambda _cfg: clip_model
    trainer = off.coop.CoOp.__new__(off.coop.CoOp)
    off.engine.TrainerBase.__init__(trainer)
    trainer.check_cfg(cfg)
    trainer.device = torch.device("cpu")
    trainer.start_epoch = trainer.epoch = 0
    trainer.max_epoch = cfg.OPTIM.MAX_EPOCH
    trainer.output_dir = ""
    trainer.cfg = cfg
    trainer.dm = SimpleNamespace(dataset=SimpleNamespace(classnames=list(fixture.CLASSNAMES)))
    off.utils.set_random_seed(cfg.SEED)  # train.py, before build_trainer
    trainer.build_model()
    return trainer


def _run(off, repo: Path, variant: dict, dtype: torch.dtype, prec: str) -> dict[str, torch.Tensor]:
    """One official run in ``dtype`` and ``prec``: the inputs it drew or computed and everything in OUTPUTS."""
    transform = off.clip._transform(fixture.IMAGE_SIZE)
    train_images, train_labels = fixture.images("train")
    test_images, _ = fixture.images("test")
    train_pixels = torch.stack([transform(im) for im in train_images])
    test_pixels = torch.stack([transform(im) for im in test_images])
    state = fixture.tiny_state_dict(torch.float32)
    clip_model = off.model.build_model(state)  # fp16 weights, as from OpenAI's archive
    if dtype == torch.float64:
        clip_model = clip_model.double()
    cfg = _config(off, repo, variant, prec, batch=len(train_labels))
    trainer = _trainer(off, cfg, clip_model)
    model, learner = trainer.model, trainer.model.prompt_learner
    assert model.dtype == dtype, (model.dtype, dtype)
    out = {}
    with torch.no_grad():
        out["ctx_init"] = learner.ctx.detach().clone()
        with off.coop.autocast() if prec == "amp" else nullcontext():  # what forward_backward encodes
            out["train_features"] = model.image_encoder(train_pixels.type(model.dtype))
        out["test_features"] = model.image_encoder(test_pixels.type(model.dtype))
        out["init_text_features"] = model.text_encoder(learner(), model.tokenized_prompts)
        out["init_logits"] = model(test_pixels)
    trainer.train_loader_x = [{"img": train_pixels, "label": train_labels}]
    losses, lrs = [], []
    forward_backward = trainer.forward_backward

    def recorded(batch):
        lrs.append(trainer.get_current_lr())
        summary = forward_backward(batch)
        losses.append(summary["loss"])
        return summary

    trainer.forward_backward = recorded
    for trainer.epoch in range(trainer.max_epoch):  # TrainerBase.train's loop, without its hooks
        trainer.run_epoch()
    with torch.no_grad():
        out["ctx"] = learner.ctx.detach().clone()
        out["ctx_delta"] = out["ctx"] - out["ctx_init"]
        out["text_features"] = model.text_encoder(learner(), model.tokenized_prompts)
        out["logits"] = model(test_pixels)
        out["predictions"] = out["logits"].argmax(dim=1)
        out["new_text_features"] = _new_class_features(off, cfg, clip_model, learner)
    out["lrs"] = torch.tensor(lrs, dtype=torch.float64)
    out["losses"] = torch.tensor(losses, dtype=torch.float64)
    return out


@contextmanager
def _patched(off, dtype: torch.dtype, prec: str):
    """float64: LayerNorm in its input's dtype. amp: trainers/coop.py's torch.cuda.amp autocast and GradScaler
    (inactive without CUDA) replaced by torch's CPU autocast to fp16 and a CPU GradScaler, same defaults."""
    saved = off.coop.autocast, off.coop.GradScaler
    if prec == "amp":
        off.coop.autocast = lambda: torch.autocast("cpu", dtype=torch.float16)
        off.coop.GradScaler = lambda: torch.amp.GradScaler("cpu")
    try:
        with fixture.exact_layernorm(off.model.LayerNorm) if dtype == torch.float64 else nullcontext():
            yield
    finally:
        off.coop.autocast, off.coop.GradScaler = saved


def _new_class_features(off, cfg, clip_model, learner) -> torch.Tensor:
    """The text features of NEW_CLASSNAMES with the learned context, as CoOp's load_model gives them."""
    new = off.coop.PromptLearner(cfg, NEW_CLASSNAMES, clip_model)
    state = {k: v for k, v in learner.state_dict().items() if k not in ("token_prefix", "token_suffix")}
    new.load_state_dict(state, strict=False)
    return off.coop.TextEncoder(clip_model)(new(), new.tokenized_prompts)


def generate(repo: Path, dassl: Path | None = None) -> None:
    """Run CoOp's code from the snapshots and write the goldens ``coop`` and ``coop_words``."""
    if dassl is None:
        raise SystemExit("parity.coop: CoOp's trainer runs on Dassl; give --dassl DASSL_SNAPSHOT")
    repo, dassl = Path(repo), Path(dassl)
    torch.set_num_threads(1)  # as the test suite runs (tests/conftest.py): the same CPU reduction order
    off = _import_official(repo, dassl)
    _, train_labels = fixture.images("train")
    _, test_labels = fixture.images("test")
    for name, variant in VARIANTS.items():
        tensors = {"train_labels": train_labels, "test_labels": test_labels}
        for run, (dtype, prec) in RUNS.items():
            with _patched(off, dtype, prec):
                result = _run(off, repo, variant, dtype, prec)
            tensors.update({f"{run}/{k}": v for k, v in result.items()})
        meta = {
            "official": {**OFFICIAL, "commit": harness.commit_of(repo),
                         "also": {**DASSL, "commit": harness.commit_of(dassl)}},
            "what": OFFICIAL["what"],
            "outputs": OUTPUTS,
            "classnames": list(fixture.CLASSNAMES),
            "new_classnames": NEW_CLASSNAMES,
            "settings": {"config": CONFIG_FILE, "epochs": EPOCHS, "seed": SEED, "lr": 0.002, "momentum": 0.9,
                         "weight_decay": 5e-4, "warmup_epochs": 1, "warmup_lr": 1e-5,
                         "batch_size": len(train_labels), "n_ctx": variant["N_CTX"],
                         "ctx_init": variant["CTX_INIT"], "class_token_position": "end", "csc": False},
            "tolerance": TOLERANCE,
            "tolerance_by_output": TOLERANCE_BY_OUTPUT,
            "patches": PATCHES,
            "module": "coop",
            "float16": "float16/<key>: CoOp's default PREC on a CPU, amp/<key>: its amp path moved to the CPU; "
                       "tests/test_coop.py compares both",
            "tolerance_float16": {"rel_to_max": FLOAT16_REL_TO_MAX},
        }
        print(name, fixture.save_golden(name, tensors, meta))


# Measured on both goldens, on 1 thread (the suite's) and 2: float64 every output within 1.2e-13 (worst ratio to
# this tolerance 0.045); float32 within 1.2e-4 on the logits (|logit| up to 41; 12 SGD steps from a loss of 7
# amplify round-off) and 7e-6 elsewhere (worst ratio 0.3). Half precisions: tests/test_coop.py. Momentum 0.8,
# a 1 % larger lr, a doubled warm-up lr or no warm-up fail in both dtypes, a tenfold weight decay too (in fp32
# on the context only).
TOLERANCE = {"float64": {"atol": 1e-12, "rtol": 1e-10}, "float32": {"atol": 2e-5, "rtol": 3e-5}}
# The exported classifier (PromptClassifier) keeps its context and prompt features in float32, so the features
# it builds for new class names are float32 values whatever the dtype trained in (measured: 1.4e-7 off in fp64).
TOLERANCE_BY_OUTPUT: dict = {"new_text_features": {"float64": {"atol": 1e-6, "rtol": 1e-6}},
                             "logits": {"float32": {"atol": 2e-4, "rtol": 3e-5}},
                             "init_logits": {"float32": {"atol": 2e-4, "rtol": 3e-5}}}
FLOAT16_REL_TO_MAX = 16 * 2.0 ** -10  # 16 ulps of fp16 at each output's largest magnitude


# ------------------------------------------------------------------------------------------ taskres's side
def _backbone(dtype: torch.dtype):
    """The fixture's taskres backbone with its model in ``dtype`` (a copy: the cached one stays fp32)."""
    shared = fixture.tiny_backbone()
    if dtype == torch.float32:
        return shared
    backbone = copy.copy(shared)
    backbone.model = copy.deepcopy(shared.model).to(dtype)
    return backbone


def recompute(golden: dict[str, torch.Tensor], meta: dict, dtype: torch.dtype,
              precision: str = "fp32") -> dict[str, torch.Tensor]:
    """taskres's CoOp from the golden's inputs: the official starting context, image features, settings.

    ``precision`` is the CoOp parameter: "fp32" trains in the backbone's dtype (``dtype``); with ``dtype``
    float32, "fp16" trains in fp16 copies of its text encoder from the float16 run's inputs, and "amp" under
    CPU autocast from the amp run's (see StartingAt).
    """
    g = fixture.for_dtype(golden, dtype) if precision == "fp32" else for_run(golden, PRECISION_RUNS[precision])
    s = meta["settings"]
    backbone = _backbone(dtype)
    # the dataset's names, "_" included: CoOp's text recipe gives the prompt names (spaces, as PromptLearner)
    classnames, recipe = list(meta["classnames"]), CoOp.text_recipe
    ctx = FitContext(task_name="parity", classnames=classnames, templates=["a photo of a {}."],
                     text_classifier=torch.zeros(len(classnames), fixture.EMBED_DIM),
                     logit_scale=backbone.logit_scale, train=CachedViews(g["train_features"], g["train_labels"]),
                     shots=fixture.SHOTS, seed=s["seed"], backbone_identity=backbone.identity, backbone=backbone,
                     progress=False, prompt_classnames=recipe.prompt_names(classnames), text_recipe=recipe)
    params = CoOpParams(n_ctx=s["n_ctx"], ctx_init=s["ctx_init"], lr=s["lr"], epochs=s["epochs"],
                        batch_size=s["batch_size"], momentum=s["momentum"], weight_decay=s["weight_decay"],
                        warmup_epochs=s["warmup_epochs"], warmup_lr=s["warmup_lr"], precision=precision)
    method = StartingAt(params, start=g["ctx_init"])
    tower = training_tower(TextTower(backbone), precision)
    scale = logit_scale_tensor(ctx.logit_scale, tower.dtype, tower.device)
    test = g["test_features"].to(tower.dtype)
    out = {}
    with torch.no_grad():
        start = method.make_learner(tower, ctx, params)
        out["init_text_features"] = prompt_features(tower, start)
        out["init_logits"] = prompt_logits(tower, start, test, scale)
    classifier = method.fit(ctx)
    learner = method.learner
    new_names = list(meta["new_classnames"])
    new = replace(ctx, classnames=new_names, prompt_classnames=recipe.prompt_names(new_names))
    out["new_text_features"] = method.classifier_for_new_classes(classifier, new).base.to(tower.dtype)
    schedule = Schedule(params.lr, params.epochs, params.warmup_epochs, params.warmup_lr)
    with torch.no_grad():
        out["ctx"] = learner.ctx.detach().clone()
        out["ctx_delta"] = out["ctx"] - start.ctx
        out["text_features"] = prompt_features(tower, learner)
        out["logits"] = prompt_logits(tower, learner, test, scale)
        out["predictions"] = out["logits"].argmax(dim=1)
    out["lrs"] = torch.tensor([schedule.lr_at(e) for e in range(params.epochs)], dtype=torch.float64)
    out["losses"] = torch.tensor(classifier.meta.extra["loss_history"], dtype=torch.float64)
    return out


def for_run(golden: dict[str, torch.Tensor], run: str) -> dict[str, torch.Tensor]:
    """The golden's tensors of one official run (``float16`` too, which fixture.for_dtype does not know)."""
    out = {k: v for k, v in golden.items() if "/" not in k}
    out.update({k[len(run) + 1:]: v for k, v in golden.items() if k.startswith(run + "/")})
    return out


PRECISION_RUNS = {"fp16": "float16", "amp": "amp"}  # taskres's precision -> the official run it is held to


class StartingAt(CoOp):
    """taskres's CoOp whose context starts at the official run's draw (and keeps its learner to read).

    ``amp`` stays amp on the CPU here: taskres (like CoOp, whose autocast is CUDA's) trains fp32 there, and
    the check runs the autocast path on the CPU against CoOp's path moved there."""

    def resolved_params(self, ctx):
        params = super().resolved_params(ctx)
        return replace(params, precision="amp") if self.params.precision == "amp" else params

    def __init__(self, params: CoOpParams, start: torch.Tensor):
        super().__init__(params)
        self.start = start
        self.learner = None

    def make_learner(self, tower, ctx, params):
        learner = super().make_learner(tower, ctx, params)
        with torch.no_grad():
            learner.ctx.copy_(self.start.to(learner.ctx.dtype))
        self.learner = learner
        return learner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m parity.coop", description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a snapshot of KaiyangZhou/CoOp")
    parser.add_argument("--dassl", type=Path, required=True, help="a snapshot of KaiyangZhou/Dassl.pytorch")
    args = parser.parse_args(argv)
    generate(args.repo, args.dassl)


if __name__ == "__main__":
    main()
