"""Image loading and the reference training augmentation, with seeds that do not depend on workers.

The reference code draws RandomResizedCrop(scale 0.08-1, bicubic) and a horizontal flip from a global
random state (Dassl's default INPUT.RRCROP_SCALE; Tip-Adapter, LP++ and GDA crop with scale 0.5-1: a method
says which scale its views use, see ``Method.aug_scale``). Here every (seed, view, image index) owns its own
generator, so a cached view is the same whichever process, worker or batch computed it, and a run can be
repeated exactly.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF


class ImageError(ValueError):
    """An image file could not be read; the message names the file."""


def load_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"unreadable or corrupt image: {path} ({type(exc).__name__})") from None


def sample_seed(*parts: int) -> int:
    """A 32-bit seed from integers (run seed, view, epoch, image index...), stable across processes."""
    return zlib.crc32(np.asarray(parts, dtype=np.int64).tobytes())


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) drawn as torchvision's RandomResizedCrop draws it, from an explicit generator."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # fallback: the central crop with the ratio clamped into range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


DEFAULT_SCALE = (0.08, 1.0)  # Dassl's INPUT.RRCROP_SCALE (dassl/config/defaults.py), torchvision's default


def check_scale(scale) -> tuple[float, float]:
    """A RandomResizedCrop area range (lo, hi) with 0 < lo <= hi <= 1."""
    try:
        lo, hi = (float(v) for v in scale)
    except (TypeError, ValueError):
        raise ValueError(f"an augmentation scale is two numbers (lo, hi), not {scale!r}") from None
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"an augmentation scale needs 0 < lo <= hi <= 1, not {scale!r}")
    return lo, hi


class ReferenceAugmentation:
    """RandomResizedCrop(size, scale (lo, hi), bicubic) + horizontal flip + normalisation."""

    def __init__(self, size: int, mean, std, scale=DEFAULT_SCALE):
        self.size = size
        self.mean = list(mean)
        self.std = list(std)
        self.scale = check_scale(scale)

    def with_scale(self, scale) -> "ReferenceAugmentation":
        """The same augmentation with another crop-area range (self when it is the same)."""
        scale = check_scale(scale)
        return self if scale == self.scale else ReferenceAugmentation(self.size, self.mean, self.std, scale)

    def __call__(self, img: Image.Image, seed: int) -> torch.Tensor:
        rng = np.random.default_rng(seed)
        top, left, h, w = random_resized_crop_box(img.width, img.height, rng, self.scale)
        out = TF.resized_crop(img, top, left, h, w, [self.size, self.size],
                              interpolation=InterpolationMode.BICUBIC, antialias=True)
        if rng.random() < 0.5:
            out = TF.hflip(out)
        return TF.normalize(TF.to_tensor(out), self.mean, self.std)

    def describe(self) -> str:
        return f"rrc{self.size}-s{self.scale[0]}-{self.scale[1]}-bicubic-hflip-m{self.mean}-s{self.std}"


def describe_transform(transform) -> str:
    """A stable text for a torchvision transform (its repr has no memory addresses)."""
    return " ".join(repr(transform).split())
