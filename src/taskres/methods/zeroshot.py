"""Zero-shot CLIP: the frozen text classifier, as CoOp's zero-shot trainers build it (KaiyangZhou/CoOp
trainers/zsclip.py; geekyutao/TaskRes carries the same file).

``templates`` picks the text recipe (methods/kit/text_recipe.py), and with it the classifier the run is given:
- ``dataset`` (default): ``ZeroshotCLIP``: the dataset's own template (CUSTOM_TEMPLATES; "a photo of a {}." on
  ImageNet and its variants), class names with "_" as spaces, normalised;
- ``single``: "a photo of a {}." for every dataset, names with spaces;
- ``ensemble``: ``ZeroshotCLIP2`` (also the trainer TaskRes's scripts/taskres/zeroshot.sh runs): the 7 ImageNet
  "select" templates plus the dataset's own template (not added on ImageNet itself), each template's class
  embeddings normalised, averaged, and normalised again, names with spaces.
``zeroshot_ens`` is the same method with ``templates=ensemble`` by default, so both can sit in one sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..classifier import CosineClassifier
from ..errors import OptionError
from .kit import text_recipe as recipes
from .base import FitContext, Method

SINGLE_TEMPLATE = recipes.PHOTO[0]
# CoOp trainers/imagenet_templates.py IMAGENET_TEMPLATES_SELECT (the CLIP authors' 7 chosen templates): the
# first 7 of the 8-template ImageNet ensemble, whose last is "a photo of a {}." (tested).
IMAGENET_TEMPLATES_SELECT = recipes.IMAGENET_SELECT
# --set templates=<choice> -> the text recipe it means
TEMPLATE_RECIPES = {"dataset": recipes.ZEROSHOT_CLIP, "single": recipes.SINGLE_PHOTO,
                    "ensemble": recipes.ZEROSHOT_CLIP2}
TEMPLATE_CHOICES = tuple(TEMPLATE_RECIPES)


def ensemble_templates(task_name: str, dataset_templates: list[str]) -> list[str]:
    """ZeroshotCLIP2's templates on a dataset whose own templates are ``dataset_templates``."""
    return recipes.ZEROSHOT_CLIP2.task_templates(task_name, dataset_templates)


def normalized_template_mean(encode_texts, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """mean_k normalize(g(template_k(c))), normalised: per-template normalisation, as zsclip.py."""
    return recipes.ZEROSHOT_CLIP2.build(lambda texts: encode_texts(texts).float(), classnames, templates)


@dataclass
class ZeroShotParams:
    templates: str = "dataset"  # "dataset" (ZeroshotCLIP) | "single" | "ensemble" (ZeroshotCLIP2)


@dataclass
class ZeroShot(Method):
    name = "zeroshot"
    paper = ('Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (CLIP), '
             'ICML 2021')
    Params = ZeroShotParams
    description = "zero-shot CLIP as CoOp's ZeroshotCLIP: the dataset's prompt template, names with spaces"
    text_recipe = recipes.ZEROSHOT_CLIP

    @classmethod
    def recipe_for(cls, hparams: dict | None = None):
        choice = (hparams or {}).get("templates", cls.Params().templates)
        if choice not in TEMPLATE_RECIPES:
            raise OptionError("templates", f"must be one of {', '.join(TEMPLATE_CHOICES)}, not {choice!r}",
                              method=cls.name)
        return TEMPLATE_RECIPES[choice]

    def fit(self, ctx: FitContext) -> CosineClassifier:
        """Nothing to learn: the text classifier the run was given, built by ``self.recipe``."""
        params = self.params or self.Params()
        ctx = ctx.with_recipe(self.recipe_for({"templates": params.templates}))  # an unknown choice fails here
        return CosineClassifier(ctx.meta(self.name, params), ctx.text_classifier, None, 0.0, ctx.logit_scale)

    def classifier_for_new_classes(self, classifier, ctx: FitContext) -> CosineClassifier:
        """Nothing is learned: the same recipe on the new class names (base-to-new)."""
        return self.fit(ctx)


@dataclass
class ZeroShotEnsembleParams(ZeroShotParams):
    templates: str = "ensemble"


@dataclass
class ZeroShotEnsemble(ZeroShot):
    name = "zeroshot_ens"
    Params = ZeroShotEnsembleParams
    description = "zero-shot CLIP as CoOp's ZeroshotCLIP2: 7 ImageNet templates + the dataset's, each normalised"
    text_recipe = recipes.ZEROSHOT_CLIP2
