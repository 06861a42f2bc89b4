"""Small shared pieces of parity.tip_adapter and parity.clip_adapter (stub_modules: parity.coop's too): a
release's code fed cached features.

Loading the release and keeping it on the CPU is _stats_harness's (load, on_path, cpu_only); here are the
loaders and batch order that stand in for its images, and stubs for imports its parity path never calls.

Both releases were written for a GPU and for images; the parity runs feed them the fixture's cached features.
What is patched is said in each golden's ``meta["patches"]``; these helpers are those patches, nothing more.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types

import torch

from taskres.features.views import CachedViews


class _Unused(types.ModuleType):
    """An import-only stand-in: the module may be imported, but any use of it fails loudly."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def unused(*args, **kwargs):
            raise RuntimeError(f"{self.__name__}.{name} was stubbed for the parity run and must not be called")

        return unused


def stub_modules(names: list[str], only_missing: bool = False) -> None:
    """Let a release import packages its parity path never calls (gdown, tensorboard, ...), uninstalled.

    A module already imported is kept; with ``only_missing`` (CoOp's run), so is one that imports."""
    for name in names:
        if name in sys.modules or (only_missing and _imports(name)):
            continue
        module = _Unused(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = module


def _imports(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def epoch_permutations(n: int, epochs: int, seed: int) -> torch.Tensor:
    """[epochs, n]: each epoch's shuffle, drawn as taskres's training loops draw it (one ``torch.randperm``
    per epoch from ``torch.Generator().manual_seed(seed)``), so both sides see the same batches."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=gen) for _ in range(epochs)])


class FeatureLoader:
    """A stand-in for a release's training DataLoader that yields cached features instead of images.

    Epoch e (the e-th iteration over the loader) shows view ``e % V`` of every image, in the order
    ``order[e]`` (or in index order with ``order=None``), cut into ``batch_size`` batches; ``drop_last`` as the
    release's own loader sets it. ``as_dict`` yields Dassl's batch dicts ({"img", "label"}), else tuples.
    """

    def __init__(self, views: torch.Tensor, labels: torch.Tensor, batch_size: int, drop_last: bool,
                 order: torch.Tensor | None = None, as_dict: bool = False):
        self.views, self.labels, self.batch_size, self.drop_last = views, labels, batch_size, drop_last
        self.order, self.as_dict, self.epoch = order, as_dict, 0

    def __len__(self) -> int:
        n = self.views.shape[1]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = self.views.shape[1]
        perm = torch.arange(n) if self.order is None else self.order[self.epoch]
        view = self.views[self.epoch % self.views.shape[0]]
        self.epoch += 1
        for b in range(len(self)):
            idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
            # clone: the releases normalise their encoder's output in place
            feats, labels = view[idx].clone(), self.labels[idx].clone()
            yield {"img": feats, "label": labels} if self.as_dict else (feats, labels)


class EpochViews(CachedViews):
    """taskres's in-memory training source (:class:`CachedViews`) with the releases' view order: epoch e shows
    view ``e % V`` of every image, as :class:`FeatureLoader` does for the release, instead of a seeded draw."""

    def view_choice(self, epoch: int) -> torch.Tensor:
        # the hook every reader of CachedViews' choice goes through (its features, TaskRes's normalised copy)
        return torch.full((self.num_samples,), epoch % self.num_views)

    def view_rows(self, view: int, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` of one view in the views' dtype (CachedViews gives float32): the float64 run stays float64."""
        return self.views[view, idx]
