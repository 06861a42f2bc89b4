"""CLAP against its authors' code: the release's ADAPTER trainer (ZS init, l2 constraint) on the fixture's features.

``python -m parity.clap --repo /path/to/CLAP --dassl /path/to/Dassl.pytorch`` builds the release's trainer
(``ADAPTER.build_model``: its text prototypes from the tiny CLIP, Dassl's SGD and warm-up + cosine
scheduler from configs/trainers/SGD_lr1e-1_B256_ep300.yaml) and runs its ``train`` for EPOCHS epochs on the
fixture's cached views (every view a sample; 60 samples < 256: one full batch an epoch, as its
``run_epoch`` takes for fewer than 256 images), in float64 and float32, for the paper's CLAP (constraint
``l2``), the multipliers' outer step (``l2-adaptative``) and ZS-LP (``none``). It saves the text prototypes,
the multipliers, the learning rate of each epoch, the prototypes after the last epoch and the test logits.
``recompute`` gives the same inputs to ``taskres.methods.clap``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import _stats_harness as harness
from . import fixture

NAME = "clap"
OFFICIAL = {
    "repo": "jusiro/CLAP",
    "files": ["trainers/adapters.py", "train.py", "configs/trainers/SGD_lr1e-1_B256_ep300.yaml",
              "KaiyangZhou/Dassl.pytorch: dassl/optim/optimizer.py, dassl/optim/lr_scheduler.py, "
              "dassl/engine/trainer.py"],
    "what": "CLAP / ZS-LP: text prototypes, multipliers, lr per epoch, prototypes after 6 epochs (l2, l2-adaptative, "
            "none), test logits",
}
DASSL_REPO = "KaiyangZhou/Dassl.pytorch"
EPOCHS = 6  # one warm-up epoch at 1e-5, then 5 cosine epochs (MAX_EPOCH 300 in the release's config)
SEED = 1
DATASET = "UCF101"  # CUSTOM_TEMPLATES["UCF101"]: its template suits the fixture's UCF101-style "_" names
CONFIG = "configs/trainers/SGD_lr1e-1_B256_ep300.yaml"
CONSTRAINTS = {"l2": "", "l2-adaptative": "adaptive_", "none": "zslp_"}  # release name -> output key prefix
PATCHES = [
    ("labels_one_hot.to(torch.float32)", "labels_one_hot.to(logits_ds.dtype)",
     "trainers/adapters.py init_lagrangian_multipliers: the one-hot in the logits' dtype (float32 in the "
     "release, where logits are float32; a float64 matmul needs both alike)"),
    ("self.model.to(self.device)\n        self.model = self.model.float()\n        # NOTE: only give adapter",
     "self.model.to(self.device)\n        self.model = self.model.to(PARITY_DTYPE)\n        # NOTE: only give adapter",
     "trainers/adapters.py build_model: the model in the run's dtype (PARITY_DTYPE: float32 as released, or "
     "float64), not .float()"),
]
# torch >= 2.7 dropped _LRScheduler's ``verbose`` argument, which Dassl passes on (always False)
DASSL_VERBOSE = ("super().__init__(optimizer, last_epoch, verbose)", "super().__init__(optimizer, last_epoch)",
                 "Dassl dassl/optim/lr_scheduler.py: _BaseWarmupScheduler no longer passes verbose=False to "
                 "torch's _LRScheduler (removed from recent torch)")
DEVIATIONS = [
    ("CLAP: each epoch's shuffle is torch's (seeded by the run), the release's is numpy's global np.random",
     "no effect on what is learned from fewer than 256 training images (one batch holds every sample, the "
     "order only moves round-off: 1e-15 in float64 on the golden); with more, the batches differ as any reseed"),
    ("CLAP: the samples are the --views cached views (default 10); the release encodes 20 augmented passes "
     "(AdapterMethod.epochs_aumentation)",
     "--views 20 gives the release's count; the effect of 10 against 20 needs real images and is not measured "
     "here"),
]


def import_release(root: Path, dassl: Path):
    """The release's patched ``trainers.adapters`` and its ``train.py`` (for extend_cfg), with Dassl."""
    for name, attrs in (("torch.utils.tensorboard", ("SummaryWriter",)), ("wilds", ("get_dataset",))):
        try:  # only Dassl's writer and its WILDS datasets use these; neither runs here
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            for attr in attrs:
                setattr(stub, attr, None)
            sys.modules[name] = stub
    harness.on_path(dassl, ("dassl",))
    harness.load("dassl.optim.lr_scheduler", dassl / "dassl" / "optim" / "lr_scheduler.py", [DASSL_VERBOSE])
    harness.on_path(root, ("clip", "datasets", "trainers"))
    clip = __import__("clip")
    harness.package("trainers", root / "trainers")
    adapters = harness.load("trainers.adapters", root / "trainers" / "adapters.py", PATCHES)
    train = harness.load("release_train", root / "train.py")
    return clip, adapters, train


