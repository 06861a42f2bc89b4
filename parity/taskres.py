"""TaskRes against its authors' code: geekyutao/TaskRes's trainer on Dassl, run on the parity fixture.

``generate`` imports the release's own ``trainers/taskres.py`` (``TaskRes`` trainer, ``CustomCLIP``,
``TaskResLearner``) and Dassl's ``TrainerX.run_epoch``, optimiser and scheduler, and runs them on the fixture's
tiny CLIP and cached features in float64 and float32 for a few full-batch epochs of the release's RN50 config
(``adam_lr2e-3_B256_ep100.yaml``, alpha 0.5, UCF101's template, the raw class names). Saved: the base text
classifier t, the loss and learning rate of every epoch, the final residual x and the test logits.

``recompute`` gives the same keys from taskres: t through ``taskres.backbone`` (which encodes in fp32), the
training in float32 through ``TaskRes.fit`` itself (the fused CPU kernels where numba is installed), and in
float64 through the pieces ``fit`` wires together (``ResidualGradient``, ``train_loop``, ``Schedule``, the
normalised cached views and ``taskres_logits``), because ``fit`` and its classifier hold float32 only.

    python -m parity.taskres --repo /path/to/geekyutao/TaskRes --dassl /path/to/KaiyangZhou/Dassl.pytorch
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import types
from pathlib import Path

import torch

from parity import _stats_harness as harness
from parity import fixture

OFFICIAL = {
    "repo": "geekyutao/TaskRes",
    "files": ["trainers/taskres.py", "train.py (extend_cfg)", "clip/model.py",
              "configs/trainers/TaskRes/adam_lr2e-3_B256_ep100.yaml",
              "KaiyangZhou/Dassl.pytorch: dassl/engine/trainer.py (TrainerX.run_epoch), dassl/optim/*"],
    "what": "base text classifier t (taskres encodes it in fp32), loss, lr and residual x of every epoch, test "
            "logits after 6 full-batch epochs",
}
CONFIG = "configs/trainers/TaskRes/adam_lr2e-3_B256_ep100.yaml"  # the release's RN50 config (1-4 shots)
DATASET = "UCF101"  # the release's CUSTOM_TEMPLATES key: "a photo of a person doing {}."
TASKRES_DATASET = "ucf101"  # the same dataset in taskres.datasets
ALPHA = 0.5  # scripts/taskres/main.sh SCALE for every dataset but Oxford Flowers
EPOCHS = 6  # MAX_EPOCH, cut from 100 so the golden stays small; warm-up and cosine follow it as in the release
SEED = 1
PATCHES = [
    "load_clip_to_cpu returns clip.build_model(the fixture's tiny state dict) instead of downloading RN50",
    "torch.Tensor.cuda and nn.Module.cuda return self (the release calls .cuda() to build t)",
    "the image encoder is nn.Identity: the fixture's cached feature views are fed as the images' encodings; "
    "each epoch's batch holds one view per image, the view and the order taskres's CachedViews and train_loop "
    "draw for the seed (the release draws a fresh augmentation; see DEVIATIONS)",
    "float64 run: nn.Module.float converts to float64 (the trainer calls .float() twice) and clip.model.LayerNorm "
    "keeps its input's dtype (fixture.exact_layernorm)",
    "torch.optim.lr_scheduler.LRScheduler.__init__ drops the positional verbose that Dassl passes (torch 2.14 "
    "no longer takes it; it only printed)",
    "PREC fp32 (the release's default fp16 needs a GPU); OPTIM.MAX_EPOCH = 6; no data manager: the trainer is "
    "built with TrainerBase.__init__, its dm holds the class names, train_loader_x one full batch per epoch",
]
# What stays different on purpose, with its effect (parity/report.py writes these into PARITY.md).
DEVIATIONS = [
    ("TaskRes trains on cached augmented views (--regime cached, the default): each epoch an image shows one of "
     "V = 10 views encoded once, where the release encodes a fresh RandomResizedCrop + flip at every step; "
     "--regime online does as the release",
     "the same update on the same features (the taskres golden); accuracy, BENCHMARKS.md 'Cached augmented views "
     "vs fresh augmentation' (TaskRes, 16 shots, seeds 1-3, taskres-mini): K = 10 cached 69.79 +- 0.90 vs online "
     "70.10 +- 1.03 (mini-shapes), 79.42 +- 0.12 vs 79.50 +- 0.41 (mini-colours), for 1/20 of the encoder passes"),
    ("TaskRes encodes t in fp32; the release's default TRAINER.TaskRes.PREC fp16 encodes the prompts in fp16 on "
     "a GPU (then trains in fp32)",
     "on the fixture (the tiny CLIP through clip's convert_weights, as build_model leaves it, fp16 kernels on a CPU): "
     "t moves by 9e-4 relative (cosine >= 0.9999996), the TaskRes test logits after the golden's 6 epochs by at "
     "most 0.038 (scale 100), no prediction changes"),
]

# fp64: measured 6e-17 (residual), 7e-15 (logits), 2e-15 (loss). fp32: the release's fp32 run against fit's fused
# fp32 kernels, measured 3e-8 (residual entries up to 7e-3), 1.2e-6 (loss near 3.5); a 1 % change of alpha moves
# the residual by 4e-6 and a tenfold weight decay by 1.6e-6, both caught.
TOLERANCE = {"float64": {"atol": 1e-12, "rtol": 1e-10}, "float32": {"atol": 1e-6, "rtol": 1e-5}}
# t comes from taskres's fp32 text encoder in both dtypes (Backbone.encode_texts), the release's from its own
# encoder in the run's dtype: fp32 round-off of features whose entries reach about 3.
TOLERANCE_BY_OUTPUT = {"base": {"float64": {"atol": 1e-5, "rtol": 0}, "float32": {"atol": 1e-5, "rtol": 0}}}
OUTPUTS = ["base", "loss", "lr", "residual", "residual_epochs", "test_logits"]


# ------------------------------------------------------------------------------------- the official run
@functools.lru_cache(maxsize=1)  # once per process: Dassl's registry refuses a second registration
def _import_official(repo: Path, dassl: Path):
    """The release's trainer module and train.py, with Dassl, from the snapshots (never from this repository)."""
    for name in [m for m in sys.modules if m == "clip" or m.startswith(("clip.", "trainers", "datasets"))]:
        del sys.modules[name]  # clip-anytorch may be loaded: the release's own clip/ must be the one used
    sys.path[:0] = [str(repo), str(dassl)]
    sys.modules.setdefault("wilds", types.ModuleType("wilds"))  # Dassl's WILDS datasets import it; unused here
    sys.modules["wilds"].get_dataset = None
    import train as official_train  # noqa: PLC0415 - the release's train.py: extend_cfg and its registrations
    from trainers import taskres as official  # noqa: PLC0415

    official_train.args = types.SimpleNamespace(enhanced_base="none")  # extend_cfg reads the CLI's args
    return official_train, official


