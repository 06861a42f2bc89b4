"""The Python API that the CLI is a thin layer over: fit, evaluate, predict.

    from taskres import FitConfig, fit
    result = fit(FitConfig(method="taskres", dataset="mini-shapes", shots=16, seed=1, out="runs/demo"))
    print(result.metrics["top1"]["test"])
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .backbone import Backbone, BackboneConfig, load_backbone
from .classifier import (Classifier, check_backbone, class_rows, load_classifier, save_classifier)
from .datasets import FewShotSplit, TaskData, load_dataset, load_split, make_fewshot_split
from .features import CachedViews, FeatureCache, MappedViews, OnlineAugmented, View, default_cache_dir
from .io import read_json, write_json_atomic
from .methods import FitContext, get_method
from .transforms import load_image

log = logging.getLogger("taskres")
REGIMES = ("cached", "online")
DEFAULT_VIEWS = 10


@dataclass
class FitConfig:
    """Everything that determines a run. Saved, resolved, as ``config.json`` in the run folder."""

    method: str = "taskres"
    dataset: str = "mini-shapes"  # registered name, demo task (mini-*), or a folder of class folders
    data_root: str | None = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    shots: int = 16
    seed: int = 1
    regime: str = "cached"  # "cached": train on cached augmented views | "online": fresh augmentation
    views: int = DEFAULT_VIEWS  # augmented views cached per training image (cached regime)
    augment: bool = True  # False: train on the test transform (one view)
    memory_map: bool = False  # cached regime: the views stay in the cache, memory-mapped (sets larger than RAM)
    method_params: dict = field(default_factory=dict)  # overrides of the method's parameters
    eval_splits: tuple[str, ...] = ("test",)
    cache_dir: str | None = None  # None: $TASKRES_CACHE/features (~/.cache/taskres/features); "" disables
    verify_cache: str | None = None  # "full" | "none" (see FeatureCache); None: $TASKRES_VERIFY_CACHE or "full"
    out: str | None = None  # run folder
    split_file: str | None = None  # reuse an exact few-shot split (a run's splits.json)
    batch_size: int = 128  # encoding batch size
    num_workers: int | None = None  # image decoding workers (None: automatic)
    skip_bad_images: bool = False
    allow_fewer_shots: bool = False
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FitConfig":
        data = dict(data)
        data["backbone"] = BackboneConfig(**data.get("backbone", {}))
        if "eval_splits" in data:
            data["eval_splits"] = tuple(data["eval_splits"])
        return cls(**data)


@dataclass
class FitResult:
    classifier: Classifier
    metrics: dict
    run_dir: Path | None


def versions() -> dict:
    import open_clip

    from . import __version__

    return {"taskres": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "python": platform.python_version()}


def make_cache(cache_dir: str | None, verify: str | None = None) -> FeatureCache:
    if cache_dir == "":
        return FeatureCache(None, verify=verify)
    return FeatureCache(cache_dir if cache_dir is not None else default_cache_dir(), verify=verify)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(dim=1) == labels).float().mean()) if len(labels) else float("nan")


def _labels(samples) -> torch.Tensor:
    return torch.tensor([s.label for s in samples], dtype=torch.long)


def split_record(task: TaskData, split: FewShotSplit, eval_splits) -> dict:
    """The exact file lists of a run, enough to repeat it (``--split-file``)."""
    record = split.to_json()
    record["dataset"] = task.name
    record["classnames"] = task.classnames
    for name in eval_splits:
        record[f"eval_{name}"] = [[s.path, s.label] for s in task.split(name)]
    return record


def training_source(cfg: FitConfig, backbone: Backbone, cache: FeatureCache, split: FewShotSplit):
    if cfg.regime not in REGIMES:
        raise ValueError(f"--regime must be one of {', '.join(REGIMES)}, not {cfg.regime!r}")
    samples = split.train
    if cfg.regime == "online":
        if cfg.skip_bad_images:  # find unreadable files once, so training never meets them
            found = cache.encoded(backbone, samples, View(), batch_size=cfg.batch_size,
                                  num_workers=cfg.num_workers, skip_bad=True, progress=cfg.progress,
                                  desc="checking train images")
            samples = [s for s, ok in zip(samples, found.valid.tolist()) if ok]
        return OnlineAugmented(backbone, samples, seed=cfg.seed, augment=cfg.augment)
    if cfg.views < 1:
        raise ValueError(f"--views must be at least 1, not {cfg.views}")
    view_list = [View("aug", v, cfg.seed) for v in range(cfg.views)] if cfg.augment else [View()]
    if cfg.memory_map:  # the same views and the same per-epoch view choice, read from disk batch by batch
        mapped = [cache.mapped(backbone, samples, v, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                               skip_bad=cfg.skip_bad_images, progress=cfg.progress,
                               desc=f"encoding train view {i + 1}/{len(view_list)}")
                  for i, v in enumerate(view_list)]
        return MappedViews(mapped, _labels(samples), seed=cfg.seed)
    encoded = [cache.encoded(backbone, samples, v, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                             skip_bad=cfg.skip_bad_images, progress=cfg.progress,
                             desc=f"encoding train view {i + 1}/{len(view_list)}")
               for i, v in enumerate(view_list)]
    ok = torch.stack([e.valid for e in encoded]).all(dim=0)  # an image bad in any view is left out
    views = torch.stack([e.features for e in encoded])
    return CachedViews(views[:, ok], _labels(samples)[ok], seed=cfg.seed)


def encode_split(cfg: FitConfig, backbone: Backbone, cache: FeatureCache, samples, desc: str):
    found = cache.encoded(backbone, samples, View(), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                          skip_bad=cfg.skip_bad_images, progress=cfg.progress, desc=desc)
    return found.features[found.valid], _labels(samples)[found.valid]


def build_context(task: TaskData, backbone: Backbone, train, *, shots: int, seed: int,
                  base: torch.Tensor | None = None, val_features=None, val_labels=None,
                  progress: bool = True) -> FitContext:
    """What a method sees of a run: tensors, class names and the backbone's text side."""
    if base is None:
        base = backbone.text_classifier(task.classnames, task.templates)
    return FitContext(
        task_name=task.name, classnames=task.classnames, templates=task.templates, text_classifier=base,
        logit_scale=backbone.logit_scale, train=train, shots=shots, seed=seed,
        backbone_identity=backbone.identity, val_features=val_features, val_labels=val_labels,
        class_ids=task.class_ids, dataset_alpha=task.alpha, dataset_lr=task.lr, backbone=backbone,
        progress=progress)


