"""The training images as a method reads them: one matrix, streamed samples, class moments.

Nothing here reads files: everything comes from a ``FitContext``'s training source (cached views in memory
or memory-mapped). Methods fitted in closed form or full batch take the matrix; methods that use every view
(GDA, CLAP) stream the samples so that memory-mapped views are never held at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from ...errors import OptionError
from ..base import CHOICE_RULES, FitContext, TrainingError

TRAIN_VIEWS = CHOICE_RULES["train_views"]
ROW_CHUNK = 8192  # training rows read at a time where a method streams its samples (memory-mapped views)


def working_float(x: torch.Tensor) -> torch.Tensor:
    """float32 for half, bfloat16 or float32 inputs; float64 stays float64 (the parity checks run the methods in
    float64 against their authors' code, where float32 round-off would hide a real difference)."""
    return x if x.dtype == torch.float64 else x.float()


def train_matrix(ctx: FitContext, views: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """The training images as one matrix, for methods fitted in closed form or full batch.

    ``all``: every cached augmented view is a sample (V * N rows, view by view); ``mean``: the mean of each
    image's views (Tip-Adapter's cache keys average 10 augmented passes); ``one``: the single view each image
    shows in epoch 0. In-memory and memory-mapped views give the same matrix: the mean is accumulated view by
    view, in chunks of rows, the same way for both. ``all`` from memory-mapped views would hold every view in
    memory at once, which ``--memory-map`` exists to avoid: refused there (methods that use every view,
    GDA and CLAP, stream them with :class:`TrainSamples`). CPU float32 tensors (float64 for float64 views).
    """
    check_train_views(views)
    source = cached_source(ctx)
    labels = source.labels.cpu()
    if views == "one":
        return working_float(ctx.all_train_features(0)).cpu(), labels
    if views == "mean":
        return view_mean(source), labels
    v, n = source.num_views, source.num_samples
    if getattr(source, "views", None) is not None:  # in memory already: a view of it, no copy
        return working_float(source.views).cpu().reshape(v * n, source.dim), labels.repeat(v)
    if v > 1:
        raise TrainingError("train_views=all with memory-mapped views: this method holds every cached view in "
                            f"memory at once ({v} x {n} rows); use train_views=mean or one, or memory_map off")
    return source.view_rows(0, torch.arange(n)), labels


def check_train_views(views: str) -> None:
    if views not in TRAIN_VIEWS:
        raise OptionError("train_views", f"must be one of {', '.join(TRAIN_VIEWS)}, not {views!r}")


def cached_source(ctx: FitContext):
    """The training source, which must hold cached views (in memory or memory-mapped)."""
    source = ctx.train
    if not hasattr(source, "view_rows"):  # the online regime: images re-encoded at every step, nothing cached
        raise TrainingError("regime online: this method reads the training images once, as cached views "
                            "(its reference regime); use regime cached")
    return source


def row_chunks(n: int, size: int | None = None):
    size = size or ROW_CHUNK
    for start in range(0, n, size):
        yield torch.arange(start, min(n, start + size))


def view_mean(source) -> torch.Tensor:
    """The mean of each image's cached views [N, D], accumulated in float64 view by view, chunk by chunk
    (memory holds the mean and one chunk, never the V views); float32, or float64 for float64 views."""
    n, total = source.num_samples, torch.zeros(source.num_samples, source.dim, dtype=torch.float64)
    dtype = torch.float32
    for v in range(source.num_views):
        for idx in row_chunks(n):
            rows = source.view_rows(v, idx)
            dtype = torch.float64 if rows.dtype == torch.float64 else dtype
            total[idx] += rows.double()
    return (total / source.num_views).to(dtype)


class TrainSamples:
    """The samples ``train_matrix(ctx, views)`` stacks, read chunk by chunk or by index, never all at once.

    For ``views="all"`` sample ``i`` is view ``i // N`` of image ``i % N`` (the matrix's view-major order),
    gathered from the source's views (in memory or memory-mapped: the same rows either way); ``mean`` and
    ``one`` are N rows held in memory (the matrix itself).
    """

    def __init__(self, ctx: FitContext, views: str = "all"):
        check_train_views(views)
        self.source = cached_source(ctx)
        self.matrix = None
        if views == "all":
            self.num_images = self.source.num_samples
            self.labels = self.source.labels.cpu().repeat(self.source.num_views)
        else:
            self.matrix, self.labels = train_matrix(ctx, views)

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Samples ``idx`` (any order) as a float32 CPU tensor [len(idx), D]."""
        if self.matrix is not None:
            return self.matrix[idx]
        view, image = idx // self.num_images, idx % self.num_images
        out = torch.empty(len(idx), self.source.dim)
        for v in view.unique().tolist():
            sel = view == v
            out[sel] = self.source.view_rows(v, image[sel])
        return out

    def chunks(self, size: int | None = None):
        """(samples, labels) in order, ``size`` rows at a time."""
        for idx in row_chunks(len(self), size):
            yield self.rows(idx), self.labels[idx]


@dataclass
class ClassMoments:
    """Per-class counts and means, and the scatter of the class-centred samples sum_i (x_i - mu_y)(x_i - mu_y)^T,
    accumulated in float64 (two passes over the samples, chunk by chunk)."""

    counts: torch.Tensor  # [C]
    means: torch.Tensor  # [C, D]
    scatter: torch.Tensor  # [D, D]

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())


def class_moments(sample_chunks: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], num_classes: int,
                  normalize: bool = True) -> ClassMoments:
    """Class means and centred scatter of the (row-normalised) samples that ``sample_chunks()`` yields as
    (rows, labels) chunks (e.g. ``TrainSamples.chunks``), streamed: memory holds one chunk."""
    def chunks():
        for x, y in sample_chunks():
            yield (F.normalize(x, dim=-1) if normalize else x).double(), y

    sums, counts = None, torch.zeros(num_classes, dtype=torch.float64)
    for x, y in chunks():
        one_hot = F.one_hot(y, num_classes).to(x.dtype)
        sums = one_hot.t() @ x if sums is None else sums + one_hot.t() @ x
        counts += one_hot.sum(dim=0)
    means = sums / counts.clamp(min=1)[:, None]
    scatter = 0
    for x, y in chunks():
        centred = x - means[y]
        scatter = scatter + centred.t() @ centred
    return ClassMoments(counts, means, scatter)




def check_classes(ctx: FitContext, labels: torch.Tensor) -> None:
    missing = sorted(set(range(ctx.num_classes)) - set(labels.unique().tolist()))
    if missing:
        raise TrainingError(f"the training split has no image of class {ctx.classnames[missing[0]]!r} "
                            f"({len(missing)} class(es) without a shot); this method needs every class")
