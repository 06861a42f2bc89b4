"""The paper's evaluation protocols, as sweeps of cells.

A sweep (:class:`SweepConfig`) is resolved once, at the edge, from a preset, a YAML file and command-line
flags (in that order, later layers win). It expands into cells, one per (backbone, dataset, method, shots,
seed). Each protocol says what a cell does:

- ``fewshot``: fit on K shots of the dataset, top-1 on its test split (the paper's main figure).
- ``domain``: fit on K shots of the source (ImageNet), top-1 on the source test split and on each target
  (ImageNet-V2, -Sketch, -A, -R); -A and -R use the classifier rows of their 200 classes.
- ``base2new``: CoCoOp's protocol. The classes are cut in half (first ceil(C/2) = base, the rest = new);
  fit on the base classes' shots (drawn over all classes, then the base half kept, as CoOp); top-1 on base
  test images among the base classes, on new test images among the new classes, and their harmonic mean.

Running cells, resuming and records live in :mod:`taskres.bench`; tables and figures in :mod:`taskres.reports.tables`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .backbone import MINI_MODEL, PRECISIONS, BackboneConfig
from .classifier import Classifier
from .datasets import DOMAIN_SHIFT_TARGETS, PAPER_DATASETS, DatasetError, Sample, TaskData
from .datasets.fewshot import SEARCH_SPLITS
from .errors import Mention, OptionError, naming
from .methods import METHODS, check_regime, get_method, recipe_of
from .methods.kit.text_recipe import TASKRES
from .options import (ALLOW_FEWER_SHOTS, AUGMENT, BATCH_SIZE, CACHE_DIR, DATA_ROOT, MEMORY_MAP, NUM_WORKERS, REGIME,
                      SEARCH_SPLIT, SKIP_BAD_IMAGES, VERIFY_CACHE, VIEWS, check_options)
from .cli.commands import eval_command, fit_command
from .typed import typed_value

PROTOCOLS = ("fewshot", "domain", "base2new")
# The methods of the paper's comparisons, in the paper's order (those absent from METHODS are skipped).
PAPER_METHODS = ("zeroshot", "linear_probe", "coop", "clip_adapter", "tip_adapter_f", "taskres", "taskres_enhanced")
PAPER_SHOTS = (1, 2, 4, 8, 16)
PAPER_SEEDS = (1, 2, 3)
DOMAIN_SOURCE = "imagenet"
REGIMES = ("cached", "online")
OWNER = "SweepConfig"  # the name option errors give the sweep's fields


# -- the sweep ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackboneSpec:
    """One backbone of a sweep; ``label`` names it in record names and tables (default: the model name)."""

    name: str
    pretrained: str = "default"
    device: str = "cpu"
    precision: str = "fp32"
    label: str | None = None
    quick_gelu: bool | None = None  # for a checkpoint file that cannot say (see backbone.weights_activation)

    def config(self) -> BackboneConfig:
        return BackboneConfig(self.name, self.pretrained, self.device, self.precision, self.quick_gelu)

    @property
    def display(self) -> str:
        # sanitised like every name that becomes part of a path: a label "../../x" must not leave the results
        return safe_name(self.label) if self.label else safe_name(Path(self.name).stem if self.name.endswith(".json")
                                                                  else self.name)

    def key(self) -> dict:
        """What decides the features: two specs with the same key give the same weights."""
        pretrained = self.pretrained
        if pretrained == "default" and self.name != MINI_MODEL and not self.name.startswith("hf-hub:"):
            pretrained = "openai"  # what "default" means for open_clip's own models (see backbone.py)
        if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt")):
            pretrained = Path(pretrained).name
        name = Path(self.name).name if self.name.endswith(".json") else self.name
        key = {"model": name, "pretrained": pretrained, "precision": self.precision}
        if self.quick_gelu is not None:  # only when given: the keys of existing sweeps stay as they were
            key["quick_gelu"] = self.quick_gelu
        return key


@dataclass
class SweepConfig:
    """Everything a bench run sweeps over and how each cell is run. Saved as ``sweep.json``."""

    protocol: str = "fewshot"
    datasets: list[str] = field(default_factory=list)  # for ``domain``: the source dataset(s)
    shots: list[int] = field(default_factory=lambda: list(PAPER_SHOTS))
    seeds: list[int] = field(default_factory=lambda: [1])
    methods: list[str] = field(default_factory=list)
    backbones: list[BackboneSpec] = field(default_factory=list)
    data_root: str | None = DATA_ROOT.field()
    targets: list[str] = field(default_factory=lambda: list(DOMAIN_SHIFT_TARGETS))  # domain protocol only
    regime: str = REGIME.field()
    views: int = VIEWS.field()
    augment: bool = AUGMENT.field()
    method_params: dict[str, dict] = field(default_factory=dict)  # method -> {parameter: value}
    cache_dir: str | None = CACHE_DIR.field()
    batch_size: int = BATCH_SIZE.field()
    num_workers: int | None = NUM_WORKERS.field()
    skip_bad_images: bool = SKIP_BAD_IMAGES.field()
    allow_fewer_shots: bool = ALLOW_FEWER_SHOTS.field()
    search_split: str = SEARCH_SPLIT.field()
    # how the cells read the cache; neither changes a result, so neither is part of a cell's key
    verify_cache: str | None = VERIFY_CACHE.field()
    memory_map: bool = MEMORY_MAP.field()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "sweep") -> "SweepConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        data["backbones"] = [b if isinstance(b, BackboneSpec) else BackboneSpec(**b) for b in data.get("backbones", [])]
        return cls(**data)


def safe_name(text: str) -> str:
    """A file-name-safe form of a label (record names encode backbone, dataset and method).

    Only letters, digits and ``._+-`` survive, and never a leading dot, so the result is one plain path
    component: no separator, no ``..``, no hidden file.
    """
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", str(text)).lstrip(".-").rstrip("-") or "x"


def dataset_label(spec: str) -> str:
    """Registered and demo names stay as they are; a folder path is named by its last component."""
    if os.sep in spec or Path(spec).is_dir():
        return safe_name(Path(spec).name)
    return safe_name(spec)


def preset(name: str, protocol: str = "fewshot") -> tuple[dict, list[str]]:
    """The settings of a named preset, and the paper methods missing from this install."""
    if name != "paper":
        raise OptionError("preset", f"must be 'paper', not {name!r}")
    methods = [m for m in PAPER_METHODS if m in METHODS]
    missing = [m for m in PAPER_METHODS if m not in METHODS]
    settings = {
        "datasets": [DOMAIN_SOURCE] if protocol == "domain" else list(PAPER_DATASETS),
        "shots": [16] if protocol in ("domain", "base2new") else list(PAPER_SHOTS),
        "seeds": list(PAPER_SEEDS),
        "methods": methods,
        "backbones": [{"name": "RN50", "pretrained": "openai"}],
    }
    return settings, missing


def read_sweep_file(path: str | Path) -> dict:
    """A YAML sweep: the keys of SweepConfig, plus ``pretrained``/``device``/``precision`` shared by
    backbones given as plain names. Unknown keys are an error naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise naming(ValueError, "{config}: no such file", config=_sweep_file(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise naming(ValueError, f"{{config}} is not valid YAML: {str(exc).splitlines()[0]}",
                     config=_sweep_file(path)) from None
    if not isinstance(data, dict):
        raise naming(ValueError, "{config} must hold a mapping of sweep settings", config=_sweep_file(path))
    shared = {k: data.pop(k) for k in ("pretrained", "device", "precision") if k in data}
    if "workers" in data:
        data["num_workers"] = data.pop("workers")
    if "backbones" in data:
        data["backbones"] = [_backbone_entry(b, shared, path) for b in _as_list(data["backbones"])]
    elif shared:
        data["_shared_backbone"] = shared
    known = {f.name for f in dataclasses.fields(SweepConfig)} | {"_shared_backbone"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise naming(ValueError, f"{{config}}: unknown key(s) {', '.join(unknown)}", config=_sweep_file(path))
    return _typed_file_values(data, path)


def _sweep_file(path) -> Mention:
    """A sweep file as errors name it: the library's "sweep file PATH", the CLI's ``--config PATH``."""
    return Mention(None, "config", path, said=f"sweep file {path}")


def _typed(value, annotation, where: str, mentions: dict, **kwargs):
    """typed_value, whose refusal names ``where``: a sentence with ``{NAME}`` placeholders of ``mentions``."""
    try:
        return typed_value(value, annotation, where, **kwargs)
    except ValueError as exc:  # its text is ``where`` and ours: fill our placeholders in it
        raise naming(ValueError, str(exc), **mentions) from None


# The element type of the sweep's list settings (a file may give one value, a list, or "1,2" text).
_LIST_ITEMS = {"datasets": "str", "methods": "str", "targets": "str", "shots": "int", "seeds": "int"}


def _typed_file_values(data: dict, path: Path) -> dict:
    """Each value of a sweep file checked against its SweepConfig field, by the conversion ``--set`` values go
    through (taskres.typed): ``views: 2.5``, ``shots: [2.7]``, ``augment: 'false'`` are refused in one line."""
    types = {f.name: f.type for f in dataclasses.fields(SweepConfig)}
    for key, value in data.items():
        where, config = f"{{config}}: {key}", {"config": _sweep_file(path)}
        if key in ("backbones", "_shared_backbone") or value is None:
            continue
        if key == "method_params":
            if not isinstance(value, dict) or not all(isinstance(v, dict) or v is None for v in value.values()):
                raise naming(ValueError, f"{where}: expected a mapping of method names to mappings of parameters "
                             f"(taskres: {{epochs: 50}}), not {value!r}", **config)
        elif key in _LIST_ITEMS:
            if isinstance(value, dict):
                raise naming(ValueError, f"{where}: expected a list, not the mapping {value!r}", **config)
            data[key] = [_typed(v, _LIST_ITEMS[key], where, config, text_bools=False) for v in _as_list(value)]
        else:
            data[key] = _typed(value, types[key], where, config, text_bools=False)
    return data


def _backbone_entry(entry, shared: dict, source) -> dict:
    types = {f.name: f.type for f in dataclasses.fields(BackboneSpec)}
    if isinstance(entry, str):
        entry = {"name": entry}
    if isinstance(entry, dict) and "name" in entry:
        bad = sorted(set(entry) - set(types))
        if bad:
            raise naming(ValueError, f"{{config}}: backbone key(s) {', '.join(bad)} unknown (known: "
                         f"{', '.join(sorted(types))})", config=_sweep_file(source))
        return {k: _typed(v, types[k], f"{{config}}: backbone {k}", {"config": _sweep_file(source)}, text_bools=False)
                for k, v in {**shared, **entry}.items()}
    raise naming(ValueError, f"{{config}}: a backbone is a model name or a mapping with 'name', not {entry!r}",
                 config=_sweep_file(source))


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [value]


def resolve_sweep(*layers: dict, set_items: list[str] = ()) -> SweepConfig:
    """Merge layers of settings (preset, file, flags; later wins), apply ``--set`` items, check it all."""
    merged: dict = {}
    shared_backbone: dict = {}  # defaults for backbones given by name (a file's top-level keys)
    override_backbone: dict = {}  # flags like --pretrained without --backbone: applied to every backbone
    for layer in layers:
        for key, value in layer.items():
            if value is None:
                continue
            if key == "_shared_backbone":
                shared_backbone.update(value)
            elif key == "_override_backbone":
                override_backbone.update({k: v for k, v in value.items() if v is not None})
            elif key == "method_params":
                if not isinstance(value, dict):
                    raise ValueError(f"method_params: expected a mapping of method names to parameters, not {value!r}")
                for m, params in value.items():
                    merged.setdefault("method_params", {}).setdefault(m, {}).update(params or {})
            else:
                merged[key] = value
    for key in ("datasets", "methods", "targets"):
        if key in merged:
            merged[key] = [str(v) for v in _as_list(merged[key])]
    for key in ("shots", "seeds"):
        if key in merged:
            merged[key] = [_typed(v, "int", "{key}", {"key": Mention(OWNER, key)}) for v in _as_list(merged[key])]
    merged["backbones"] = [
        BackboneSpec(**{**shared_backbone, **(dataclasses.asdict(b) if isinstance(b, BackboneSpec) else
                                              b if isinstance(b, dict) else {"name": b}), **override_backbone})
        for b in merged.get("backbones", [])]
    sweep = SweepConfig.from_dict(merged)
    _apply_set_items(sweep, set_items)
    check_sweep(sweep)
    return sweep


def _param_names(method: str) -> set[str]:
    params = METHODS[method].Params
    return {f.name for f in dataclasses.fields(params)} if dataclasses.is_dataclass(params) else set()


def _apply_set_items(sweep: SweepConfig, items) -> None:
    """``METHOD.KEY=VALUE`` sets one method's parameter; ``KEY=VALUE`` every swept method that has KEY."""
    for item in items or ():
        if "=" not in item:
            raise naming(ValueError, "{item}: expected [METHOD.]KEY=VALUE", item=_set_item(item))
        key, value = item.split("=", 1)
        # METHOD.KEY at the first dot: auto.taskres.lr is auto's parameter "taskres.lr"
        method, _, name = key.partition(".") if "." in key else ("", "", key)
        name = name.strip().replace("-", "_")
        if method:
            if method not in sweep.methods:
                raise naming(ValueError, f"{{item}}: method {method!r} is not in the sweep "
                             f"({', '.join(sweep.methods)})", item=_set_item(item))
            targets = [method]
        else:
            targets = [m for m in sweep.methods if m in METHODS and name in _param_names(m)]
            if not targets:
                raise naming(ValueError, f"{{item}}: no method of the sweep has a parameter {name!r}",
                             item=_set_item(item))
        for m in targets:
            sweep.method_params.setdefault(m, {})[name] = value


def _set_item(item: str) -> Mention:
    """One of resolve_sweep's ``set_items`` as errors name it (the CLI: ``--set ITEM``)."""
    return Mention(None, "set_items", item, said=f"set item {item!r}")


def check_sweep(sweep: SweepConfig) -> None:
    """Every option checked before any work starts; messages name the field at fault (the CLI: its flag)."""
    for f in dataclasses.fields(SweepConfig):  # a SweepConfig built in Python gets the sweep file's type checks
        if not any(k in str(f.type) for k in ("list", "dict")):
            typed_value(getattr(sweep, f.name), f.type, f"{OWNER}.{f.name}", text_bools=False)
    if sweep.protocol not in PROTOCOLS:
        raise OptionError("protocol", f"must be one of {', '.join(PROTOCOLS)}, not {sweep.protocol!r}", owner=OWNER)
    for key in ("datasets", "shots", "seeds", "methods", "backbones"):
        if not getattr(sweep, key):
            raise OptionError(key, "is empty: give at least one (or {preset}, or {config})", owner=OWNER, mentions={
                "preset": Mention(None, "preset", "paper", said="the settings of preset('paper')"),
                "config": Mention(None, "config", "FILE", said="a sweep file's, read_sweep_file(FILE)")})
    unknown = [m for m in sweep.methods if m not in METHODS]
    if unknown:
        raise OptionError("methods", f"names unknown method(s) {', '.join(unknown)} (known: {', '.join(METHODS)})",
                          owner=OWNER)
    if any(k < 1 for k in sweep.shots):
        raise OptionError("shots", f"must all be at least 1, not {sweep.shots}", owner=OWNER)
    from .api import check_seed

    for seed in sweep.seeds:
        check_seed(seed, "seeds", OWNER)
    if sweep.regime not in REGIMES:
        raise OptionError("regime", f"must be one of {', '.join(REGIMES)}, not {sweep.regime!r}", owner=OWNER)
    if sweep.views < 1:
        raise OptionError("views", f"must be at least 1, not {sweep.views}", owner=OWNER)
    if sweep.batch_size < 1:
        raise OptionError("batch_size", f"must be at least 1, not {sweep.batch_size}", owner=OWNER)
    if sweep.num_workers is not None and sweep.num_workers < 0:
        raise OptionError("num_workers", f"must be 0 or more, not {sweep.num_workers}", owner=OWNER)
    for b in sweep.backbones:  # what would fail in every cell fails now, before --dry-run says all is well
        if b.precision not in PRECISIONS:
            raise OptionError("precision", f"must be one of {', '.join(PRECISIONS)}, not {b.precision!r} (backbone "
                              f"{b.name})", owner="BackboneSpec")
        try:
            torch.device(b.device)
        except (RuntimeError, TypeError):
            raise OptionError("device", f"must be cpu or cuda[:N], not {b.device!r} (backbone {b.name})",
                              owner="BackboneSpec") from None
    check_options(sweep, ("verify_cache",))
    if sweep.regime == "online" and sweep.memory_map:  # as fit refuses it, but before any cell runs
        raise OptionError("memory_map", "with regime online: the online regime keeps no training views to map",
                          owner=OWNER)
    if sweep.search_split not in SEARCH_SPLITS:
        raise OptionError("search_split", f"must be one of {', '.join(SEARCH_SPLITS)}, not {sweep.search_split!r}",
                          owner=OWNER)
    if sweep.protocol == "domain" and not sweep.targets:
        raise OptionError("targets", "must name at least one target dataset for the domain protocol", owner=OWNER)
    for m in sweep.methods:  # bad parameter names or values fail now, not after hours of other cells
        check_regime(get_method(m, sweep.method_params.get(m)), sweep.regime)
    extra = sorted(set(sweep.method_params) - set(sweep.methods))
    if extra:
        raise ValueError(f"method_params: {', '.join(extra)} not in the sweep's methods")
    for what, labels in (("backbone", [b.display for b in sweep.backbones]),
                         ("dataset", [dataset_label(d) for d in sweep.datasets])):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"two {what}s of the sweep share the label {dup[0]!r}; give each backbone a "
                             "'label' (BackboneSpec.label, a key of a sweep file's backbones)" if what == "backbone"
                             else f"two datasets of the sweep share the name {dup[0]!r}")
    if sweep.data_root is not None:
        sweep.data_root = str(Path(sweep.data_root).expanduser().resolve())
    # Folder datasets become absolute paths, so records and rerun commands work from any directory.
    sweep.datasets = [str(Path(d).resolve()) if (os.sep in d and Path(d).is_dir()) else d for d in sweep.datasets]


# -- cells --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    protocol: str
    backbone: BackboneSpec
    dataset: str  # as given to load_dataset (a name, or an absolute folder path)
    method: str
    shots: int
    seed: int

    @property
    def name(self) -> str:
        """``<backbone>__<dataset>__<method>__<K>shot__seed<S>`` (+ ``__<protocol>`` outside few-shot)."""
        name = (f"{self.backbone.display}__{dataset_label(self.dataset)}__{safe_name(self.method)}__"
                f"{self.shots}shot__seed{self.seed}")
        return name if self.protocol == "fewshot" else f"{name}__{self.protocol}"

    def key(self, sweep: SweepConfig) -> dict:
        """Everything that decides this cell's result: a finished record with another key is not reused."""
        key = {
            "protocol": self.protocol, "backbone": self.backbone.key(), "dataset": dataset_label(self.dataset),
            "method": self.method, "method_params": {k: str(v) for k, v in
                                                     sorted(sweep.method_params.get(self.method, {}).items())},
            "shots": self.shots, "seed": self.seed, "regime": sweep.regime,
            "views": sweep.views if sweep.regime == "cached" else 0, "augment": sweep.augment,
            "allow_fewer_shots": sweep.allow_fewer_shots,
        }
        source = METHODS.source(self.method)
        if source is not None:  # a plugin: another version of its package is another result
            key["method_source"] = source.requirement()
        if self.protocol == "domain":
            key["targets"] = list(sweep.targets)
        if sweep.search_split != "fewshot":  # records made before the option searched the few-shot split
            key["search_split"] = sweep.search_split
        recipe = recipe_of(self.method, sweep.method_params.get(self.method))
        if not recipe.builds_like(TASKRES):  # records made with TaskRes's base for every method (issue 19) are stale
            key["text_recipe"] = recipe.key()
        return key


def expand(sweep: SweepConfig) -> list[Cell]:
    """Cells in running order: per backbone, per dataset, per (shots, seed) split, every method.

    Methods are innermost so that the features of one split are encoded once and read back from the cache.
    """
    return [Cell(sweep.protocol, b, d, m, k, s)
            for b in sweep.backbones for d in sweep.datasets for k in sweep.shots for s in sweep.seeds
            for m in sweep.methods]


# -- class subsets (base-to-new) ----------------------------------------------------------------------------
def subset_classes(task: TaskData, labels: list[int]) -> TaskData:
    """The task restricted to ``labels`` (in that order), relabelled 0..len(labels)-1.

    Images of other classes are dropped from every split. The name and templates stay those of the full
    dataset, so per-dataset defaults (looked up by name) still apply; class ids follow their classes. The few shots of
    the subset are drawn over the full dataset's classes and then subset (``TaskData.subset_of``), as CoOp
    draws them, so a seed picks the same images in both.
    """
    if not labels or len(set(labels)) != len(labels):
        raise DatasetError(f"{task.name}: a class subset needs distinct labels, got {labels}")
    bad = [y for y in labels if not 0 <= y < task.num_classes]
    if bad:
        raise DatasetError(f"{task.name}: labels {bad} are outside 0..{task.num_classes - 1}")
    new_label = {old: new for new, old in enumerate(labels)}

    def keep(samples: list[Sample]) -> list[Sample]:
        return [Sample(s.path, new_label[s.label]) for s in samples if s.label in new_label]

    return TaskData(
        name=task.name, classnames=[task.classnames[y] for y in labels], templates=list(task.templates),
        train=keep(task.train), val=keep(task.val), test=keep(task.test),
        class_ids=[task.class_ids[y] for y in labels] if task.class_ids else None,
        extra_splits={k: keep(v) for k, v in task.extra_splits.items()},
        subset_of=_full_task_labels(task, labels))


def _full_task_labels(task: TaskData, labels: list[int]) -> tuple[TaskData, tuple[int, ...]]:
    """The full task and its labels kept by a subset of ``task`` (itself maybe a subset): where shots are drawn."""
    if task.subset_of is None:
        return task, tuple(labels)
    full, kept = task.subset_of
    return full, tuple(kept[y] for y in labels)


def base_new_labels(num_classes: int) -> tuple[list[int], list[int]]:
    """CoCoOp's cut: the first ceil(C/2) labels are base, the rest new."""
    if num_classes < 2:
        raise DatasetError(f"base-to-new needs at least 2 classes, the dataset has {num_classes}")
    m = math.ceil(num_classes / 2)
    return list(range(m)), list(range(m, num_classes))


def harmonic_mean(a: float, b: float) -> float:
    if any(math.isnan(x) for x in (a, b)):
        return float("nan")
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def classifier_for_new_classes(method, classifier: Classifier, ctx) -> Classifier | None:
    """How the method scores classes it never saw, as it declares on its class (``Method.classifier_for_new_classes``);
    None (a NaN "new" score) where it cannot, or where a plugin's method does not say."""
    hook = getattr(method, "classifier_for_new_classes", None)
    return hook(classifier, ctx) if hook is not None else None


# -- running one cell ---------------------------------------------------------------------------------------
@dataclass
class CellEnv:
    """What the cells of one backbone share: loaded once by the bench, passed to every cell."""

    sweep: SweepConfig
    backbone: object  # taskres.backbone.Backbone
    cache: object  # taskres.features.FeatureCache
    load_task: Callable[[str], TaskData]  # memoised: each dataset is read once per sweep
    progress: bool = False


@dataclass
class CellOutcome:
    scores: dict[str, float | None]  # the headline numbers of the protocol (None: not measurable)
    fit_metrics: dict  # api.fit's metrics (resolved hyper-parameters, image counts, timings, versions)
    config: dict  # the resolved FitConfig of the training run
    rerun: list[str]  # commands that repeat the cell alone
    details: dict = field(default_factory=dict)


def fit_config(cell: Cell, sweep: SweepConfig, run_dir: Path, progress: bool):
    from .api import FitConfig

    return FitConfig(
        method=cell.method, dataset=cell.dataset, data_root=sweep.data_root, backbone=cell.backbone.config(),
        shots=cell.shots, seed=cell.seed, regime=sweep.regime, views=sweep.views, augment=sweep.augment,
        method_params=dict(sweep.method_params.get(cell.method, {})), eval_splits=("test",),
        cache_dir=sweep.cache_dir, out=str(run_dir), batch_size=sweep.batch_size, num_workers=sweep.num_workers,
        skip_bad_images=sweep.skip_bad_images, allow_fewer_shots=sweep.allow_fewer_shots,
        search_split=sweep.search_split, verify_cache=sweep.verify_cache, memory_map=sweep.memory_map,
        progress=progress)


def _nan_to_none(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


# A runner writes the cell's run folder into ``stage`` (the bench renames it to ``run_dir`` once the cell is
# complete); ``run_dir`` is where it will be, for the rerun commands and the saved config.
def run_fewshot(cell: Cell, env: CellEnv, run_dir: Path, stage: Path) -> CellOutcome:
    from .api import fit

    cfg = fit_config(cell, env.sweep, run_dir, env.progress)
    result = fit(cfg, backbone=env.backbone, task=env.load_task(cell.dataset), cache=env.cache, stage_dir=stage)
    rerun = [fit_command(cell, env.sweep, run_dir / "splits.json", run_dir.with_name(run_dir.name + "-rerun"))]
    return CellOutcome({"top1": _nan_to_none(result.metrics["top1"]["test"])}, result.metrics, cfg.to_dict(), rerun)


def run_domain(cell: Cell, env: CellEnv, run_dir: Path, stage: Path) -> CellOutcome:
    from .api import evaluate, fit

    sweep = env.sweep
    cfg = fit_config(cell, sweep, run_dir, env.progress)
    result = fit(cfg, backbone=env.backbone, task=env.load_task(cell.dataset), cache=env.cache, stage_dir=stage)
    source = dataset_label(cell.dataset)
    scores = {source: _nan_to_none(result.metrics["top1"]["test"])}
    details = {"source": source, "targets": list(sweep.targets), "num_images": {source: result.metrics[
        "num_images"]["test"]}, "class_subset": {}}
    rerun_dir = run_dir.with_name(run_dir.name + "-rerun")
    rerun = [fit_command(cell, sweep, run_dir / "splits.json", rerun_dir)]
    for target in sweep.targets:
        res = evaluate(result.classifier, target, data_root=sweep.data_root, backbone=env.backbone,
                       task=env.load_task(target), cache_dir=sweep.cache_dir, batch_size=sweep.batch_size,
                       num_workers=sweep.num_workers, skip_bad_images=sweep.skip_bad_images, progress=env.progress)
        scores[dataset_label(target)] = _nan_to_none(res["top1"])
        details["num_images"][dataset_label(target)] = res["num_images"]
        details["class_subset"][dataset_label(target)] = res["class_subset"]
        rerun.append(eval_command(rerun_dir, target, sweep))
    target_scores = [scores[dataset_label(t)] for t in sweep.targets]
    scores["target_average"] = (None if any(v is None for v in target_scores) else
                                sum(target_scores) / len(target_scores))
    return CellOutcome(scores, result.metrics, cfg.to_dict(), rerun, details)


def run_base2new(cell: Cell, env: CellEnv, run_dir: Path, stage: Path) -> CellOutcome:
    from .api import build_context, encode_split, fit
    from .classifier import save_classifier

    sweep = env.sweep
    task = env.load_task(cell.dataset)
    base_labels, new_labels = base_new_labels(task.num_classes)
    base_task, new_task = subset_classes(task, base_labels), subset_classes(task, new_labels)
    cfg = fit_config(cell, sweep, run_dir, env.progress)
    result = fit(cfg, backbone=env.backbone, task=base_task, cache=env.cache, stage_dir=stage)
    base = result.metrics["top1"]["test"]  # base test images, base classes only

    method = get_method(cell.method, sweep.method_params.get(cell.method))
    new_ctx = build_context(new_task, env.backbone, None, shots=cell.shots, seed=cell.seed, progress=env.progress,
                            recipe=method.recipe)
    new_clf = classifier_for_new_classes(method, result.classifier, new_ctx)
    details = {"base_classes": base_task.classnames, "new_classes": new_task.classnames,
               "num_images": {"base": result.metrics["num_images"]["test"], "new": 0}}
    if new_clf is None:
        new = float("nan")
        details["new_note"] = f"{cell.method} has no rule for classes it was not trained on"
    else:
        feats, labels = encode_split(cfg, env.backbone, env.cache, new_task.test, "encoding new-class test")
        new = top1_of(new_clf, feats, labels)  # new test images, new classes only
        details["num_images"]["new"] = len(labels)
        save_classifier(new_clf, stage / "classifier_new.safetensors")
    scores = {"base": _nan_to_none(base), "new": _nan_to_none(new), "hm": _nan_to_none(harmonic_mean(base, new))}
    # A class subset cannot be expressed as `taskres fit` options: the one-cell bench repeats it.
    return CellOutcome(scores, result.metrics, cfg.to_dict(), [], details)


PROTOCOL_RUNNERS: dict[str, Callable[[Cell, CellEnv, Path, Path], CellOutcome]] = {
    "fewshot": run_fewshot,
    "domain": run_domain,
    "base2new": run_base2new,
}


def top1_of(classifier: Classifier, feats: torch.Tensor, labels: torch.Tensor) -> float:
    from .api import top1

    with torch.no_grad():
        return top1(classifier(feats), labels)
