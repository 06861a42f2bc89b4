"""The reference regime as a training source: fresh augmentation through the image encoder at every step."""

from __future__ import annotations

import torch

from ..datasets.base import Sample
from ..transforms import load_image, sample_seed
from .extract import _one_thread
from .keys import path_seed


class OnlineAugmented:
    """The reference regime: every step loads its images, augments them afresh and encodes them."""

    def __init__(self, backbone, samples: list[Sample], seed: int = 0, augment: bool = True, scale=None):
        self.backbone = backbone
        # the backbone's augmentation at the method's crop scale (None: as it is)
        self.augmentation = backbone.augmentation if scale is None else backbone.augmentation.with_scale(scale)
        self.samples = samples
        self.labels = torch.tensor([s.label for s in samples])
        self.seed = seed
        self.augment = augment
        self._images: dict[int, object] = {}

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    @property
    def dim(self) -> int:
        return self.backbone.embed_dim

    def _image(self, i: int):
        if i not in self._images:  # few-shot sets are small: keep the decoded images
            self._images[i] = load_image(self.samples[i].path)
        return self._images[i]

    def features(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        batch = []
        with _one_thread():
            for i in idx.tolist():
                img = self._image(i)
                if self.augment:
                    seed = sample_seed(self.seed, 1000003 + epoch, path_seed(self.samples[i].path))
                    batch.append(self.augmentation(img, seed))
                else:
                    batch.append(self.backbone.preprocess(img))
            batch = torch.stack(batch)
        return self.backbone.encode_images(batch)
