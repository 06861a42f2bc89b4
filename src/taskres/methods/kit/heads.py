"""The classifier heads the methods share: the zero-shot text classifier's rows and logits, the linear head
(the linear probe, LP++, GDA and CLAP save one)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...classifier import Classifier, ClassifierMeta, logit_scale_exp
from ..base import FitContext
from .samples import working_float


def normalized_text(ctx: FitContext) -> torch.Tensor:
    """The zero-shot classifier's rows on the unit sphere (t / |t|).

    t is built by the method's text recipe (methods/kit/text_recipe.py): Tip-Adapter, LP++ and GDA's recipe already
    normalises each template's embedding and the mean, so this is then t itself.
    """
    return F.normalize(working_float(ctx.text_classifier), dim=-1)


def zero_shot_logits(features_normed: torch.Tensor, text_normed: torch.Tensor, logit_scale: float) -> torch.Tensor:
    return logit_scale_exp(logit_scale) * features_normed @ text_normed.t()




class LinearClassifier(Classifier):
    """logits = normalize(f) @ W^T + b (or f @ W^T + b with ``normalize`` off)."""

    kind = "linear"

    def __init__(self, meta: ClassifierMeta, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 normalize: bool = True):
        super().__init__(meta)
        self.register_buffer("weight", weight.detach().float().cpu().clone())
        self.register_buffer("bias", torch.zeros(weight.shape[0]) if bias is None else
                             bias.detach().float().cpu().clone())
        self.normalize = bool(normalize)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.float()
        if self.normalize:
            x = F.normalize(x, dim=-1)
        return x @ self.weight.t() + self.bias

    def tensors(self):
        return {"weight": self.weight, "bias": self.bias}

    def config(self):
        return {"normalize": self.normalize}

    @classmethod
    def from_tensors(cls, tensors, meta, config):
        return cls(meta, tensors["weight"], tensors["bias"], config.get("normalize", True))