def release_cfg(root: Path, train, constraint: str):
    from dassl.config import get_cfg_default

    cfg = get_cfg_default()
    train.extend_cfg(cfg)
    cfg.merge_from_file(str(root / CONFIG))
    cfg.merge_from_list(["DATASET.NAME", DATASET, "OPTIM.MAX_EPOCH", EPOCHS, "SEED", SEED, "USE_CUDA", False,
                         "TRAINER.ADAPTER.INIT", "ZS", "TRAINER.ADAPTER.CONSTRAINT", constraint])
    return cfg


class Identity(torch.nn.Module):
    """The image encoder: the fixture's features are the 'images'."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images


def run_release(root: Path, clip, adapters, train, dtype: torch.dtype, constraint: str, inputs: dict) -> dict:
    from dassl.engine.trainer import TrainerBase

    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
    adapters.PARITY_DTYPE = dtype
    adapters.load_clip_to_cpu = lambda cfg: clip.model.build_model(fixture.tiny_state_dict(torch.float32)).to(dtype)
    trainer = adapters.ADAPTER.__new__(adapters.ADAPTER)
    TrainerBase.__init__(trainer)
    trainer.cfg = release_cfg(root, train, constraint)
    trainer.device = torch.device("cpu")
    trainer.dm = types.SimpleNamespace(dataset=types.SimpleNamespace(classnames=list(fixture.CLASSNAMES)))
    trainer.start_epoch, trainer.max_epoch = 0, EPOCHS
    with harness.cpu_only(), fixture.exact_layernorm(clip.model.LayerNorm):
        trainer.build_model()
    trainer.model.image_encoder = Identity()
    views, labels = cast["train_views"], cast["train_labels"]
    samples = views.reshape(-1, views.shape[-1])  # rep-major, as extract_features concatenates its reps
    sample_labels = labels.repeat(len(views))

    def extract_features(partition, reps=1, transforms=False):
        feats, labs = (samples, sample_labels) if partition == "train" else (cast["test"], cast["test_labels"])
        with torch.no_grad():
            logits, features = trainer.model(feats, return_features=True)
        return labs, logits, features

    lrs = []
    trainer.extract_features = extract_features
    trainer.train_loader_x = OneBatch(trainer.cfg.DATALOADER.TRAIN_X.BATCH_SIZE)
    trainer.before_train = lambda: setattr(trainer, "time_start", time.time())
    trainer.before_epoch = lambda: lrs.append(trainer.get_current_lr())
    trainer.after_epoch = lambda: None
    trainer.after_train = lambda: None
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    with harness.cpu_only(), open(os.devnull, "w") as quiet:
        saved, sys.stdout = sys.stdout, quiet
        try:
            trainer.train()
        finally:
            sys.stdout = saved
    adapter = trainer.model.adapter
    with torch.no_grad():
        test_logits = trainer.model.forward_features(cast["test"])
    return {"multipliers": adapter.alpha_constraint.detach().clone(), "lr": torch.tensor(lrs, dtype=torch.float64),
            "prototypes": adapter.prototypes.detach().clone(), "test_logits": test_logits.detach().clone(),
            "text": adapter.base_text_features.detach().clone(),
            "logit_scale": trainer.model.logit_scale.detach().double().clone()}


class OneBatch:
    """len() of the image loader: one batch for fewer images than the batch size (no drop_last then)."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def __len__(self) -> int:
        return 1


