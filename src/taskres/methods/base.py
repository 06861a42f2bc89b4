"""The one interface every method implements: tensors in (a FitContext), a Classifier out.

A method never touches files or images. What it may use of the backbone is the text side
(``ctx.encode_texts`` / ``ctx.backbone``) for methods that learn through the text encoder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from ..classifier import Classifier, ClassifierMeta


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
    if not isinstance(value, str):
        return value
    text = str(annotation)
    if value.lower() in ("none", "null") and "None" in text:
        return None
    if value.strip().lower() == "auto" and "'auto'" in text.replace('"', "'"):
        return "auto"  # a field annotated Literal["auto"] (TaskRes's alpha, lr): searched by the method
    try:
        if "bool" in text:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if "int" in text and "float" not in text:
            return int(value)
        if "float" in text:
            return float(value)
    except ValueError:
        raise ValueError(f"--set {key}={value}: expected {text}") from None
    if "list" in text or "tuple" in text:
        return [float(v) for v in value.split(",")]
    return value


MethodFactory = Callable[..., Method]
