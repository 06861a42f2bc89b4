"""Zero-shot CLIP: the frozen text classifier, from the dataset's template(s), one template, or TaskRes's
prompt ensemble.

``templates``:
- ``dataset`` (default): t itself, the template mean of unnormalised embeddings (an 8-template ensemble on
  ImageNet, the dataset's one template elsewhere);
- ``single``: "a photo of a {}." for every dataset;
- ``ensemble``: TaskRes's ``ZeroshotCLIP2`` (geekyutao/TaskRes trainers/zsclip.py, the trainer its
  scripts/taskres/zeroshot.sh runs): the 7 ImageNet "select" templates plus the dataset's own template (not
  added on ImageNet itself), each template's class embeddings normalised, averaged, and normalised again.
``zeroshot_ens`` is the same method with ``templates=ensemble`` by default, so both can sit in one sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backbone import text_classifier
from ..classifier import CosineClassifier
from ..datasets.coop import IMAGENET_TEMPLATES
from .base import FitContext, Method

SINGLE_TEMPLATE = "a photo of a {}."
# TaskRes trainers/imagenet_templates.py IMAGENET_TEMPLATES_SELECT (the CLIP authors' 7 chosen templates): the
# first 7 of the 8-template ImageNet ensemble, whose last is "a photo of a {}.".
IMAGENET_TEMPLATES_SELECT = tuple(IMAGENET_TEMPLATES[:7])
TEMPLATE_CHOICES = ("dataset", "single", "ensemble")


def ensemble_templates(task_name: str, dataset_templates: list[str]) -> list[str]:
    """ZeroshotCLIP2's templates: the 7 select ones, then the dataset's own (CUSTOM_TEMPLATES) unless it is
    ImageNet. Our ImageNet variants carry the 8-template ensemble, whose one template outside the 7 is their
    CUSTOM_TEMPLATES entry "a photo of a {}.", so the dataset's templates not already among the 7 are added."""
    templates = list(IMAGENET_TEMPLATES_SELECT)
    if task_name != "imagenet":
        templates += [t for t in dataset_templates if t not in IMAGENET_TEMPLATES_SELECT]
    return templates


def normalized_template_mean(encode_texts, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """mean_k normalize(g(template_k(c))), normalised: per-template normalisation, as zsclip.py."""
    total = 0
    for template in templates:
        total = total + F.normalize(encode_texts([template.format(c) for c in classnames]).float(), dim=-1)
    return F.normalize(total / len(templates), dim=-1)


@dataclass
class ZeroShotParams:
    templates: str = "dataset"  # "dataset" | "single" | "ensemble" (TaskRes's ZeroshotCLIP2)


@dataclass
class ZeroShot(Method):
    name = "zeroshot"
    paper = ('Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (CLIP), '
             'ICML 2021')
    Params = ZeroShotParams
    description = "zero-shot CLIP with the dataset's prompt template(s)"

    def fit(self, ctx: FitContext) -> CosineClassifier:
        params = self.params or self.Params()
        if params.templates == "single":
            base = text_classifier(ctx.encode_texts, ctx.classnames, [SINGLE_TEMPLATE])
        elif params.templates == "dataset":
            base = ctx.text_classifier
        elif params.templates == "ensemble":
            base = normalized_template_mean(ctx.encode_texts, ctx.classnames,
                                            ensemble_templates(ctx.task_name, ctx.templates))
        else:
            raise ValueError(f"--set templates must be one of {', '.join(TEMPLATE_CHOICES)}, "
                             f"not {params.templates!r}")
        return CosineClassifier(ctx.meta(self.name, params), base, None, 0.0, ctx.logit_scale)

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
    description = "zero-shot CLIP with TaskRes's prompt ensemble (ZeroshotCLIP2: 7 ImageNet templates + the dataset's)"
