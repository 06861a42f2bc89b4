"""Tuned classifiers: small objects that turn image features into logits, saved as safetensors.

A classifier file holds tensors and one JSON metadata entry (kind, class names, backbone identity,
hyper-parameters). Loading never unpickles anything. Each classifier kind registers itself in
``CLASSIFIERS`` when its class is defined (its module imported), so this module imports no method.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .atomic import atomic_path, write_bytes
from .errors import Mention, naming

FORMAT_VERSION = 1
CLASSIFIERS: dict[str, type["Classifier"]] = {}  # kind -> class, filled by Classifier.__init_subclass__


class ClassifierError(ValueError):
    """A classifier file is unreadable or does not fit the backbone or classes it is used with."""


@dataclass
class ClassifierMeta:
    classnames: list[str]
    backbone: dict  # Backbone.identity of the model whose features it takes
    method: str
    class_ids: list[str] | None = None
    hparams: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


class Classifier(torch.nn.Module):
    """Image features [N, D] (unnormalised, as the encoder gives them) -> logits [N, C]."""

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__ and cls.kind:  # a subclass that names a new kind registers it for loading
            other = CLASSIFIERS.get(cls.kind)
            if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
                raise TypeError(f"classifier kind {cls.kind!r} is taken by {other.__module__}.{other.__qualname__}")
            CLASSIFIERS[cls.kind] = cls

    def __init__(self, meta: ClassifierMeta):
        super().__init__()
        self.meta = meta

    @property
    def classnames(self) -> list[str]:
        return self.meta.classnames

    def tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: ClassifierMeta, config: dict) -> "Classifier":
        raise NotImplementedError

    def config(self) -> dict:
        """Scalars the kind needs besides its tensors (stored in the metadata)."""
        return {}

    @torch.no_grad()
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self(features).softmax(dim=-1)


def cosine_logits(features: torch.Tensor, weights: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """CLIP's logits: exp(logit_scale) * cos(image feature, class weight)."""
    return logit_scale_exp(logit_scale) * F.normalize(features, dim=-1) @ F.normalize(weights, dim=-1).t()


def logit_scale_exp(logit_scale: float) -> float:
    # in double: a float32 exp moves float64 logits by ~1e-7 relative (CLIP's own exp runs in the model's dtype)
    return math.exp(float(logit_scale))


class CosineClassifier(Classifier):
    """Zero-shot CLIP and TaskRes: logits = s * cos(f, t + alpha * x), t the frozen text base, x the residual."""

    kind = "cosine"

    def __init__(self, meta: ClassifierMeta, base: torch.Tensor, residual: torch.Tensor | None = None,
                 alpha: float = 0.0, logit_scale: float = 0.0):
        super().__init__(meta)
        self.register_buffer("base", base.float().clone())
        self.register_buffer("residual", torch.zeros_like(self.base) if residual is None else
                             residual.float().clone())
        self.alpha = float(alpha)
        self.logit_scale = float(logit_scale)

    def weights(self) -> torch.Tensor:
        return self.base + self.alpha * self.residual  # t' = t + alpha * x

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features.float(), self.weights(), self.logit_scale)

    def tensors(self):
        return {"base": self.base, "residual": self.residual}

    def config(self):
        return {"alpha": self.alpha, "logit_scale": self.logit_scale}

    @classmethod
    def from_tensors(cls, tensors, meta, config):
        return cls(meta, tensors["base"], tensors["residual"], config["alpha"], config["logit_scale"])


def save_classifier(clf: Classifier, path: str | Path) -> None:
    meta = {
        "format": FORMAT_VERSION,
        "kind": clf.kind,
        "classnames": clf.meta.classnames,
        "class_ids": clf.meta.class_ids,
        "backbone": clf.meta.backbone,
        "method": clf.meta.method,
        "hparams": clf.meta.hparams,
        "extra": clf.meta.extra,
        "config": clf.config(),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in clf.tensors().items()}
    data = save(tensors, metadata={"taskres": json.dumps(meta)})  # bytes: a full disk is then an OSError here
    with atomic_path(Path(path)) as tmp:
        write_bytes(tmp, data)