def _config(official_train, repo: Path):
    from dassl.config import get_cfg_default

    cfg = get_cfg_default()
    official_train.extend_cfg(cfg)
    cfg.merge_from_file(str(repo / CONFIG))
    cfg.DATASET.NAME = DATASET
    cfg.OPTIM.MAX_EPOCH = EPOCHS
    cfg.TRAINER.NAME = "TaskRes"
    cfg.TRAINER.TaskRes.RESIDUAL_SCALE = ALPHA
    cfg.TRAINER.TaskRes.PREC = "fp32"
    cfg.USE_CUDA = False
    cfg.SEED = SEED
    return cfg


@contextlib.contextmanager
def _patched(official, dtype: torch.dtype, state: dict):
    scheduler_init = torch.optim.lr_scheduler.LRScheduler.__init__
    saved = (official.load_clip_to_cpu, torch.Tensor.cuda, torch.nn.Module.cuda, torch.nn.Module.float)
    official.load_clip_to_cpu = lambda cfg: official.clip.build_model(dict(state))
    # Dassl passes LRScheduler a positional ``verbose`` that torch 2.14 no longer takes (it only printed)
    torch.optim.lr_scheduler.LRScheduler.__init__ = lambda self, opt, last_epoch=-1, *verbose: scheduler_init(
        self, opt, last_epoch)
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    if dtype == torch.float64:
        torch.nn.Module.float = lambda self: self.to(torch.float64)
    from clip import model as clip_model  # the release's clip/model.py (sys.path)

    layer_norm = fixture.exact_layernorm(clip_model.LayerNorm) if dtype == torch.float64 else contextlib.nullcontext()
    try:
        with layer_norm:
            yield
    finally:
        official.load_clip_to_cpu, torch.Tensor.cuda, torch.nn.Module.cuda, torch.nn.Module.float = saved
        torch.optim.lr_scheduler.LRScheduler.__init__ = scheduler_init


