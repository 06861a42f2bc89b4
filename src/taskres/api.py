"""The Python API that the CLI is a thin layer over: fit, evaluate, predict.

    from taskres import FitConfig, fit
    result = fit(FitConfig(method="taskres", dataset="mini-shapes", shots=16, seed=1, out="runs/demo"))
    print(result.metrics["top1"]["test"])
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import atomic_folder, read_json, write_json_atomic
from .backbone import Backbone, BackboneConfig, load_backbone
from .classifier import (Classifier, check_backbone, check_width, class_rows, cosine_logits, load_classifier,
                         save_classifier)
from .errors import Mention, OptionError, naming
from .datasets import DatasetError, FewShotSplit, TaskData, load_dataset, load_split, make_fewshot_split
from .features import CachedViews, FeatureCache, MappedViews, OnlineAugmented, View, default_cache_dir
from .methods import FitContext, check_regime, get_method, recipe_of
from .methods.kit.text_recipe import TASKRES, TextRecipe
from .metrics import accuracy, split_evaluation
from .options import (ALLOW_FEWER_SHOTS, AUGMENT, BATCH_SIZE, CACHE_DIR, DATA_ROOT, MEMORY_MAP, NUM_WORKERS, REGIME,
                      SEARCH_SPLIT, SEED, SHOTS, SKIP_BAD_IMAGES, VERIFY_CACHE, VIEWS, Option)
from .reports.run import write_run_report
from .typed import typed_value

log = logging.getLogger("taskres")
REGIMES = ("cached", "online")
DEFAULT_SHOTS, DEFAULT_SEED = 16, 1  # what fit uses when neither the config nor a split file says
RUN_FILES = ("classifier.safetensors", "metrics.json", "config.json", "splits.json")


@dataclass
class FitConfig:
    """Everything that determines a run. Saved, resolved, as ``config.json`` in the run folder."""

    method: str = "taskres"
    dataset: str = "mini-shapes"  # registered name, demo task (mini-*), or a folder of class folders
    data_root: str | None = DATA_ROOT.field()
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    shots: int | None = SHOTS.field()  # None: the split file's, else 16
    seed: int | None = SEED.field()  # None: the split file's, else 1
    regime: str = REGIME.field()
    views: int = VIEWS.field()  # cached regime
    augment: bool = AUGMENT.field()
    memory_map: bool = MEMORY_MAP.field()
    search_split: str = SEARCH_SPLIT.field()
    method_params: dict = field(default_factory=dict)  # overrides of the method's parameters
    eval_splits: tuple[str, ...] = ("test",)
    cache_dir: str | None = CACHE_DIR.field()  # None: options.cache_home()/features; "" disables
    verify_cache: str | None = VERIFY_CACHE.field()
    out: str | None = Option(None, "run folder for the classifier, metrics, config and splits (written beside it, "
                                   "renamed into place when complete)").field()
    overwrite: bool = Option(False, "replace the run already in the run folder (else refused before any "
                                    "work)").field()
    split_file: str | None = Option(None, "reuse the exact few-shot split of a run (its splits.json)").field()
    batch_size: int = BATCH_SIZE.field()
    num_workers: int | None = NUM_WORKERS.field()
    skip_bad_images: bool = SKIP_BAD_IMAGES.field()
    allow_fewer_shots: bool = ALLOW_FEWER_SHOTS.field()
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


def method_source(name: str) -> dict | None:
    """The package and version of a plugin method (taskres.plugins); None for a built-in one."""
    from .methods import METHODS

    source = METHODS.source(name)
    return source.to_dict() if source is not None else None


def make_cache(cache_dir: str | None, verify: str | None = None) -> FeatureCache:
    if cache_dir == "":
        return FeatureCache(None, verify=verify)
    return FeatureCache(cache_dir if cache_dir is not None else default_cache_dir(), verify=verify)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * accuracy(logits, labels)


def _labels(samples) -> torch.Tensor:
    return torch.tensor([s.label for s in samples], dtype=torch.long)


def split_record(task: TaskData, split: FewShotSplit, eval_splits) -> dict:
    """The exact file lists of a run, enough to repeat it (``--split-file``)."""
    record = split.to_json()
    record["dataset"] = task.name
    record["classnames"] = task.classnames
    if task.class_ids:
        record["class_ids"] = task.class_ids
    for name in eval_splits:
        record[f"eval_{name}"] = [[s.path, s.label] for s in task.split(name)]
    return record


def training_source(cfg: FitConfig, backbone: Backbone, cache: FeatureCache, split: FewShotSplit,
                    aug_scale: tuple[float, float] | None = (0.08, 1.0)):
    """The training features: augmented views at ``aug_scale`` (the method's crop), or the test transform
    alone when ``aug_scale`` is None or ``cfg.augment`` is off."""
    samples = split.train
    if cfg.regime == "online":
        if cfg.skip_bad_images:  # find unreadable files once, so training never meets them
            found = cache.encoded(backbone, samples, View(), batch_size=cfg.batch_size,
                                  num_workers=cfg.num_workers, skip_bad=True, progress=cfg.progress,
                                  desc="checking train images")
            samples = [s for s, ok in zip(samples, found.valid.tolist()) if ok]
        return OnlineAugmented(backbone, samples, seed=cfg.seed, augment=augmented(cfg, aug_scale), scale=aug_scale)
    if cfg.views < 1:
        raise OptionError("views", f"must be at least 1, not {cfg.views}", owner="FitConfig")
    view_list = ([View("aug", v, cfg.seed, aug_scale) for v in range(cfg.views)] if augmented(cfg, aug_scale)
                 else [View()])
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


def augmented(cfg: FitConfig, aug_scale) -> bool:
    return cfg.augment and aug_scale is not None


def encode_split(cfg: FitConfig, backbone: Backbone, cache: FeatureCache, samples, desc: str):
    found = cache.encoded(backbone, samples, View(), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                          skip_bad=cfg.skip_bad_images, progress=cfg.progress, desc=desc)
    return found.features[found.valid], _labels(samples)[found.valid]


@dataclass
class EvalSet:
    """The readable images of an evaluated split, their features and labels, in the same order."""

    images: list[str]
    features: torch.Tensor
    labels: torch.Tensor


def encode_eval_split(cfg: FitConfig, backbone: Backbone, cache: FeatureCache, samples, desc: str) -> EvalSet:
    found = cache.encoded(backbone, samples, View(), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                          skip_bad=cfg.skip_bad_images, progress=cfg.progress, desc=desc)
    ok = found.valid
    return EvalSet([s.path for s, keep in zip(samples, ok.tolist()) if keep], found.features[ok],
                   _labels(samples)[ok])


def evaluate_split(classifier: Classifier, zero_shot: torch.Tensor, logit_scale: float, data: EvalSet,
                   classnames: list[str], rows: torch.Tensor | None = None) -> dict:
    """The practitioner's metrics (taskres.metrics) of the classifier and of zero-shot on one split.

    ``zero_shot`` is the frozen text classifier t of the split's classes; ``rows`` picks the classifier's
    rows of those classes (a class subset such as ImageNet-A/R)."""
    with torch.no_grad():
        logits = classifier(data.features)
        if rows is not None:
            logits = logits[:, rows]
        zs_logits = cosine_logits(data.features, zero_shot, logit_scale)
    return split_evaluation(logits, zs_logits, data.labels, data.images, classnames)


def evaluate_splits(cfg: FitConfig, backbone: Backbone, cache: FeatureCache, task: TaskData,
                    classifier: Classifier, base: torch.Tensor) -> dict[str, dict]:
    """Each of ``cfg.eval_splits`` encoded (cached) and scored, the method beside zero-shot (base t)."""
    return {name: evaluate_split(classifier, base, backbone.logit_scale, require_images(encode_eval_split(
        cfg, backbone, cache, task.split(name), f"encoding {name}"), len(task.split(name)), name, task.name),
        task.classnames) for name in cfg.eval_splits}


def require_images(data: EvalSet, total: int, split: str, dataset: str) -> EvalSet:
    """``data`` when it holds an image; a split with none left is an error (its top-1 would be NaN, not a score)."""
    if len(data.labels) == 0:
        why = f"all {total} were skipped as unusable" if total else "it has none"
        raise DatasetError(f"dataset {dataset!r} has no usable {split} image ({why}): nothing to evaluate")
    return data


def usable_shots(task: TaskData, split: FewShotSplit, train) -> tuple[int, int]:
    """The fewest and the most usable training images of any class (after images skipped as unusable).

    A class left with none is an error: the method would learn nothing of it and the run would still look
    like a result."""
    counts = torch.bincount(train.labels.cpu().long(), minlength=task.num_classes).tolist()
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        drawn = sum(s.label == empty[0] for s in split.train)
        why = f"all {drawn} of its shots were skipped as unusable" if drawn else "it has no training image"
        raise DatasetError(f"class {task.classnames[empty[0]]!r} of dataset {task.name!r} has no usable training "
                           f"image ({why}; {len(empty)} of {task.num_classes} classes have none)")
    return min(counts), max(counts)


def text_classifier_for(task: TaskData, backbone: Backbone, recipe: TextRecipe = TASKRES) -> torch.Tensor:
    """t [C, D] of ``task``'s classes as ``recipe`` (a method's original) builds it."""
    return recipe.build(backbone.encode_texts, recipe.prompt_names(task.classnames),
                        recipe.task_templates(task.name, task.templates))


def build_context(task: TaskData, backbone: Backbone, train, *, shots: int, seed: int,
                  base: torch.Tensor | None = None, val_features=None, val_labels=None,
                  progress: bool = True, recipe: TextRecipe = TASKRES) -> FitContext:
    """What a method sees of a run: tensors, class names and the backbone's text side.

    ``recipe``: the method's text recipe (``method.recipe``), which gives its prompt names, templates and
    text classifier; ``base``, when given, is that classifier already computed."""
    if base is None:
        base = text_classifier_for(task, backbone, recipe)
    return FitContext(
        task_name=task.name, classnames=task.classnames, templates=recipe.task_templates(task.name, task.templates),
        text_classifier=base, logit_scale=backbone.logit_scale, train=train, shots=shots, seed=seed,
        backbone_identity=backbone.identity, val_features=val_features, val_labels=val_labels,
        class_ids=task.class_ids, backbone=backbone,
        progress=progress, prompt_classnames=recipe.prompt_names(task.classnames), text_recipe=recipe,
        dataset_templates=list(task.templates))


def is_run_folder(path: Path) -> bool:
    return any((Path(path) / name).exists() for name in RUN_FILES)


# What a run folder may hold besides RUN_FILES: its report, a base-to-new cell's second classifier, a bench
# cell's record copy, what ``taskres export`` writes beside the classifier (model.onnx, its .json and external
# data; model.torchscript.pt and .json), and atomic writers' hidden temporary files.
_RUN_EXTRAS = re.compile(r"report\.html|classifier_new\.safetensors|record\.json"
                         r"|model\.(?:onnx|torchscript)[A-Za-z0-9_.-]*|\..+\.tmp")


def foreign_entries(path: Path) -> list[str]:
    """The names in a folder that no run writes (sorted); ``--overwrite`` never replaces a folder with any."""
    return sorted(p.name for p in Path(path).iterdir()
                  if not ((p.name in RUN_FILES or _RUN_EXTRAS.fullmatch(p.name)) and p.is_file()))


SEED_LIMIT = 2 ** 63 - 1  # seeds reach numpy and torch as signed 64-bit integers


def check_seed(seed, name: str = "seed", owner: str = "FitConfig") -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or abs(seed) > SEED_LIMIT:
        raise OptionError(name, f"must be a whole number from -{SEED_LIMIT} to {SEED_LIMIT}, not {seed!r}",
                          owner=owner)


def check_out_beside_dataset(out: Path, dataset: str) -> None:
    """A run folder inside a folder dataset would be read as one of its classes next time: refused."""
    folder = Path(dataset).expanduser()
    if not folder.is_dir():
        return  # a registered name: its data lives under --data-root, in folders of its own layout
    folder, out = folder.resolve(), Path(os.path.realpath(out.expanduser()))
    if out == folder or folder in out.parents:
        raise OptionError("out", f"{out} is inside the dataset folder {folder}, where it would be read as a class "
                          "(or its images); choose a folder outside it", owner="FitConfig")


def check_fit_config(cfg: FitConfig) -> None:
    """Options checked before any work; each fault is one line naming the field (the CLI names its flag)."""
    for name, value, low in (("shots", cfg.shots, 1), ("views", cfg.views, 1), ("batch_size", cfg.batch_size, 1),
                             ("num_workers", cfg.num_workers, 0)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise OptionError(name, f"must be a whole number, at least {low}, not {value!r}", owner="FitConfig")
    if cfg.seed is not None:
        check_seed(cfg.seed)
    for name in ("augment", "memory_map", "overwrite", "skip_bad_images", "allow_fewer_shots", "progress"):
        # FitConfig(augment="false") from Python: refused as a sweep file's 'false' is (taskres.typed)
        typed_value(getattr(cfg, name), "bool", name, text_bools=False)
    if cfg.regime not in REGIMES:
        raise OptionError("regime", f"must be one of {', '.join(REGIMES)}, not {cfg.regime!r}", owner="FitConfig")
    if cfg.regime == "online" and cfg.memory_map:  # never ignore one of the two and record both
        raise OptionError("memory_map", "with regime online: the online regime keeps no training views to map "
                          "(every step encodes its images afresh); drop one of the two", owner="FitConfig")
    if not cfg.eval_splits:
        raise OptionError("eval_splits", "must name at least one split to evaluate", owner="FitConfig")


def resolve_split(cfg: FitConfig, task: TaskData) -> tuple[FitConfig, FewShotSplit]:
    """The few-shot split and the config with the shots and seed it was made with filled in.

    A split file is checked against the dataset before any image is read; ``shots`` / ``seed`` given next to
    it must be the file's own (a different value is refused rather than silently ignored).
    """
    if not cfg.split_file:
        cfg = dataclasses.replace(cfg, shots=DEFAULT_SHOTS if cfg.shots is None else cfg.shots,
                                  seed=DEFAULT_SEED if cfg.seed is None else cfg.seed)
        return cfg, make_fewshot_split(task, cfg.shots, cfg.seed, allow_fewer=cfg.allow_fewer_shots,
                                       search_split=cfg.search_split)
    split = load_split(Path(cfg.split_file), task, allow_fewer=cfg.allow_fewer_shots)
    if split.search_split != cfg.search_split:
        raise naming(DatasetError, f"{{split_file}}: its validation images are a {split.search_split!r} search "
                     f"split, not the {cfg.search_split!r} one asked for ({{search_split}})",
                     split_file=Mention("FitConfig", "split_file", str(cfg.split_file)),
                     search_split=Mention("FitConfig", "search_split"))
    for option, given, stated in (("shots", cfg.shots, split.shots), ("seed", cfg.seed, split.seed)):
        if given is not None and given != stated:
            raise naming(DatasetError, "{given} disagrees with {split_file}, made with {stated} (drop {option}, "
                         f"or give {stated})", given=Mention("FitConfig", option, given),
                         split_file=Mention("FitConfig", "split_file", str(cfg.split_file)),
                         stated=Mention("FitConfig", option, stated), option=Mention("FitConfig", option))
    return dataclasses.replace(cfg, shots=split.shots, seed=split.seed), split


def fit(cfg: FitConfig, *, backbone: Backbone | None = None, task: TaskData | None = None,
        cache: FeatureCache | None = None, stage_dir: Path | None = None) -> FitResult:
    """Sample the few shots, encode (cached), fit the method, evaluate, and write the run folder.

    The run folder is written into a temporary folder beside ``cfg.out`` and renamed into place when
    complete: a failed or killed fit leaves what was at ``cfg.out`` as it was, and an existing run there is
    replaced only with ``cfg.overwrite``. ``stage_dir``: write the files into this existing folder instead
    (a caller that assembles a larger folder atomically itself, as ``bench`` does for its cells); ``cfg.out``
    is then only recorded.
    """
    check_fit_config(cfg)
    method = get_method(cfg.method, cfg.method_params)  # bad parameters fail before anything is read or written
    check_regime(method, cfg.regime, cfg.memory_map)
    run_dir = Path(cfg.out) if cfg.out else None
    if run_dir is not None and stage_dir is None:
        check_out_beside_dataset(run_dir, cfg.dataset)
    if stage_dir is not None:
        folder = nullcontext(Path(stage_dir))
    elif run_dir is not None:
        folder = atomic_folder(run_dir, overwrite=cfg.overwrite, is_run=is_run_folder, foreign=foreign_entries)
    else:
        folder = nullcontext(None)
    with folder as work_dir:
        classifier, metrics = _fit(cfg, method, backbone, task, cache, work_dir)
    return FitResult(classifier, metrics, run_dir)


def _fit(cfg: FitConfig, method, backbone, task, cache, work_dir: Path | None) -> tuple[Classifier, dict]:
    started = time.time()
    task = task or load_dataset(cfg.dataset, cfg.data_root)
    for name in cfg.eval_splits:
        task.split(name)  # unknown split names fail before any work
    cfg, split = resolve_split(cfg, task)
    check_split = getattr(method, "check_split", None)
    if check_split is not None:  # a method that cannot work on this split refuses before any image is encoded
        check_split(split)
    backbone = backbone or load_backbone(cfg.backbone)
    cache = cache or make_cache(cfg.cache_dir, cfg.verify_cache)
    source = method_source(cfg.method)  # a plugin's package and version (None for a built-in method)
    if work_dir is not None:
        write_json_atomic(work_dir / "config.json", {**cfg.to_dict(), "versions": versions(),
                                                     **({"method_source": source} if source else {})})
        write_json_atomic(work_dir / "splits.json", split_record(task, split, cfg.eval_splits))

    recipe = method.recipe  # how the method's original builds its text classifier (methods/kit/text_recipe.py)
    base = text_classifier_for(task, backbone, recipe)  # t, computed once per run
    crop = method.crop_scale(task.name)  # the method's crop on this dataset, as its release does
    train = training_source(cfg, backbone, cache, split, crop)
    fewest, most = usable_shots(task, split, train)
    val_feats, val_labels = encode_split(cfg, backbone, cache, split.val, "encoding val") if split.val else (
        None, None)
    if split.val and len(val_labels) == 0:
        raise DatasetError(f"dataset {task.name!r} has no usable val image (all {len(split.val)} were skipped as "
                           "unusable): nothing to choose the method's settings on")
    ctx = build_context(task, backbone, train, shots=split.shots, seed=cfg.seed, base=base,
                        val_features=val_feats, val_labels=val_labels, progress=cfg.progress, recipe=recipe)
    ctx.train_for = lambda scale: training_source(cfg, backbone, cache, split, scale)  # --method auto's candidates
    torch.manual_seed(cfg.seed)
    fit_started = time.time()
    classifier = method.fit(ctx)
    fit_seconds = time.time() - fit_started
    if source:  # saved in the classifier too: loading it where the package is missing says what to install
        classifier.meta.extra = {**classifier.meta.extra, "method_source": source}

    evaluations = evaluate_splits(cfg, backbone, cache, task, classifier, base)
    crop = getattr(method, "chosen_crop", crop)  # --method auto: the views of the method it chose
    metrics = {
        "method": cfg.method,
        "dataset": task.name,
        "backbone": backbone.identity,
        "shots": fewest,  # usable training images per class (the fewest any class has), after skipped ones
        "shots_asked": split.shots,
        "shots_per_class": {"min": fewest, "max": most},
        "seed": cfg.seed,
        "regime": cfg.regime,
        "views": (cfg.views if augmented(cfg, crop) else 1) if cfg.regime == "cached" else 0,
        "augmentation": list(crop) if augmented(cfg, crop) else None,  # crop scale
        "search_split": split.search_split,
        "num_val": 0 if val_labels is None else len(val_labels),
        "top1": {name: e["method"]["top1"] for name, e in evaluations.items()},
        "num_images": {name: e["num_images"] for name, e in evaluations.items()},
        "num_train": train.num_samples,
        "hparams": classifier.meta.hparams,
        "text_classifier": recipe.describe(task.name, task.templates),  # the method's own prompts
        "fit_seconds": round(fit_seconds, 3),
        "total_seconds": round(time.time() - started, 3),
        "versions": versions(),
        "evaluation": evaluations,  # per split: top-5, macro, ECE, per class, confusion, zero-shot alike
    }
    for key, value in (("auto", classifier.meta.extra.get("auto")), ("method_source", source)):
        if value:  # --method auto's choice and every candidate's val score; a plugin's package
            metrics[key] = value
    if work_dir is not None:
        save_classifier(classifier, work_dir / "classifier.safetensors")
        write_json_atomic(work_dir / "metrics.json", metrics)
        write_run_report(work_dir / "report.html", metrics, classifier)
    return classifier, metrics


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
    check_width(clf, backbone.embed_dim, str(run_or_classifier) if not isinstance(run_or_classifier, Classifier)
                else "classifier")
    return clf, backbone


def evaluate(run_or_classifier: str | Path | Classifier, dataset: str, *, data_root: str | None = None,
             split: str = "test", backbone_cfg: BackboneConfig | None = None, cache_dir: str | None = None,
             batch_size: int = 128, num_workers: int | None = None, skip_bad_images: bool = False,
             progress: bool = True, backbone: Backbone | None = None, task: TaskData | None = None,
             device: str | None = None, precision: str | None = None, verify_cache: str | None = None) -> dict:
    """Top-1 (and the metrics of taskres.metrics, with zero-shot beside) of a saved classifier on a dataset
    split; a class subset (ImageNet-A/R) uses its rows.

    ``device`` / ``precision`` override those of the run's backbone (see ``_classifier_and_backbone``)."""
    cfg = FitConfig(batch_size=batch_size, num_workers=num_workers, skip_bad_images=skip_bad_images,
                    progress=progress, cache_dir=cache_dir)
    check_fit_config(cfg)
    clf, backbone = _classifier_and_backbone(run_or_classifier, backbone_cfg, backbone, device=device,
                                             precision=precision)
    task = task or load_dataset(dataset, data_root)
    rows = class_rows(clf, task.classnames, task.class_ids)
    data = require_images(encode_eval_split(cfg, backbone, make_cache(cache_dir, verify_cache), task.split(split),
                                            f"encoding {split}"), len(task.split(split)), split, task.name)
    # t of the dataset's classes, as the run's method builds it
    zero_shot = text_classifier_for(task, backbone, recipe_of(clf.meta.method, clf.meta.hparams))
    evaluation = evaluate_split(clf, zero_shot, backbone.logit_scale, data, task.classnames, rows)
    return {"dataset": task.name, "split": split, "top1": evaluation["method"]["top1"],
            "num_images": evaluation["num_images"], "class_subset": rows is not None, "method": clf.meta.method,
            "evaluation": evaluation}