def load_classifier(path: str | Path) -> Classifier:
    path = Path(path)
    if path.is_dir():
        path = path / "classifier.safetensors"
    if not path.is_file():
        raise ClassifierError(f"classifier file not found: {path}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("taskres")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ClassifierError(f"{path} is not a safetensors classifier file ({exc})") from None
    if raw is None:
        raise ClassifierError(f"{path} holds no taskres metadata: not a classifier saved by taskres")
    meta = _read_meta(raw, path)
    kind = meta.get("kind")
    if kind not in CLASSIFIERS:
        from .plugins import load_method_modules, missing_plugin_hint

        load_method_modules()  # the built-in kinds, and the plugins' (their modules define theirs)
        if kind not in CLASSIFIERS:
            raise ClassifierError(f"{path}: unknown classifier kind {kind!r} (known: {', '.join(CLASSIFIERS)})"
                                  + missing_plugin_hint((meta.get("extra") or {}).get("method_source")))
    damaged = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if damaged:
        raise ClassifierError(f"{path}: tensor {damaged[0]!r} holds NaN or inf values (training diverged, or the file "
                              "is damaged); fit the run again")
    info = ClassifierMeta(meta["classnames"], meta["backbone"], meta["method"], meta.get("class_ids"),
                          meta.get("hparams") or {}, meta.get("extra") or {})
    try:
        clf = CLASSIFIERS[kind].from_tensors(tensors, info, meta.get("config") or {})
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise ClassifierError(f"{path}: its tensors or settings do not make a {kind!r} classifier "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
    return clf


def _read_meta(raw: str, path: Path) -> dict:
    """The file's taskres metadata, checked for what loading needs (one line naming the file otherwise)."""
    try:
        meta = json.loads(raw)
    except ValueError:
        raise ClassifierError(f"{path}: its taskres metadata is not JSON (a damaged or hand-edited file)") from None
    if not isinstance(meta, dict):
        raise ClassifierError(f"{path}: its taskres metadata is not a JSON object")
    missing = [k for k in ("kind", "classnames", "backbone", "method") if k not in meta]
    if missing:
        raise ClassifierError(f"{path}: its taskres metadata lacks {', '.join(map(repr, missing))}")
    if not isinstance(meta["classnames"], list) or not all(isinstance(c, str) for c in meta["classnames"]):
        raise ClassifierError(f"{path}: its class names are not a list of texts")
    if not isinstance(meta["backbone"], dict):
        raise ClassifierError(f"{path}: its backbone identity is not a JSON object")
    return meta


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


def check_width(clf: Classifier, dim: int, source: str = "classifier") -> None:
    """Refuse, in one line, a classifier that does not take ``dim``-wide features or does not give one score per
    class name (a file whose tensors were cut, or made for another backbone under the same name)."""
    try:
        with torch.no_grad():
            out = clf(torch.ones(2, dim))
    except (RuntimeError, IndexError, ValueError) as exc:
        raise ClassifierError(f"{source} does not take the backbone's {dim}-wide features "
                              f"({_first_line(exc)})") from None
    if tuple(out.shape) != (2, len(clf.classnames)):
        raise ClassifierError(f"{source} gives {tuple(out.shape)[1:]} scores per image for its "
                              f"{len(clf.classnames)} class names")


def check_backbone(clf: Classifier, identity: dict, source: str = "classifier") -> None:
    # the activation is part of the backbone: the same weights through nn.GELU give other features
    want = {k: clf.meta.backbone.get(k) for k in ("model", "fingerprint", "activation")}
    have = {k: identity.get(k) for k in ("model", "fingerprint", "activation")}
    if want != have:
        raise naming(
            ClassifierError,
            f"{source} was trained on backbone {want['model']} (weights {want['fingerprint']}, activation "
            f"{want['activation'] or 'not recorded'}), but the features come from {have['model']} (weights "
            f"{have['fingerprint']}, activation {have['activation']}); give the same {{name}}/{{pretrained}}"
            f"{'' if want['activation'] else ', or refit: classifiers saved before the activation was recorded'}",
            name=Mention("BackboneConfig", "name"), pretrained=Mention("BackboneConfig", "pretrained"))


def class_rows(clf: Classifier, classnames: list[str], class_ids: list[str] | None) -> torch.Tensor | None:
    """Rows of ``clf`` for a dataset's classes: None when identical, an index when a subset (ImageNet-A/R)."""
    if classnames == clf.meta.classnames:
        return None
    if class_ids and clf.meta.class_ids:
        pos = {c: i for i, c in enumerate(clf.meta.class_ids)}
        keys, source = class_ids, "class ids"
    else:
        pos = {c: i for i, c in enumerate(clf.meta.classnames)}
        keys, source = classnames, "class names"
    missing = [k for k in keys if k not in pos]
    if missing:
        raise ClassifierError(
            f"the classifier does not know {len(missing)} of the dataset's {len(keys)} classes by {source} "
            f"(e.g. {missing[0]!r}); it was trained on {len(clf.meta.classnames)} other classes")
    return torch.tensor([pos[k] for k in keys])
