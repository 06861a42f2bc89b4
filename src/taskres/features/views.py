"""In-memory training views: V cached augmented views per image, one shown per image per epoch."""

from __future__ import annotations

import torch

from ..transforms import sample_seed


def _view_choice(seed: int, epoch: int, num_views: int, num_samples: int) -> torch.Tensor:
    """Which view each image shows in ``epoch`` (its own generator: the batch order is unaffected)."""
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, 7))
    return torch.randint(num_views, (num_samples,), generator=g)


class _ViewChoice:
    """Which view each image shows in an epoch, drawn once per epoch (shared by the cached sources)."""

    seed: int
    _epoch: int | None = None
    _choice: torch.Tensor | None = None

    def view_choice(self, epoch: int) -> torch.Tensor:
        if self._epoch != epoch:
            self._choice = _view_choice(self.seed, epoch, self.num_views, self.num_samples)
            self._epoch = epoch
        return self._choice


class CachedViews(_ViewChoice):
    """Training features from V cached augmented views: each epoch, each image shows one random view."""

    def __init__(self, views: torch.Tensor, labels: torch.Tensor, seed: int = 0):
        if views.dim() == 2:
            views = views.unsqueeze(0)
        self.views = views  # [V, N, D]
        self.labels = labels
        self.seed = seed

    @property
    def num_samples(self) -> int:
        return self.views.shape[1]

    @property
    def dim(self) -> int:
        return self.views.shape[2]

    @property
    def num_views(self) -> int:
        return self.views.shape[0]

    def features(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        if self.num_views == 1:
            return self.views[0, idx]
        return self.views[self.view_choice(epoch)[idx], idx]

    def view_rows(self, view: int, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` of view ``view`` as float32 on the CPU (what the one-pass methods read, chunk by chunk)."""
        return self.views[view, idx.cpu()].float().cpu()
