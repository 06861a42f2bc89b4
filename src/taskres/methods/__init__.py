"""Method registry: an explicit mapping from ``--method`` names to method classes."""

from __future__ import annotations

from ..classifier import CosineClassifier
from .base import FitContext, Method, TrainingError, parse_overrides
from .taskres import TaskRes
from .zeroshot import ZeroShot

METHODS: dict[str, type[Method]] = {
    "zeroshot": ZeroShot,
    "taskres": TaskRes,
}

# Classifier kinds that load_classifier understands.
CLASSIFIERS = {
    CosineClassifier.kind: CosineClassifier,
}


def get_method(name: str, overrides: list[str] | dict | None = None) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown --method {name!r}; choose from {', '.join(METHODS)}")
    cls = METHODS[name]
    return cls(cls.Params(**parse_overrides(cls.Params, overrides)))


__all__ = ["CLASSIFIERS", "METHODS", "FitContext", "Method", "TrainingError", "get_method", "parse_overrides"]
