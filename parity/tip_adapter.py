"""Tip-Adapter and Tip-Adapter-F against the authors' release (gaopengcuhk/Tip-Adapter), on the fixture's features.

``python -m parity.tip_adapter --repo SNAPSHOT`` runs the release's own functions (main.py: run_tip_adapter,
run_tip_adapter_F; utils.py: clip_classifier, build_cache_model, pre_load_features, search_hp) in float64 and
float32 and saves what they compute; ``recompute`` gives the same inputs to taskres.methods.tip_adapter.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import sys
import types
import tempfile
from pathlib import Path

import torch

from . import fixture
from . import _stats_harness as harness
from ._adapters import EpochViews, FeatureLoader, epoch_permutations, stub_modules

OFFICIAL = {"repo": "gaopengcuhk/Tip-Adapter",
            "files": ["main.py", "utils.py", "configs/ucf101.yaml", "datasets/ucf101.py", "datasets/utils.py"],
            "what": "text classifier in, cache keys/values, training-free logits, the beta/alpha search, "
                    "Tip-Adapter-F's keys after a few AdamW epochs (partial last batch kept), its search and logits"}
NAME = "tip_adapter"
CONFIG = "ucf101"  # configs/ucf101.yaml: a dataset whose template and search ranges the run uses
EPOCHS = 4  # Tip-Adapter-F epochs (the release: 20); a few suffice to pin the optimiser and the schedule
# The release's loaders take 256 images; with the fixture's 20 images a batch of 8 gives 3 batches a epoch,
# the last one partial (4 images), which the release keeps (drop_last=False): issue 19's fix 2 shows here.
BATCH = 8
# The release's lr is 0.001; at 0.03 the val accuracy moves within 4 epochs (70, 90, 90, 90 %), so the epoch the
# release keeps (1) is neither the first nor the last, and the choice itself is compared.
LR = 0.03
SEED = 1
# fp32: the measured gap is 1.1e-5 (logits; 0.2 of what this allows); the bound still fails a 1 % lr
# (1e4 x over), AdamW's eps at 1e-8 (2e3 x), its weight decay at 0 (2e3 x) or a dropped partial batch
TOLERANCE = {"float64": {"atol": 1e-10, "rtol": 1e-10}, "float32": {"atol": 3e-5, "rtol": 1e-5}}
PATCHES = [
    "the image encoder is the identity on the fixture's cached features: clip_model.encode_image returns its "
    "input, and the loaders yield features (train_loader_cache: pass k shows view k of each image, in index "
    "order, batch 256, drop_last=False; train_loader_F: epoch e shows view e % V in the permutation taskres "
    "draws for epoch e (saved as batch_order), batch 8, drop_last=False as datasets/utils.py build_data_loader)",
    "Tensor.cuda() and Module.cuda() return their receiver (CPU run)",
    "float64 run: clip.model.LayerNorm keeps its input's dtype (OpenAI's casts to fp32); the model is the "
    "fixture's tiny CLIP (release's clip/model.py) in float64 or float32",
    "cache_values (one-hot, the release casts it to half) are cast to the run's dtype: exact, and a CPU matmul "
    "cannot mix half with float",
    "cfg: configs/ucf101.yaml with augment_epoch = V (3 views), train_epoch = 4, lr = 0.03, shots = 4, a "
    "temporary cache_dir",
    "run_tip_adapter_F's per-epoch model selection reads the val split where the release reads test (taskres "
    "never selects on test); its final search_hp reads val as in the release",
    "utils.cls_acc: float() of a one-element array fails under numpy 2; the same sum is taken with .item()",
    "outputs are captured by wrapping utils.cls_acc (the logits it scores), search_hp (its result) and "
    "F.cross_entropy (the losses) in main.py's namespace; the last epoch's keys are read from cache_keys, whose "
    "storage the adapter's Parameter shares; the best epoch's keys are read back from the file run_tip_adapter_F saves",
]
DEVIATIONS = [
    ("Tip-Adapter's zero-shot term uses the backbone's exp(logit_scale); the release writes 100. (main.py, "
     "utils.py search_hp). OpenAI's weights (and the fixture, rounded to fp16 as they are) hold 4.6055: 100.0299",
     "on the fixture, fed 100.0299 instead of 100: logits move by at most 0.0126, no prediction and no searched "
     "beta/alpha changes, Tip-Adapter-F's keys by 2e-6; recompute passes the release's 100 (log(100))"),
    ("Tip-Adapter-F keeps the epoch of best validation accuracy; the release picks it on the test set "
     "(main.py run_tip_adapter_F)", "intended: no method here sees test labels; the parity run gives the release "
     "val in place of test, and then the keys match"),
    ("Tip-Adapter's search reads --search-split (few-shot val by default; `full` = the release's val split); "
     "main_imagenet.py searches ImageNet's test set", "intended, as above; the golden runs both on the same val"),
    ("the release runs in fp16 on a GPU (clip.load's convert_weights: features, keys, text and Tip-Adapter-F's "
     "AdamW on fp16 keys; hence eps=1e-4); taskres in fp32",
     "the release run as in fp16 (CPU half kernels, LayerNorm in fp32) against taskres fp32 on the fixture: "
     "training-free logits 0.044 apart, same searched pair; -F's keys up to 0.11 apart, its searched alpha 2.71 "
     "against 2.855, test logits 0.6 apart; no test prediction changes (30 features)"),
    ("Tip-Adapter-F's figure: the release prints max(best epoch's test accuracy at the initial alpha/beta, the "
     "searched classifier's test accuracy) (main.py run_tip_adapter_F); taskres reports the classifier it returns",
     "intended (a choice made on test): the release's figure is never below the classifier it keeps"),
    ("Tip-Adapter-F trains on the cached views (each image one of V views an epoch); the release re-encodes a "
     "fresh crop of every image each epoch", "the cached-views regime, measured project-wide; in the golden both "
     "sides see view e % V in epoch e"),
    ("the release draws its shots with random.seed(1) in every run (main.py; its datasets/utils.py "
     "generate_fewshot_dataset is Dassl's, with repeat=True): one seed; taskres runs CoOp's seeds 1, 2, 3",
     "intended (the protocol's seeds); repeat=True differs only for a class with fewer images than shots"),
    ("the release's search_hp and epoch choice start from accuracy 0 with a strict '>': if every candidate scores "
     "0 it returns beta = alpha = 0 (and run_tip_adapter_F loads a file it never saved); taskres starts from -1 and "
     "keeps the first candidate", "only when nothing in val is classified right; not reached on the fixture"),
]


# --------------------------------------------------------------------------------------- the official run
def _load_release(repo: Path):
    stub_modules(["gdown"])  # datasets/utils.py imports it; nothing here downloads
    harness.on_path(repo, ("clip",))
    main = harness.load("tip_adapter_release_main", repo / "main.py")
    import yaml

    cfg = yaml.load((repo / "configs" / f"{CONFIG}.yaml").read_text(), Loader=yaml.Loader)
    template = importlib.import_module(f"datasets.{CONFIG}").template
    return main, cfg, template


def _run_release(repo: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    main, cfg, template = _load_release(repo)
    import clip.model

    feats = fixture.features(dtype)
    views, labels = feats["train_views"], feats["train_labels"]
    order = epoch_permutations(views.shape[1], EPOCHS, SEED)
    model = fixture.tiny_clip(dtype)
    model.encode_image = lambda images: images  # the loaders yield the fixture's features
    cfg.update(augment_epoch=views.shape[0], train_epoch=EPOCHS, lr=LR, shots=fixture.SHOTS, load_cache=False,
               load_pre_feat=False, cache_dir=tempfile.mkdtemp(prefix="parity-tip-"))
    scored, searched = [], []
    search_hp = main.search_hp
    utils = sys.modules["utils"]

    def cls_acc(output, target, topk=1):  # utils.cls_acc with numpy 2's float(array) -> .item(); same numbers
        pred = output.topk(topk, 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        acc = float(correct[: topk].reshape(-1).float().sum(0, keepdim=True).cpu().numpy().item())
        return 100 * acc / target.shape[0]

    utils.cls_acc = cls_acc

    def record_cls_acc(output, target, topk=1):
        scored.append(output.detach().clone())
        return cls_acc(output, target, topk)

    def record_search_hp(*args, **kwargs):
        searched.append(search_hp(*args, **kwargs))
        return searched[-1]

    losses = []

    def record_cross_entropy(*args, **kwargs):
        losses.append(cross_entropy(*args, **kwargs))
        return losses[-1]

    main.cls_acc, main.search_hp = record_cls_acc, record_search_hp
    cross_entropy, main.F = main.F.cross_entropy, types.SimpleNamespace(cross_entropy=record_cross_entropy)
    torch.manual_seed(SEED)
    with harness.cpu_only(), fixture.exact_layernorm(clip.model.LayerNorm), torch.no_grad():
        clip_weights = main.clip_classifier(fixture.CLASSNAMES, template, model)
        keys, values = main.build_cache_model(cfg, model, FeatureLoader(views, labels, 256, drop_last=False))
        values = values.to(dtype)
        val_f, val_l = main.pre_load_features(cfg, "val", model, FeatureLoader(feats["val"][None], feats["val_labels"],
                                                                               64, drop_last=False))
        test_f, test_l = main.pre_load_features(cfg, "test", model, FeatureLoader(
            feats["test"][None], feats["test_labels"], 64, drop_last=False))
    keys0 = keys.clone()  # run_tip_adapter_F trains a Parameter that shares cache_keys' storage
    with harness.cpu_only():
        with torch.no_grad():
            main.run_tip_adapter(cfg, keys, values, val_f, val_l, test_f, test_l, clip_weights)
        loader_f = FeatureLoader(views, labels, BATCH, drop_last=False, order=order)
        saved_at, save = [], torch.save

        def record_save(obj, path, *args, **kwargs):  # the release saves the adapter when an epoch is the best
            saved_at.append(len(losses) // len(loader_f) - 1)
            return save(obj, path, *args, **kwargs)

        torch.save = record_save
        try:
            main.run_tip_adapter_F(cfg, keys, values, val_f, val_l, val_f, val_l, clip_weights, model, loader_f)
        finally:
            torch.save = save
    tuned = torch.load(Path(cfg["cache_dir"]) / f"best_F_{cfg['shots']}shots.pt", weights_only=True)
    # run_tip_adapter scores: val zero-shot, val at init, test zero-shot, test at the searched pair
    (tip_beta, tip_alpha), (f_beta, f_alpha) = searched
    steps = len(loader_f)
    # the adapter's weight is a Parameter over cache_keys' storage: after the run, keys hold the last epoch's
    last = keys.t().clone()
    loss_history = torch.tensor([float(sum(float(x) for x in losses[e * steps:(e + 1) * steps])) / steps
                                 for e in range(EPOCHS)], dtype=torch.float64)
    with torch.no_grad():  # the release's tip_logits, on test, with the keys it kept and the pair it searched
        f_test = (100.0 * test_f @ clip_weights
                  + ((-1) * (f_beta - f_beta * (test_f @ tuned.t()))).exp() @ values * f_alpha)
    return {"clip_weights": clip_weights.t().contiguous(), "cache_keys": keys0.t().contiguous(),
            "cache_values": values, "tip_val_logits_init": scored[1], "tip_test_logits": scored[3],
            "tip_beta_alpha": torch.tensor([tip_beta, tip_alpha], dtype=torch.float64),
            "tipf_keys": tuned.detach().contiguous(), "tipf_keys_last_epoch": last, "tipf_loss_history": loss_history,
            "tipf_best_epoch": torch.tensor(saved_at[-1]),
            "tipf_beta_alpha": torch.tensor([f_beta, f_alpha], dtype=torch.float64),
            "tipf_val_logits": scored[-1], "tipf_test_logits": f_test,
            "tipf_steps_per_epoch": torch.tensor(steps)}


OUTPUTS = ["cache_keys", "cache_values", "tip_val_logits_init", "tip_test_logits", "tip_beta_alpha", "tipf_keys",
           "tipf_keys_last_epoch", "tipf_loss_history",
           "tipf_best_epoch", "tipf_beta_alpha", "tipf_val_logits", "tipf_test_logits", "tipf_steps_per_epoch"]


def generate(repo: Path) -> None:
    repo = Path(repo).resolve()
    tensors = {}
    for name, dtype in fixture.DTYPES.items():
        out = _run_release(repo, dtype)
        tensors.update({f"{name}/{k}": v for k, v in out.items()})
        tensors.update({f"{name}/{k}": v for k, v in fixture.features(dtype).items()})
    tensors["batch_order"] = epoch_permutations(tensors["float64/train_views"].shape[1], EPOCHS, SEED)
    meta = {"official": {**OFFICIAL, "commit": harness.commit_of(repo)}, "what": OFFICIAL["what"],
            "methods": ["Tip-Adapter", "Tip-Adapter-F"], "outputs": OUTPUTS, "tolerance": TOLERANCE,
            "patches": PATCHES, "config": CONFIG, "epochs": EPOCHS,
            "batch_size": BATCH, "lr": LR, "seed": SEED, "classnames": fixture.CLASSNAMES}
    print(fixture.save_golden(NAME, tensors, meta))


# ----------------------------------------------------------------------------------------- taskres's side
def recompute(golden: dict[str, torch.Tensor], meta: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from taskres.methods.base import FitContext
    from taskres.methods.tip_adapter import TipAdapter, TipAdapterF, TipAdapterFParams, TipAdapterParams

    g = fixture.for_dtype(golden, dtype)
    source = EpochViews(g["train_views"], g["train_labels"])
    # log(100): the release's constant 100 (DEVIATIONS: a backbone's own is 100.03 for OpenAI's weights)
    ctx = FitContext(task_name=meta["config"], classnames=list(meta["classnames"]), templates=["{}"],
                     text_classifier=g["clip_weights"], logit_scale=math.log(100.0), train=source,
                     shots=fixture.SHOTS, seed=meta["seed"], backbone_identity={}, val_features=g["val"],
                     val_labels=g["val_labels"], progress=False)
    tip = TipAdapter(TipAdapterParams()).fit(ctx)
    tuning = TipAdapterFParams(epochs=meta["epochs"], batch_size=meta["batch_size"], lr=meta["lr"])
    tipf = TipAdapterF(tuning).fit(ctx)
    # without a val split taskres keeps the last epoch's keys: the same training, seen at its end
    no_val = dataclasses.replace(ctx, val_features=None, val_labels=None)
    tipf_last = TipAdapterF(tuning).fit(no_val)
    test, val = g["test"], g["val"]
    params = TipAdapter().resolved_params(ctx)  # configs/<dataset>.yaml's init_alpha, init_beta
    init = TipAdapter(TipAdapterParams(alpha=params.init_alpha, beta=params.init_beta)).fit(ctx)
    extra = tipf.meta.extra
    with torch.no_grad():
        return {"cache_keys": tip.keys, "cache_values": tip.values, "tip_val_logits_init": init(val),
                "tip_test_logits": tip(test), "tip_beta_alpha": _pair(tip), "tipf_keys": tipf.keys,
                "tipf_keys_last_epoch": tipf_last.keys,
                "tipf_loss_history": torch.tensor(extra["loss_history"], dtype=torch.float64),
                "tipf_best_epoch": torch.tensor(extra["best_epoch"]), "tipf_beta_alpha": _pair(tipf),
                "tipf_val_logits": tipf(val), "tipf_test_logits": tipf(test),
                "tipf_steps_per_epoch": torch.tensor(extra.get("steps_per_epoch", -1))}


def _pair(classifier) -> torch.Tensor:
    return torch.tensor([classifier.beta, classifier.alpha], dtype=torch.float64)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a snapshot of gaopengcuhk/Tip-Adapter")
    generate(parser.parse_args().repo)
