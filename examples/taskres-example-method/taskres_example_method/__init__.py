"""An example taskres plugin: each class's mean image feature of the shots, mixed with CLIP's text classifier.

A method is tensors in, a classifier out: ``fit`` gets a ``FitContext`` (the text classifier t, the cached
training features, the logit scale) and returns a classifier. This one returns the built-in cosine
classifier, so its runs load, evaluate, predict and export wherever taskres is installed.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from taskres.classifier import CosineClassifier
from taskres.methods import FitContext, Method


@dataclass
class CentroidParams:
    mix: float = 0.5  # weight of the class means against the text classifier (--set mix=0.8)


@dataclass
class NearestCentroid(Method):
    name = "example_centroid"
    Params = CentroidParams
    description = "class means of the shots' image features, mixed with the text classifier"
    paper = "none: the example plugin of taskres (examples/taskres-example-method)"
    aug_scale = None  # one un-augmented view per training image

    def fit(self, ctx: FitContext) -> CosineClassifier:
        feats = F.normalize(ctx.all_train_features().float(), dim=-1)
        sums = torch.zeros(ctx.num_classes, feats.shape[1]).index_add_(0, ctx.train.labels, feats)
        weights = (1 - self.params.mix) * F.normalize(ctx.text_classifier.float(), dim=-1) + \
            self.params.mix * F.normalize(sums, dim=-1)
        return CosineClassifier(ctx.meta(self.name, self.params), weights, None, 0.0, ctx.logit_scale)