def predict(run_or_classifier: str | Path | Classifier, images: list[str], *, k: int = 5,
            backbone_cfg: BackboneConfig | None = None, backbone: Backbone | None = None,
            device: str | None = None, precision: str | None = None, file_list: str | None = None,
            batch_size: int = 128, num_workers: int | None = None, skip_bad_images: bool = False,
            progress: bool = False) -> list[dict]:
    """Top-k classes with probabilities for each image: ``[{"image": path, "top": [(class, p), ...]}, ...]``.

    ``images``: files, or folders (their image files, recursively); ``file_list``: a text file of paths.
    Unreadable images stop with one line naming them, or with ``skip_bad_images`` get ``"top": None`` and
    ``"error"``. ``taskres.predictions.json_rows`` / ``write_csv`` give what ``predict --json`` / ``--csv``
    write. ``device`` / ``precision`` as in evaluate."""
    from .predictions import image_files, predict_files

    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise OptionError("k", f"must be at least 1, not {k!r}", owner="predict")
    paths = image_files(list(images), file_list)
    clf, backbone = _classifier_and_backbone(run_or_classifier, backbone_cfg, backbone, device=device,
                                             precision=precision)
    return predict_files(clf, backbone, paths, k=k, batch_size=batch_size, num_workers=num_workers,
                         skip_bad_images=skip_bad_images, progress=progress)