def fit(cfg: FitConfig, *, backbone: Backbone | None = None, task: TaskData | None = None,
        cache: FeatureCache | None = None) -> FitResult:
    """Sample the few shots, encode (cached), fit the method, evaluate, and write the run folder."""
    started = time.time()
    method = get_method(cfg.method, cfg.method_params)
    task = task or load_dataset(cfg.dataset, cfg.data_root)
    backbone = backbone or load_backbone(cfg.backbone)
    cache = cache or make_cache(cfg.cache_dir, cfg.verify_cache)
    for name in cfg.eval_splits:
        task.split(name)  # unknown split names fail before any work
    split = (load_split(Path(cfg.split_file)) if cfg.split_file else
             make_fewshot_split(task, cfg.shots, cfg.seed, allow_fewer=cfg.allow_fewer_shots))
    run_dir = Path(cfg.out) if cfg.out else None
    if run_dir is not None:
        write_json_atomic(run_dir / "config.json", {**cfg.to_dict(), "versions": versions()})
        write_json_atomic(run_dir / "splits.json", split_record(task, split, cfg.eval_splits))

    base = backbone.text_classifier(task.classnames, task.templates)  # t, computed once per run
    train = training_source(cfg, backbone, cache, split)
    val_feats, val_labels = encode_split(cfg, backbone, cache, split.val, "encoding val") if split.val else (
        None, None)
    ctx = build_context(task, backbone, train, shots=split.shots, seed=cfg.seed, base=base,
                        val_features=val_feats, val_labels=val_labels, progress=cfg.progress)
    torch.manual_seed(cfg.seed)
    fit_started = time.time()
    classifier = method.fit(ctx)
    fit_seconds = time.time() - fit_started

    results, counts = {}, {}
    for name in cfg.eval_splits:
        feats, labels = encode_split(cfg, backbone, cache, task.split(name), f"encoding {name}")
        with torch.no_grad():
            results[name] = top1(classifier(feats), labels)
        counts[name] = len(labels)
    metrics = {
        "method": cfg.method,
        "dataset": task.name,
        "backbone": backbone.identity,
        "shots": split.shots,
        "seed": cfg.seed,
        "regime": cfg.regime,
        "views": cfg.views if cfg.regime == "cached" and cfg.augment else (1 if cfg.regime == "cached" else 0),
        "top1": results,
        "num_images": counts,
        "num_train": train.num_samples,
        "hparams": classifier.meta.hparams,
        "fit_seconds": round(fit_seconds, 3),
        "total_seconds": round(time.time() - started, 3),
        "versions": versions(),
    }
    if run_dir is not None:
        save_classifier(classifier, run_dir / "classifier.safetensors")
        write_json_atomic(run_dir / "metrics.json", metrics)
    return FitResult(classifier, metrics, run_dir)