def _epoch_batches(views: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Each epoch's one full batch: the view taskres's CachedViews shows, in train_loop's random order."""
    from taskres.features.views import CachedViews
    from taskres.methods.kit.training import epoch_batches

    source = CachedViews(views, labels, seed=SEED)
    gen = torch.Generator().manual_seed(SEED)
    batches = []
    for epoch in range(EPOCHS):
        (idx,) = epoch_batches(len(labels), 256, gen)  # N < 256: one batch of all images, in a random order
        batches.append({"img": source.features(idx, epoch), "label": labels[idx]})
    return batches


def run_official(repo: Path, dassl: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The release's trainer on the fixture in ``dtype``: what it computes, as tensors."""
    state = fixture.tiny_state_dict(torch.float32)  # before the release's clip/ shadows clip-anytorch
    official_train, official = _import_official(repo, dassl)
    from dassl.engine.trainer import TrainerBase
    cfg = _config(official_train, repo)
    torch.manual_seed(SEED)
    feats = fixture.features(dtype)
    with _patched(official, dtype, state):
        trainer = official.TaskRes.__new__(official.TaskRes)
        TrainerBase.__init__(trainer)
        trainer.cfg, trainer.device = cfg, torch.device("cpu")
        trainer.start_epoch = trainer.epoch = 0
        trainer.max_epoch, trainer.output_dir = cfg.OPTIM.MAX_EPOCH, "."
        trainer.dm = types.SimpleNamespace(dataset=types.SimpleNamespace(classnames=list(fixture.CLASSNAMES)))
        trainer.build_model()
        trainer.model.image_encoder = torch.nn.Identity()
        learner = trainer.model.prompt_learner
        assert learner.text_feature_residuals.dtype == dtype, learner.text_feature_residuals.dtype
        losses, lrs, residuals = [], [], []
        step = trainer.forward_backward
        trainer.forward_backward = lambda batch: losses.append(step(batch)["loss"]) or {"loss": losses[-1]}
        for trainer.epoch, batch in enumerate(_epoch_batches(feats["train_views"], feats["train_labels"])):
            trainer.train_loader_x = [batch]
            lrs.append(trainer.get_current_lr())
            trainer.run_epoch()  # Dassl's TrainerX: forward_backward, the scheduler steps after the last batch
            residuals.append(learner.text_feature_residuals.detach().clone())
        trainer.set_model_mode("eval")
        with torch.no_grad():
            logits = trainer.model(feats["test"])
    return {"base": learner.base_text_features.detach().clone(), "loss": torch.tensor(losses, dtype=torch.float64),
            "lr": torch.tensor(lrs, dtype=torch.float64), "residual": learner.text_feature_residuals.detach().clone(),
            "residual_epochs": torch.stack(residuals), "test_logits": logits.detach().clone()}


def generate(repo: Path, dassl: Path | None = None) -> None:
    """Run the release in float64 and float32 and save the golden ``taskres``."""
    if dassl is None:
        raise SystemExit("--dassl: the path of a KaiyangZhou/Dassl.pytorch snapshot is needed")
    tensors = {}
    for name, dtype in fixture.DTYPES.items():
        tensors.update({f"{name}/{k}": v for k, v in run_official(repo, dassl, dtype).items()})
    feats = fixture.features(torch.float64)
    tensors.update({"train_views": feats["train_views"], "train_labels": feats["train_labels"],
                    "test": feats["test"], "logit_scale": fixture.tiny_state_dict(torch.float64)["logit_scale"]})
    meta = {"official": {**OFFICIAL, "commit": harness.commit_of(repo), "dassl_commit": harness.commit_of(dassl)},
            "what": OFFICIAL["what"], "patches": PATCHES, "outputs": OUTPUTS, "tolerance": TOLERANCE,
            "tolerance_by_output": TOLERANCE_BY_OUTPUT, "classnames": list(fixture.CLASSNAMES),
            "dataset": TASKRES_DATASET, "alpha": ALPHA, "lr": 2e-3, "epochs": EPOCHS, "seed": SEED}
    print(fixture.save_golden("taskres", tensors, meta))
    print(fp16_base_effect(tensors, meta))  # the number in DEVIATIONS


def fp16_base_effect(golden: dict[str, torch.Tensor], meta: dict) -> str:
    """What the release's default PREC fp16 does to t and to TaskRes's result, on the fixture.

    clip-anytorch's convert_weights makes the tiny CLIP what build_model leaves (fp16 linear layers and
    projections, LayerNorm in fp32), run with a CPU's fp16 kernels; taskres then trains from each t in fp64.
    """
    import clip
    from clip.model import convert_weights

    tokens = clip.tokenize([_template(meta["dataset"]).format(name) for name in meta["classnames"]])
    half = fixture.tiny_clip(torch.float32)
    convert_weights(half)
    with torch.no_grad():
        t32 = fixture.tiny_clip(torch.float32).encode_text(tokens).double()
        t16 = half.encode_text(tokens).double()
    logits = [recompute({**golden, "float64/base": base}, meta, torch.float64)["test_logits"] for base in (t32, t16)]
    rel = float(((t16 - t32).norm(dim=1) / t32.norm(dim=1)).max())
    changed = int((logits[0].argmax(1) != logits[1].argmax(1)).sum())
    return (f"fp16 t: {rel:.2g} relative, cosine >= {float(torch.cosine_similarity(t16, t32).min()):.7f}; test logits "
            f"{float((logits[0] - logits[1]).abs().max()):.2g} apart, {changed} predictions changed")


# ----------------------------------------------------------------------------------- taskres's answer
def _template(dataset: str) -> str:
    from taskres.datasets.coop import SPLIT_JSON_DATASETS

    return SPLIT_JSON_DATASETS[dataset][3]


def recompute(golden: dict[str, torch.Tensor], meta: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The golden's outputs from taskres in ``dtype``, trained from the release's t (so t and training are
    checked apart)."""
    backbone = fixture.tiny_backbone()
    base = backbone.text_classifier(meta["classnames"], [_template(meta["dataset"])])  # raw names, as the release
    official_base = fixture.for_dtype(golden, dtype)["base"].to(dtype)
    views, labels = golden["train_views"].to(dtype), golden["train_labels"]
    logit_scale = float(golden["logit_scale"])
    train = _fit_fp64 if dtype == torch.float64 else _fit_fp32
    residual, losses, lrs, epochs = train(meta, official_base, views, labels, logit_scale)
    from taskres.methods.taskres import taskres_logits

    logits = taskres_logits(golden["test"].to(dtype), official_base, residual.to(dtype), meta["alpha"], logit_scale)
    return {"base": base, "loss": torch.tensor(losses, dtype=torch.float64),
            "lr": torch.tensor(lrs, dtype=torch.float64), "residual": residual, "residual_epochs": torch.stack(epochs),
            "test_logits": logits}


def _fit_fp32(meta, base, views, labels, logit_scale):
    """``TaskRes.fit`` as a user runs it (FitContext over cached views), float32; x read after every step."""
    import taskres.methods.taskres as mt
    from taskres.features.views import CachedViews
    from taskres.methods.base import FitContext

    ctx = FitContext(task_name=meta["dataset"], classnames=list(meta["classnames"]),
                     templates=[_template(meta["dataset"])], text_classifier=base, logit_scale=logit_scale,
                     train=CachedViews(views, labels, seed=meta["seed"]), shots=fixture.SHOTS, seed=meta["seed"],
                     backbone_identity={"model": "RN50"}, progress=False)
    lrs, epochs = [], []
    train_loop = mt.train_loop

    def watched(step, *args, on_step=None, **kwargs):  # fit's step updates x, its ``param``, in place
        def record(epoch, step_index, lr, loss):
            lrs.append(lr)
            epochs.append(step.param.detach().clone())  # one full batch: one step per epoch
        return train_loop(step, *args, on_step=record, **kwargs)

    params = mt.TaskResParams(alpha=meta["alpha"], lr=meta["lr"], epochs=meta["epochs"])
    mt.train_loop = watched
    try:
        classifier = mt.TaskRes(params).fit(ctx)
    finally:
        mt.train_loop = train_loop
    return classifier.residual, classifier.meta.extra["loss_history"], lrs, epochs


def _fit_fp64(meta, base, views, labels, logit_scale):
    """What ``TaskRes.fit`` wires together, in float64 (fit and its classifier are float32)."""
    from taskres.classifier import logit_scale_exp
    from taskres.features.views import CachedViews
    from taskres.methods.taskres import ResidualGradient, TaskResParams, NormalisedSource
    from taskres.methods.kit.training import ClosedFormStep, Schedule, train_loop

    params = TaskResParams(alpha=meta["alpha"], lr=meta["lr"], epochs=meta["epochs"])
    residual = torch.nn.Parameter(torch.zeros_like(base))
    step = ResidualGradient(base, params.alpha, logit_scale_exp(logit_scale))
    source = NormalisedSource(CachedViews(views, labels, seed=meta["seed"]), torch.float64, torch.device("cpu"))
    lrs, epochs = [], []

    def record(epoch, step_index, lr, loss):
        lrs.append(lr)
        epochs.append(residual.detach().clone())

    schedule = Schedule(params.lr, params.epochs, params.warmup_epochs, params.warmup_lr)
    closed_form = ClosedFormStep(residual, lambda f, y: step(f, y, residual.detach()), schedule.lr_at(0),
                                 params.weight_decay)
    losses = train_loop(closed_form, source, schedule, batch_size=params.batch_size, seed=meta["seed"],
                        progress=False, on_step=record)
    return residual.detach(), losses, lrs, epochs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a geekyutao/TaskRes snapshot (git work tree)")
    parser.add_argument("--dassl", type=Path, required=True, help="a KaiyangZhou/Dassl.pytorch snapshot")
    args = parser.parse_args(argv)
    generate(args.repo.resolve(), args.dassl.resolve())


if __name__ == "__main__":
    main()
