"""Turning image files into encoder batches: DataLoader workers, per-image threads, encoder tuning."""

from __future__ import annotations

import contextlib
import os

import torch
from torch.utils.data import Dataset

from ..transforms import ImageError, load_image, sample_seed
from .keys import View, path_seed
from .shards import CacheEntry


def loader_workers(n: int, batch_size: int, requested: int | None, device_type: str = "cpu",
                    cpus: int | None = None) -> int:
    if requested is not None:
        return requested
    cpus = cpus or os.cpu_count() or 1
    if n <= 2 * batch_size:
        return 0
    # A GPU encoder outruns a handful of decoders: give them every core but the one feeding the GPU.
    # On a CPU the encoder needs the cores itself; a few workers keep up with it.
    return max(1, min(32, cpus - 1)) if device_type == "cuda" else min(8, cpus)

@contextlib.contextmanager
def _one_thread():
    """Per-image transforms run on tiny tensors: torch's intra-op threads only add overhead to them (13x
    slower with 2 threads than with 1 on a busy 2-core machine). DataLoader workers already use one thread;
    this covers transforms run in the main process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _ShardBatches(Dataset):
    """Whole batches for the DataLoader's workers: item (job, lo, hi) is rows lo..hi of entry ``job``.

    Decoding and transforms run in the workers; the main process only moves finished batches to the encoder.
    """

    def __init__(self, entries: list[CacheEntry], backbone, cast: torch.dtype | None):
        self.entries = entries
        self.test_transform = backbone.preprocess
        self.augmentation = backbone.augmentation
        self.size = backbone.image_size
        self.cast = cast

    def _image(self, path: str, view: View) -> tuple[torch.Tensor, str]:
        try:
            img = load_image(path)
        except ImageError as exc:
            return torch.zeros(3, self.size, self.size), str(exc)
        if view.kind == "aug":
            return view.augmentation(self.augmentation)(img, sample_seed(view.seed, view.index, path_seed(path))), ""
        return self.test_transform(img), ""

    def __getitem__(self, item):
        job, lo, hi = item
        entry = self.entries[job]
        with _one_thread():
            pairs = [self._image(p, entry.view) for p in entry.paths[lo:hi]]
            images = torch.stack([x for x, _ in pairs])
            if self.cast is not None:
                images = images.to(self.cast)
        errors = [e for _, e in pairs]
        ok = torch.tensor([not e for e in errors], dtype=torch.bool)
        return item, images, ok, errors


def prepare_encoder(backbone) -> torch.dtype | None:
    """Tune the frozen image encoder for bulk extraction; returns the dtype images may travel in.

    On CUDA: cuDNN picks its fastest kernels for the fixed input size, and convolutional towers (RN50 and
    kin) run channels-last (the layout tensor cores want; weights converted once, inputs follow). Under
    fp16/bf16 autocast the first layer casts its input anyway, so images cross to the GPU in that type,
    halving the copy. On CPU nothing changes.
    """
    if backbone.device.type != "cuda":
        return None
    torch.backends.cudnn.benchmark = True
    visual = backbone.model.visual
    if sum(isinstance(m, torch.nn.Conv2d) for m in visual.modules()) > 1:  # a ViT has one (patch embedding)
        visual.to(memory_format=torch.channels_last)
    return None if backbone.dtype == torch.float32 else backbone.dtype
