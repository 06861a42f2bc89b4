"""Method registry: an explicit mapping from ``--method`` names to method classes."""

from __future__ import annotations

from ..classifier import CosineClassifier
from .base import FitContext, Method, TrainingError, parse_overrides, validate_params
from .clip_adapter import AdapterClassifier, ClipAdapter
from .common import LinearClassifier
from .coop import CoOp, PromptClassifier
from .gda import GDA
from .linear_probe import LinearProbe
from .lpp import LPP
from .taskres import TaskRes
from .taskres_enhanced import TaskResEnhanced
from .tip_adapter import CacheClassifier, TipAdapter, TipAdapterF
from .zeroshot import ZeroShot

METHODS: dict[str, type[Method]] = {
    "zeroshot": ZeroShot,
    "taskres": TaskRes,
    # comparison methods (issue 3)
    "linear_probe": LinearProbe,
    "coop": CoOp,
    "clip_adapter": ClipAdapter,
    "tip_adapter": TipAdapter,
    "tip_adapter_f": TipAdapterF,
    "taskres_enhanced": TaskResEnhanced,
    "lpp": LPP,
    "gda": GDA,
}

# Classifier kinds that load_classifier understands.
CLASSIFIERS = {
    CosineClassifier.kind: CosineClassifier,
    LinearClassifier.kind: LinearClassifier,
    AdapterClassifier.kind: AdapterClassifier,
    CacheClassifier.kind: CacheClassifier,
    PromptClassifier.kind: PromptClassifier,
}


def get_method(name: str, overrides: list[str] | dict | None = None) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown --method {name!r}; choose from {', '.join(METHODS)}")
    cls = METHODS[name]
    try:
        params = cls.Params(**parse_overrides(cls.Params, overrides))
    except TypeError as exc:  # a dict of overrides from the Python API with a key the Params do not take
        raise ValueError(f"--method {name}: {exc}") from None
    validate_params(params)
    return cls(params)


__all__ = ["CLASSIFIERS", "METHODS", "FitContext", "Method", "TrainingError", "get_method", "parse_overrides",
           "validate_params"]
