"""Zero-shot CLIP: the frozen text classifier t itself (single template or the dataset's ensemble)."""

from __future__ import annotations

from dataclasses import dataclass

from ..backbone import text_classifier
from ..classifier import CosineClassifier
from .base import FitContext, Method

SINGLE_TEMPLATE = "a photo of a {}."


@dataclass
class ZeroShotParams:
    templates: str = "dataset"  # "dataset": the dataset's template(s) (an ensemble for ImageNet) | "single"


@dataclass
class ZeroShot(Method):
    name = "zeroshot"
    Params = ZeroShotParams
    description = "zero-shot CLIP with the dataset's prompt template(s)"

    def fit(self, ctx: FitContext) -> CosineClassifier:
        params = self.params or ZeroShotParams()
        if params.templates == "single":
            base = text_classifier(ctx.encode_texts, ctx.classnames, [SINGLE_TEMPLATE])
        elif params.templates == "dataset":
            base = ctx.text_classifier
        else:
            raise ValueError(f"--set templates must be 'dataset' or 'single', not {params.templates!r}")
        return CosineClassifier(ctx.meta(self.name, params), base, None, 0.0, ctx.logit_scale)