def _pretrained_hint(identity: dict) -> str:
    p = identity.get("pretrained", "none")
    if identity.get("model") == "taskres-mini" and p.endswith(".safetensors"):
        return "default"
    return p


def run_backbone_config(run_dir: Path) -> BackboneConfig | None:
    cfg_file = Path(run_dir) / "config.json"
    if cfg_file.is_file():
        return BackboneConfig(**read_json(cfg_file)["backbone"])
    return None


def _classifier_and_backbone(run_or_classifier, backbone_cfg: BackboneConfig | None,
                             backbone: Backbone | None, *, device: str | None = None,
                             precision: str | None = None) -> tuple[Classifier, Backbone]:
    """A saved (or given) classifier and the backbone it was trained on, checked to match.

    Without ``backbone_cfg`` the backbone is the run's own (its config.json), else the one the classifier
    names; ``device`` / ``precision`` replace its device and precision (a run made on a GPU is evaluated
    on a CPU with ``device="cpu"``).
    """
    if isinstance(run_or_classifier, Classifier):
        clf = run_or_classifier
    else:
        clf = load_classifier(run_or_classifier)
        if backbone_cfg is None and Path(run_or_classifier).is_dir():
            backbone_cfg = run_backbone_config(Path(run_or_classifier))
    if backbone is None:
        if backbone_cfg is None:
            ident = clf.meta.backbone
            backbone_cfg = BackboneConfig(name=ident["model"], pretrained=_pretrained_hint(ident))
        changes = {k: v for k, v in (("device", device), ("precision", precision)) if v is not None}
        backbone = load_backbone(dataclasses.replace(backbone_cfg, **changes))
    check_backbone(clf, backbone.identity)
    return clf, backbone


def evaluate(run_or_classifier: str | Path | Classifier, dataset: str, *, data_root: str | None = None,
             split: str = "test", backbone_cfg: BackboneConfig | None = None, cache_dir: str | None = None,
             batch_size: int = 128, num_workers: int | None = None, skip_bad_images: bool = False,
             progress: bool = True, backbone: Backbone | None = None, task: TaskData | None = None,
             device: str | None = None, precision: str | None = None, verify_cache: str | None = None) -> dict:
    """Top-1 of a saved classifier on a dataset split; a class subset (ImageNet-A/R) uses its rows.

    ``device`` / ``precision`` override those of the run's backbone (see ``_classifier_and_backbone``)."""
    clf, backbone = _classifier_and_backbone(run_or_classifier, backbone_cfg, backbone, device=device,
                                             precision=precision)
    task = task or load_dataset(dataset, data_root)
    rows = class_rows(clf, task.classnames, task.class_ids)
    cfg = FitConfig(batch_size=batch_size, num_workers=num_workers, skip_bad_images=skip_bad_images,
                    progress=progress, cache_dir=cache_dir)
    feats, labels = encode_split(cfg, backbone, make_cache(cache_dir, verify_cache), task.split(split),
                                 f"encoding {split}")
    with torch.no_grad():
        logits = clf(feats)
    if rows is not None:
        logits = logits[:, rows]
    return {"dataset": task.name, "split": split, "top1": top1(logits, labels), "num_images": len(labels),
            "class_subset": rows is not None, "method": clf.meta.method}


def predict(run_or_classifier: str | Path | Classifier, images: list[str], *, k: int = 5,
            backbone_cfg: BackboneConfig | None = None, backbone: Backbone | None = None,
            device: str | None = None, precision: str | None = None) -> list[dict]:
    """Top-k classes with probabilities for each image file (``device`` / ``precision`` as in evaluate)."""
    clf, backbone = _classifier_and_backbone(run_or_classifier, backbone_cfg, backbone, device=device,
                                             precision=precision)
    batch = torch.stack([backbone.preprocess(load_image(p)) for p in images])
    probs = clf.predict_proba(backbone.encode_images(batch))
    k = min(k, probs.shape[1])
    top = probs.topk(k, dim=1)
    return [{"image": path, "top": [(clf.classnames[i], float(p)) for p, i in zip(vals.tolist(), ids.tolist())]}
            for path, vals, ids in zip(images, top.values, top.indices)]
