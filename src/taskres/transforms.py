"""Image loading and the reference training augmentation, with seeds that do not depend on workers.

The reference code draws RandomResizedCrop(scale 0.08-1, bicubic) and a horizontal flip from a global
random state (Dassl's default INPUT.RRCROP_SCALE; Tip-Adapter, LP++ and GDA crop with scale 0.5-1: a method
says which scale its views use, see ``Method.aug_scale``). Here every (seed, view, image index) owns its own
generator, so a cached view is the same whichever process, worker or batch computed it, and a run can be
repeated exactly.
"""

from __future__ import annotations

import math
import os
import warnings
import zlib

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .errors import Mention, naming

# PIL's own default (1024 ** 3 // 4 // 3 pixels, about 9459 x 9459): above it an image is refused in one
# line instead of PIL's DecompressionBombWarning; TASKRES_MAX_IMAGE_PIXELS raises it (the CLI's --max-image-pixels
# sets it).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
MAX_PIXELS_ENV = "TASKRES_MAX_IMAGE_PIXELS"


class ImageError(ValueError):
    """An image file could not be read; the message names the file."""


def max_image_pixels() -> int | None:
    """The pixel limit for one image: $TASKRES_MAX_IMAGE_PIXELS, or PIL's default; 0 means no limit."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        value = -1
    if value < 0:  # an ImageError: decoding workers report it as they report an unreadable file
        raise ImageError(f"{MAX_PIXELS_ENV} must be a whole number of pixels (0: no limit), not {text!r}")
    return value or None


def _too_big(path: str, size: tuple[int, int] | None, limit: int) -> ImageError:
    what = f"{size[0]} x {size[1]} = {size[0] * size[1]:,} pixels" if size else "its size"
    return naming(ImageError, f"image too large: {path} ({what}, over the limit of {limit:,}; raise it with "
                  "{limit}, 0 for none)", limit=Mention(None, MAX_PIXELS_ENV, "N"))


# Single-channel modes whose values are not 0..255, and the factor that maps their full range onto 0..255.
# PIL's convert("RGB") clips them instead (a 16-bit 30000 of 65535 becomes white). "I" is what 16-bit
# greyscale files decode to in many tools and older PIL; "F" images are taken to be in 0..1.
_WIDE_MODES = {"I;16": 255 / 65535, "I;16L": 255 / 65535, "I;16B": 255 / 65535, "I;16N": 255 / 65535,
               "I": 255 / 65535, "F": 255.0}


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB, as the reference pipelines' ``convert("RGB")`` gives, with wide modes scaled, not clipped.

    Alpha is dropped as ``convert("RGB")`` drops it (the reference behaviour); a palette image with a
    transparent colour goes through RGBA so that PIL does not warn.
    """
    if img.mode in _WIDE_MODES:
        values = np.asarray(img, dtype=np.float64) * _WIDE_MODES[img.mode]
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: str) -> Image.Image:
    limit = max_image_pixels()
    if limit is None or (Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS):
        Image.MAX_IMAGE_PIXELS = limit  # only ever raised, when asked: our own check below is the limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if limit is not None and img.width * img.height > limit:
                    raise _too_big(path, img.size, limit)
                img.load()
                return to_rgb(img)
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except Image.DecompressionBombError:
        raise _too_big(path, None, limit or DEFAULT_MAX_IMAGE_PIXELS) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        if isinstance(exc, ImageError):
            raise
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
