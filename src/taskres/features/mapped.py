"""Memory-mapped training views: the cached views stay on disk and each batch reads its rows."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .shards import CachedFeatures
from .views import _ViewChoice


class MappedViews(_ViewChoice):
    """:class:`CachedViews` whose V views stay on disk: each batch gathers its rows from memory-mapped shards.

    Memory holds one batch, not [V, N, D], so the training set may be larger than RAM. The view each image
    shows in an epoch is drawn exactly as CachedViews draws it: the same cache and seed give the same
    batches. ``labels`` are aligned with the cached rows; rows the cache records as bad in any view
    (unreadable images, non-finite features) are dropped. ``device``: where batches (and labels) are delivered.
    """

    def __init__(self, views: Sequence[CachedFeatures], labels: torch.Tensor, seed: int = 0,
                 device: str | torch.device = "cpu"):
        if not views:
            raise ValueError("MappedViews needs at least one view")
        n = len(views[0])
        if any(len(v) != n or v.dim != views[0].dim for v in views) or len(labels) != n:
            raise ValueError("every view and the labels must have the same number of rows")
        bad = np.unique(np.concatenate([v.bad_rows for v in views]))
        self._rows = np.setdiff1d(np.arange(n), bad) if len(bad) else None
        self.mapped = list(views)  # deliberately not ``views``: that name means an in-memory [V, N, D] tensor
        self.device = torch.device(device)
        kept = labels if self._rows is None else labels[torch.from_numpy(self._rows)]
        self.labels = kept.to(self.device)
        self.seed = seed

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return self.mapped[0].dim

    @property
    def num_views(self) -> int:
        return len(self.mapped)

    def features(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        idx = idx.cpu()
        rows = idx.numpy() if self._rows is None else self._rows[idx.numpy()]
        if self.num_views == 1:
            out = self.mapped[0].rows(rows)
        else:
            choice = self.view_choice(epoch)[idx].numpy()
            out = torch.empty(len(rows), self.dim)
            for v in np.unique(choice):
                sel = np.flatnonzero(choice == v)
                out[torch.from_numpy(sel)] = self.mapped[v].rows(rows[sel])
        return out.to(self.device, non_blocking=True)

    def view_rows(self, view: int, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` of view ``view`` as float32 on the CPU, read from its shards (as CachedViews.view_rows)."""
        idx = idx.cpu().numpy()
        return self.mapped[view].rows(idx if self._rows is None else self._rows[idx])
