"""The one interface every method implements: tensors in (a FitContext), a Classifier out.

A method never touches files or images. What it may use of the backbone is the text side
(``ctx.encode_texts`` / ``ctx.backbone``) for methods that learn through the text encoder.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from ..classifier import Classifier, ClassifierMeta
from ..errors import OptionError
from ..typed import typed_value
from .kit.text_recipe import TASKRES, TextRecipe

log = logging.getLogger("taskres")


class TrainingError(RuntimeError):
    """Training diverged or was configured impossibly; the message says which option to change."""


@dataclass
class FitContext:
    task_name: str
    classnames: list[str]  # the dataset's class names: what the classifier saves and a user sees
    templates: list[str]  # the templates the method's text recipe prompts with on this dataset
    text_classifier: torch.Tensor  # t [C, D], built by the method's text recipe (TaskRes: unnormalised mean)
    logit_scale: float  # CLIP's (log) temperature; logits use exp(logit_scale)
    train: Any  # CachedViews | OnlineAugmented: .features(idx, epoch), .labels, .num_samples, .dim
    shots: int
    seed: int
    backbone_identity: dict
    val_features: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    class_ids: list[str] | None = None
    backbone: Any = None  # the Backbone, for methods that go through the text encoder (CoOp, TaskRes*)
    progress: bool = True
    # aug_scale -> a fresh training source at that crop (taskres.fit sets it): --method auto fits candidates
    # whose reference crops differ from the one ``train`` was made with
    train_for: Callable[[Any], Any] | None = None
    prompt_classnames: list[str] | None = None  # the names the method prompts with (None: ``classnames``)
    text_recipe: TextRecipe | None = None  # the recipe that built ``text_classifier`` (None: not said)
    dataset_templates: list[str] | None = None  # the dataset's own templates (None: ``templates``)

    def __post_init__(self):
        if self.prompt_classnames is None:
            self.prompt_classnames = list(self.classnames)

    def with_recipe(self, recipe: TextRecipe) -> "FitContext":
        """This context as a method of ``recipe`` must see it (its prompt names, templates, text classifier).

        The same context when it already follows ``recipe`` or does not say which recipe built it (a context
        made by hand); else the classifier is built again through ``backbone``. For a caller that hands one
        context to several methods (a method that fits others)."""
        if self.text_recipe is None or recipe.builds_like(self.text_recipe):
            return self
        if self.backbone is None:
            raise TrainingError(f"the text classifier follows {self.text_recipe.source}, the method needs "
                                f"{recipe.source}, and no backbone was given to build it")
        own = self.dataset_templates if self.dataset_templates is not None else self.templates
        names, templates = recipe.prompt_names(self.classnames), recipe.task_templates(self.task_name, own)
        return dataclasses.replace(self, prompt_classnames=names, templates=templates, text_recipe=recipe,
                                   text_classifier=recipe.build(self.encode_texts, names, templates))

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        if self.backbone is None:
            raise TrainingError("this method needs the text encoder, but no backbone was given")
        return self.backbone.encode_texts(texts)

    def meta(self, method: str, hparams: Any, **extra) -> ClassifierMeta:
        hp = dataclasses.asdict(hparams) if dataclasses.is_dataclass(hparams) else dict(hparams or {})
        return ClassifierMeta(list(self.classnames), dict(self.backbone_identity), method,
                              list(self.class_ids) if self.class_ids else None, hp, extra)

    def all_train_features(self, epoch: int = 0) -> torch.Tensor:
        """Every training image once (one view each), e.g. for training-free methods."""
        return self.train.features(torch.arange(self.train.num_samples), epoch)


@dataclass
class Method:
    """Base of all methods. Subclasses set ``name``, ``Params`` and implement ``fit``."""

    params: Any = None
    name: ClassVar[str] = ""
    Params: ClassVar[type] = dict
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # the paper it reproduces (``taskres methods`` lists it)
    # The RandomResizedCrop area range of the method's training views, as its reference code crops them;
    # None: the un-augmented test transform. Default: Dassl's INPUT.RRCROP_SCALE (dassl/config/defaults.py),
    # the crop of every CoOp-based code base (TaskRes, CoOp, CLIP-Adapter, CLAP).
    aug_scale: ClassVar[tuple[float, float] | None] = (0.08, 1.0)
    # Why the method cannot train in the online regime (fresh augmentation through the encoder at every step),
    # or "" where it can: a method that reads its training images once, as cached views (training-free or
    # full-batch, as its reference code does), has no step to augment afresh.
    no_online: ClassVar[str] = ""
    # True where ``train_views="all"`` makes the method hold every cached view in memory at once (full-batch
    # steps on V x N rows): refused with memory-mapped views, which exist to avoid exactly that.
    all_views_in_memory: ClassVar[bool] = False
    # How the method's original builds its zero-shot text classifier (methods/kit/text_recipe.py). Default:
    # TaskRes's base, which methods that use no text (the linear probe) get for their zero-shot column.
    text_recipe: ClassVar[TextRecipe] = TASKRES

    @classmethod
    def recipe_for(cls, hparams: dict | None = None) -> TextRecipe:
        """The text recipe of a run with these parameters (a method whose recipe is a parameter overrides)."""
        return cls.text_recipe

    @property
    def recipe(self) -> TextRecipe:
        params = self.params
        return self.recipe_for(dataclasses.asdict(params) if dataclasses.is_dataclass(params) else params)

    @classmethod
    def crop_scale(cls, dataset: str) -> tuple[float, float] | None:
        """The crop of the training views on ``dataset``: ``aug_scale``, unless the release crops it otherwise."""
        return cls.aug_scale

    def fit(self, ctx: FitContext) -> Classifier:
        raise NotImplementedError

    def classifier_for_new_classes(self, classifier: Classifier, ctx: FitContext) -> Classifier | None:
        """Base-to-new: a classifier over ``ctx``'s classes, which ``classifier`` was never trained on, or None
        where the method cannot score classes it never saw (the run's "new" score is then NaN). A method
        that can overrides this; ``ctx`` holds the new classes' names and text classifier."""
        return None

    def resolved_params(self, ctx: FitContext) -> Any:
        """The parameters with dataset/backbone dependent defaults filled in (override when needed)."""
        return self.params


def check_regime(method: Method, regime: str, memory_map: bool = False) -> None:
    """Refuse, in one line, a regime the method cannot honour (rather than training on something else)."""
    if regime == "online" and method.no_online:
        raise OptionError("regime", f"online: {method.name} {method.no_online}; use regime cached")
    if memory_map and method.all_views_in_memory and getattr(method.params, "train_views", None) == "all":
        raise OptionError("train_views", f"all cannot go with memory_map: {method.name} holds every cached view "
                          "in memory at once; use train_views mean or one, or memory_map off", method=method.name)


def parse_overrides(params_cls: type, items: list[str] | dict | None, method: str | None = None) -> dict:
    """``["lr=1e-3", "epochs=50"]`` -> typed dict for ``params_cls``; unknown keys are an error (an
    :class:`OptionError` naming the field, and ``method`` where given)."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, dict) else (s.split("=", 1) if "=" in s else (s, None)
                                                           for s in items)
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    out = {}
    for key, value in pairs:
        key = key.strip().replace("-", "_")
        if key not in fields:
            raise OptionError(key, f"is not a parameter of this method (known: {', '.join(fields)})", method=method)
        if value is None:
            raise OptionError(key, "has no value (key=value)", method=method)
        out[key] = _convert(value, fields[key].type, key, method)
    return out


def _convert(value, annotation, key, method):
    # one conversion for --set text and typed values (a sweep file's method_params, the API): taskres.typed
    try:
        return typed_value(value, annotation, key)
    except ValueError as exc:  # "key: expected a whole number, not ..." -> "key must be a whole number, not ..."
        problem = str(exc)[len(key):].removeprefix(": expected ")
        raise OptionError(key, f"must be {problem}", method=method) from None


# What every method's parameter of a given name must satisfy: (what the message says, the test). One table
# for all methods, so a bad value fails when the method is built, before any image is encoded; a Params
# class adds its own checks in a ``validate(self)`` method.
_AT_LEAST_0 = ("at least 0", lambda v: v >= 0)
_AT_LEAST_1 = ("at least 1", lambda v: v >= 1)
_POSITIVE = ("positive", lambda v: v > 0)
PARAM_RULES: dict[str, tuple[str, Callable]] = {
    **dict.fromkeys(("epochs", "proj_epochs", "warmup_epochs", "proj_warmup_epochs", "refine_steps"), _AT_LEAST_0),
    **dict.fromkeys(("batch_size", "proj_batch_size", "n_ctx", "reduction", "max_iter", "alpha_every"),
                    _AT_LEAST_1),
    **dict.fromkeys(("lr", "eps", "c", "fallback_c", "init_scale"), _POSITIVE),
    **dict.fromkeys(("warmup_lr", "weight_decay", "proj_weight_decay", "init_std", "alpha", "beta", "init_alpha",
                     "init_beta", "fallback_alpha"), _AT_LEAST_0),
    "momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    "ratio": ("in [0, 1]", lambda v: 0 <= v <= 1),
}
# Text parameters that mean the same in every method that has them: the values they take.
CHOICE_RULES: dict[str, tuple[str, ...]] = {
    "train_views": ("all", "mean", "one"),  # kit/samples.py: train_matrix
}
# List-valued parameters: the rule each element obeys.
LIST_RULES: dict[str, tuple[str, Callable]] = {
    "proj_lrs": _POSITIVE, "c_grid": _POSITIVE, "alpha_grid": _AT_LEAST_0, "search_scale": _POSITIVE,
    "search_step": _AT_LEAST_1,
}


def validate_params(params: Any, method: str | None = None, warn: bool = True) -> None:
    """Check a method's parameters against :data:`PARAM_RULES` and its own ``validate``; one line per fault,
    an :class:`OptionError` naming the field (and ``method``). The one style of checking: when the method is
    built (``get_method``), and again in ``fit`` on the parameters resolved for the dataset (``warn`` off).

    Non-finite numbers are refused everywhere. ``epochs=0`` is allowed (the untrained starting point) but
    said out loud, so that a run that learned nothing is never reported silently as a trained one.
    """
    if not dataclasses.is_dataclass(params):
        return
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if isinstance(value, str) and f.name in CHOICE_RULES and value not in CHOICE_RULES[f.name]:
            raise OptionError(f.name, f"must be one of {', '.join(CHOICE_RULES[f.name])}, not {value!r}", method=method)
        if value is None or isinstance(value, (bool, str)):
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        rule = LIST_RULES.get(f.name) if isinstance(value, (list, tuple)) else PARAM_RULES.get(f.name)
        for v in values:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise OptionError(f.name, f"takes numbers, not {_show(value)}", method=method)
            if not math.isfinite(v):
                raise OptionError(f.name, f"must be a finite number, not {_show(value)}", method=method)
            if rule is not None and not rule[1](v):
                each = " (each value)" if isinstance(value, (list, tuple)) else ""
                raise OptionError(f.name, f"must be {rule[0]}{each}, not {_show(value)}", method=method)
    if warn and getattr(params, "epochs", None) == 0:
        log.warning("%sepochs=0: no training step is taken; the classifier is the method's starting point",
                    f"taskres.methods.{method}: " if method else "")
    own = getattr(params, "validate", None)
    if callable(own):
        try:
            own()
        except OptionError as exc:  # a Params class names its field; the method is named here
            if exc.method is not None or exc.owner is not None or method is None:
                raise
            raise OptionError(exc.field, exc.problem, method=method) from None


def one_of(field: str, value, choices) -> None:
    """A Params ``validate`` check: ``value`` is one of ``choices`` (the field named in the error)."""
    if value not in choices:
        raise OptionError(field, f"must be one of {', '.join(choices)}, not {value!r}")


def not_empty(field: str, values) -> None:
    """A Params ``validate`` check: a list that a search runs over has at least one value."""
    if not values:
        raise OptionError(field, "needs at least one value")


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


MethodFactory = Callable[..., Method]
