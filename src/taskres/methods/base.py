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
from ..typed import typed_value

log = logging.getLogger("taskres")


class TrainingError(RuntimeError):
    """Training diverged or was configured impossibly; the message says which option to change."""


@dataclass
class FitContext:
    task_name: str
    classnames: list[str]
    templates: list[str]
    text_classifier: torch.Tensor  # t [C, D]: template mean of unnormalised text embeddings
    logit_scale: float  # CLIP's (log) temperature; logits use exp(logit_scale)
    train: Any  # CachedViews | OnlineAugmented: .features(idx, epoch), .labels, .num_samples, .dim
    shots: int
    seed: int
    backbone_identity: dict
    val_features: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    class_ids: list[str] | None = None
    dataset_alpha: float = 0.5
    dataset_lr: float | None = None
    backbone: Any = None  # the Backbone, for methods that go through the text encoder (CoOp, TaskRes*)
    progress: bool = True

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
    # The RandomResizedCrop area range of the method's training views, as its reference code crops them;
    # None: the un-augmented test transform. Default: Dassl's INPUT.RRCROP_SCALE (dassl/config/defaults.py),
    # the crop of every CoOp-based code base (TaskRes, CoOp, CLIP-Adapter, CLAP).
    aug_scale: ClassVar[tuple[float, float] | None] = (0.08, 1.0)

    def fit(self, ctx: FitContext) -> Classifier:
        raise NotImplementedError

    def resolved_params(self, ctx: FitContext) -> Any:
        """The parameters with dataset/backbone dependent defaults filled in (override when needed)."""
        return self.params


def parse_overrides(params_cls: type, items: list[str] | dict | None) -> dict:
    """``["lr=1e-3", "epochs=50"]`` -> typed dict for ``params_cls``; unknown keys are an error."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, dict) else (s.split("=", 1) if "=" in s else (s, None)
                                                           for s in items)
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    out = {}
    for key, value in pairs:
        key = key.strip().replace("-", "_")
        if key not in fields:
            raise ValueError(f"--set {key}: not a parameter of this method (known: {', '.join(fields)})")
        if value is None:
            raise ValueError(f"--set {key}: expected key=value")
        out[key] = _convert(value, fields[key].type, key)
    return out


def _convert(value, annotation, key):
    # one conversion for --set text and typed values (a sweep file's method_params, the API): taskres.typed
    return typed_value(value, annotation, f"--set {key}={value}" if isinstance(value, str) else f"--set {key}")


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
# List-valued parameters: the rule each element obeys.
LIST_RULES: dict[str, tuple[str, Callable]] = {
    "proj_lrs": _POSITIVE, "c_grid": _POSITIVE, "alpha_grid": _AT_LEAST_0, "search_scale": _POSITIVE,
    "search_step": _AT_LEAST_1,
}


def validate_params(params: Any) -> None:
    """Check a method's parameters against :data:`PARAM_RULES` and its own ``validate``; one line per fault.

    Non-finite numbers are refused everywhere. ``epochs=0`` is allowed (the untrained starting point) but
    said out loud, so that a run that learned nothing is never reported silently as a trained one.
    """
    if not dataclasses.is_dataclass(params):
        return
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if value is None or isinstance(value, (bool, str)):
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        rule = LIST_RULES.get(f.name) if isinstance(value, (list, tuple)) else PARAM_RULES.get(f.name)
        for v in values:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ValueError(f"--set {f.name} takes numbers, not {_show(value)}")
            if not math.isfinite(v):
                raise ValueError(f"--set {f.name} must be a finite number, not {_show(value)}")
            if rule is not None and not rule[1](v):
                each = " (each value)" if isinstance(value, (list, tuple)) else ""
                raise ValueError(f"--set {f.name} must be {rule[0]}{each}, not {_show(value)}")
    if getattr(params, "epochs", None) == 0:
        log.warning("--set epochs=0: no training step is taken; the classifier is the method's starting point")
    own = getattr(params, "validate", None)
    if callable(own):
        own()


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


MethodFactory = Callable[..., Method]