def generate(repo: Path, dassl: Path | None = None) -> None:
    if dassl is None:
        raise SystemExit(f"parity.clap needs --dassl: a snapshot of {DASSL_REPO} (the release trains with it)")
    fixture.tiny_state_dict()  # the fixture's weights, made by clip-anytorch before the release's clip shadows it
    root, dassl_root = harness.checkout(repo), harness.checkout(dassl)
    commits = {OFFICIAL["repo"]: harness.commit_of(root), DASSL_REPO: harness.commit_of(dassl_root)}
    clip, adapters, train = import_release(root, dassl_root)
    feats = harness.overlapping_features()
    inputs = {k: feats[k] for k in ("train_views", "train_labels", "test", "test_labels")}
    tensors, outputs = dict(inputs), []
    for name, dtype in fixture.DTYPES.items():
        for constraint, prefix in CONSTRAINTS.items():
            run = run_release(root, clip, adapters, train, dtype, constraint, inputs)
            if not prefix:  # the inputs that every run shares
                tensors[f"{name}/text"] = run["text"]
                tensors[f"{name}/logit_scale"] = run["logit_scale"]
            for key in ("multipliers", "lr", "prototypes", "test_logits"):
                tensors[f"{name}/{prefix}{key}"] = run[key]
            if not prefix:  # what CLAP.fit's exported classifier must give
                tensors[f"{name}/fit_test_logits"] = run["test_logits"].clone()
        outputs = [k.split("/", 1)[1] for k in tensors if k.startswith(f"{name}/") and
                   k.split("/", 1)[1] not in ("text", "logit_scale")]
    meta = {
        "official": {**OFFICIAL, "commit": commits[OFFICIAL["repo"]], "dassl_commit": commits[DASSL_REPO]},
        "what": OFFICIAL["what"],
        "outputs": outputs,
        "tolerance": {"float64": {"atol": 1e-10, "rtol": 1e-10}, "float32": {"atol": 2e-5, "rtol": 2e-5}},
        # the exported classifier is float32 by design (LinearClassifier keeps float32 buffers)
        "tolerance_by_output": {"fit_test_logits": {"float64": {"atol": 1e-4, "rtol": 1e-5},
                                                    "float32": {"atol": 1e-4, "rtol": 1e-5}}},
        "patches": [harness.CPU_PATCH, *(why for _, _, why in PATCHES), DASSL_VERBOSE[2],
                    "train() runs as released; its extract_features returns the fixture's views through "
                    "CustomCLIP.forward with the image encoder replaced by the identity (every view a sample, "
                    "20 augmented reps in the release, 3 views here); before_train/after_epoch/after_train "
                    "(log files, checkpoints, test evaluation) do nothing; len(train_loader_x) = 1 (fewer images "
                    "than the batch of 256)",
                    f"config {CONFIG} with MAX_EPOCH {EPOCHS}, DATASET.NAME {DATASET}; load_clip_to_cpu gives "
                    "the tiny CLIP in the run's dtype (OpenAI's build_model makes it fp16, so the release encodes "
                    "its text prototypes in fp16: they are an input here); torch.utils.tensorboard and wilds "
                    "stubbed where not installed",
                    "float64 run: the repository's CLIP in float64 with fixture.exact_layernorm"],
        "epochs": EPOCHS, "seed": SEED,
    }
    path = fixture.save_golden(NAME, tensors, meta)
    print(f"wrote {path}")


# -------------------------------------------------------------------------------------------- taskres's
def recompute(golden: dict[str, torch.Tensor], meta: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from taskres.methods.clap import CLAPParams, clap_train, image_loader_batches
    from taskres.methods.kit.training import Schedule

    g = fixture.for_dtype(golden, dtype)
    views = g["train_views"].to(dtype)
    v, n, d = views.shape
    x = F.normalize(views.reshape(v * n, d), dim=-1)
    y = g["train_labels"].repeat(v)
    text = g["text"].to(dtype)
    # the temperature computed in the run's dtype, as the release's logit_scale.exp() (float32 in taskres's fit)
    scale = float(g["logit_scale"].to(dtype).exp())
    test = F.normalize(g["test"].to(dtype), dim=-1)
    out = {}
    for constraint, prefix in CONSTRAINTS.items():
        params = CLAPParams(epochs=int(meta["epochs"]), constraint="none" if constraint == "none" else "l2",
                            multipliers="adaptive" if "adaptative" in constraint else "fixed")
        fit = clap_train(x, y, text, scale, params, image_loader_batches(n, params.batch_size),
                         torch.Generator().manual_seed(int(meta["seed"])))
        schedule = Schedule(params.lr, params.epochs, params.warmup_epochs, params.warmup_lr)
        out[f"{prefix}multipliers"] = fit.multipliers
        out[f"{prefix}lr"] = torch.tensor([schedule.lr_at(e) for e in range(params.epochs)], dtype=torch.float64)
        out[f"{prefix}prototypes"] = fit.prototypes
        out[f"{prefix}test_logits"] = scale * test @ F.normalize(fit.prototypes, dim=-1).t()
    out["fit_test_logits"] = fit_test_logits(g, int(meta["epochs"]), int(meta["seed"]))
    return out


def fit_test_logits(g: dict, epochs: int, seed: int) -> torch.Tensor:
    """CLAP's own ``fit`` (every cached view a sample, no val split) on the test set."""
    from taskres.methods.clap import CLAP, CLAPParams

    return harness.fit_test_logits(CLAP(CLAPParams(epochs=epochs)), g, g["train_views"], float(g["logit_scale"]), seed,
                                   with_val=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a snapshot of " + OFFICIAL["repo"])
    parser.add_argument("--dassl", type=Path, required=True, help="a snapshot of " + DASSL_REPO)
    args = parser.parse_args()
    generate(args.repo, args.dassl)


if __name__ == "__main__":
    main()
