"""A procedurally generated image-caption world for pretraining and testing the mini CLIP.

Each image shows one or two groups of objects. Objects in a group share a shape, colour, size and
texture; a group has 1-4 members. Objects sit on a patterned background. Captions describe what is
drawn in several phrasings, from "red circle" to "a photo of two small striped red circles on a
dark checkered background.", and often leave attributes out, as real captions do.

Everything is numpy and vectorised over the batch, so a CPU draws thousands of small images per
second. The same ``(config, seed)`` always gives the same scenes, pixels and captions.

    world = World(WorldConfig(image_size=64))
    scenes = world.sample_scenes(256, np.random.default_rng(0))
    images = world.render(scenes, np.random.default_rng(1))   # float32 [B, 3, H, W] in [0, 1]
    captions = world.captions(scenes, np.random.default_rng(2))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "heart")
PLURALS = {"cross": "crosses"}

# Saturated base colours (RGB in [0, 1]); the drawn colour is jittered around these.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "orange": (0.96, 0.52, 0.06),
    "yellow": (0.95, 0.88, 0.12),
    "green": (0.12, 0.68, 0.18),
    "blue": (0.12, 0.28, 0.90),
    "purple": (0.55, 0.18, 0.75),
    "pink": (0.97, 0.50, 0.74),
    "brown": (0.50, 0.30, 0.12),
    "black": (0.06, 0.06, 0.06),
    "white": (0.97, 0.97, 0.97),
}
SIZES: tuple[str, ...] = ("small", "large")
SIZE_RADIUS = {"small": (0.10, 0.13), "large": (0.17, 0.21)}  # radius as a fraction of the image side
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
# Backgrounds seen in pretraining ...
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "checkered", "dotted", "gradient", "noisy")
# ... and ones kept back for downstream tasks (a distribution shift the pretrained model never saw).
NOVEL_BACKGROUNDS: tuple[str, ...] = ("wavy", "blotchy", "grid")
STYLES: tuple[str, ...] = ("filled", "outline")

# (colour, shape) pairs never drawn during pretraining, so downstream tasks can ask for unseen combinations.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "star"),
    ("blue", "heart"),
    ("green", "triangle"),
    ("yellow", "circle"),
    ("purple", "square"),
)

COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
TEXTURE_WORDS = {
    "solid": ("solid", "plain", "filled"),
    "striped": ("striped", "stripy", "striped"),
    "dotted": ("dotted", "spotted", "polka-dot"),
    "checkered": ("checkered", "checked", "checkered"),
}
BACKGROUND_WORDS = {
    "plain": ("plain", "uniform", "blank"),
    "striped": ("striped", "stripy", "lined"),
    "checkered": ("checkered", "checkerboard", "checked"),
    "dotted": ("dotted", "spotted", "dotty"),
    "gradient": ("gradient", "shaded", "fading"),
    "noisy": ("noisy", "grainy", "speckled"),
    "wavy": ("wavy", "wavy", "rippled"),
    "blotchy": ("blotchy", "mottled", "cloudy"),
    "grid": ("grid", "grid", "tiled"),
}

MAX_OBJECTS = 4


@dataclass(frozen=True)
class WorldConfig:
    """What the world may draw. The defaults are the pretraining world."""

    image_size: int = 64
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    sizes: tuple[str, ...] = SIZES
    textures: tuple[str, ...] = TEXTURES
    backgrounds: tuple[str, ...] = BACKGROUNDS
    styles: tuple[str, ...] = ("filled",)
    max_count: int = MAX_OBJECTS
    second_group_prob: float = 0.3  # chance of a second, different group of objects
    holdout_pairs: tuple[tuple[str, str], ...] = HELD_OUT_PAIRS
    colour_jitter: float = 0.06  # per-channel uniform jitter of an object's colour
    pixel_noise: float = 0.0  # max std of Gaussian pixel noise (drawn per image from [0, pixel_noise])
    background_contrast: tuple[float, float] = (0.08, 0.22)  # brightness gap between the two background tones
    colour_cast: tuple[float, float, float] | None = None  # per-channel gain on the finished image (tinted light)
    # Hard negatives for contrastive training: this fraction of a batch comes in sets of
    # ``contrast_set_size`` scenes that differ only in shape (1: off). See World._contrast_sets.
    contrast_set_size: int = 1
    contrast_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name, values, known in (
            ("shapes", self.shapes, SHAPES),
            ("colours", self.colours, tuple(COLOURS)),
            ("sizes", self.sizes, SIZES),
            ("textures", self.textures, TEXTURES),
            ("backgrounds", self.backgrounds, BACKGROUNDS + NOVEL_BACKGROUNDS),
            ("styles", self.styles, STYLES),
        ):
            unknown = [v for v in values if v not in known]
            if not values or unknown:
                raise ValueError(f"WorldConfig.{name}: unknown or empty {unknown or values!r} (known: {known})")
        if not 1 <= self.max_count <= MAX_OBJECTS:
            raise ValueError(f"WorldConfig.max_count must be in 1..{MAX_OBJECTS}, got {self.max_count}")
        if not self.allowed_pairs():
            raise ValueError("WorldConfig: every (colour, shape) pair is held out")

    def allowed_pairs(self) -> list[tuple[int, int]]:
        """(colour index, shape index) pairs this world may draw."""
        held = set(self.holdout_pairs)
        return [
            (ci, si)
            for ci, c in enumerate(self.colours)
            for si, s in enumerate(self.shapes)
            if (c, s) not in held
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Scenes:
    """A batch of scene descriptions (indices into the config's attribute tuples).

    Group arrays have shape [B, 2] (group 1 is absent where ``count[:, 1] == 0``); object arrays have
    shape [B, MAX_OBJECTS] (absent where ``group < 0``).
    """

    config: WorldConfig
    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    texture: np.ndarray
    count: np.ndarray
    style: np.ndarray  # [B] index into config.styles
    background: np.ndarray  # [B] index into config.backgrounds
    background_rgb: np.ndarray  # [B, 3] main background tone
    object_group: np.ndarray  # [B, M] which group each object belongs to, -1 if none
    object_xy: np.ndarray  # [B, M, 2] centre in [0, 1] image coordinates (x right, y down)
    object_radius: np.ndarray  # [B, M]
    object_angle: np.ndarray  # [B, M] small rotation in radians
    object_rgb: np.ndarray  # [B, M, 3]
    seeds: np.ndarray = field(repr=False, default=None)  # [B] per-image seed for texture phases etc.

    def __len__(self) -> int:
        return len(self.shape)

    def describe(self, i: int) -> dict[str, Any]:
        """Attribute names of image ``i``: handy for tests, task labels and debugging."""
        cfg = self.config
        groups = []
        for g in range(2):
            if self.count[i, g] == 0:
                continue
            groups.append(
                {
                    "shape": cfg.shapes[self.shape[i, g]],
                    "colour": cfg.colours[self.colour[i, g]],
                    "size": cfg.sizes[self.size[i, g]],
                    "texture": cfg.textures[self.texture[i, g]],
                    "count": int(self.count[i, g]),
                }
            )
        return {
            "groups": groups,
            "background": cfg.backgrounds[self.background[i]],
            "style": cfg.styles[self.style[i]],
        }


class World:
    """Samples scenes, renders them to pixels and writes captions for them."""

    def __init__(self, config: WorldConfig | None = None):
        self.config = config or WorldConfig()
        self._pairs = np.array(self.config.allowed_pairs(), dtype=np.int64)
        self._palette = np.array([COLOURS[c] for c in self.config.colours], dtype=np.float32)
        self._radius = np.array([SIZE_RADIUS[s] for s in self.config.sizes], dtype=np.float32)

    # ----------------------------------------------------------------- scenes
    def sample_scenes(self, n: int, rng: np.random.Generator) -> Scenes:
        cfg = self.config
        pair = self._pairs[rng.integers(len(self._pairs), size=(n, 2))]  # [n, 2, (colour, shape)]
        colour, shape = pair[..., 0], pair[..., 1]
        # Two groups must differ somewhere visible: redraw group 1's pair until it differs from group 0's
        # (a world with a single pair draws a single group).
        single_pair = len(self._pairs) == 1
        same = (colour[:, 0] == colour[:, 1]) & (shape[:, 0] == shape[:, 1]) & (not single_pair)
        while same.any():
            redraw = self._pairs[rng.integers(len(self._pairs), size=int(same.sum()))]
            colour[same, 1], shape[same, 1] = redraw[:, 0], redraw[:, 1]
            same = (colour[:, 0] == colour[:, 1]) & (shape[:, 0] == shape[:, 1])
        size = rng.integers(len(cfg.sizes), size=(n, 2))
        texture = rng.integers(len(cfg.textures), size=(n, 2))

        two = rng.random(n) < cfg.second_group_prob
        two &= (cfg.max_count >= 2) and not single_pair
        count = np.zeros((n, 2), dtype=np.int64)
        count[:, 0] = rng.integers(1, cfg.max_count + 1, size=n)
        # With two groups, split the objects: each group gets 1..max_count-1 and the total stays <= max_count.
        c0 = rng.integers(1, max(cfg.max_count, 2), size=n)
        c1 = 1 + (rng.random(n) * np.maximum(cfg.max_count - c0, 1)).astype(np.int64)
        count[two, 0] = c0[two]
        count[two, 1] = np.minimum(c1[two], cfg.max_count - c0[two])
        count[two, 1] = np.maximum(count[two, 1], 1)
        sets = self._contrast_sets(n, rng, colour, shape, size, texture, count)

        m = MAX_OBJECTS
        slot = np.arange(m)[None, :]
        group = np.where(slot < count[:, :1], 0, np.where(slot < count[:, :1] + count[:, 1:], 1, -1))

        radius_lo = self._radius[size, 0]  # [n, 2]
        radius_hi = self._radius[size, 1]
        r_group = radius_lo + (radius_hi - radius_lo) * rng.random((n, 2)).astype(np.float32)
        radius = np.where(group >= 0, np.take_along_axis(r_group, np.maximum(group, 0), axis=1), 0.0)
        # Objects go in distinct cells of a 2x2 grid (so they never overlap), jittered inside the cell;
        # a lone object may sit anywhere it fits.
        cells = np.argsort(rng.random((n, m)), axis=1)
        cell_xy = np.stack([(cells % 2) * 0.5 + 0.25, (cells // 2) * 0.5 + 0.25], axis=-1)
        slack = np.clip(0.25 - radius - 0.01, 0.0, None)[..., None]
        xy = cell_xy + (rng.random((n, m, 2)) * 2 - 1) * slack
        lone = count.sum(1) == 1
        lone_r = radius[:, 0]
        lone_xy = lone_r[:, None] + 0.02 + rng.random((n, 2)) * np.clip(1 - 2 * lone_r - 0.04, 0, None)[:, None]
        xy[lone, 0] = lone_xy[lone]
        angle = rng.uniform(-0.2, 0.2, size=(n, m))

        rgb_group = self._palette[colour]  # [n, 2, 3]
        rgb = np.take_along_axis(rgb_group, np.maximum(group, 0)[..., None], axis=1)
        rgb = rgb + rng.uniform(-cfg.colour_jitter, cfg.colour_jitter, size=rgb.shape)
        rgb = np.clip(rgb, 0.0, 1.0)

        # Muted background tones (low saturation, mid brightness) keep objects visible.
        grey = rng.uniform(0.28, 0.72, size=(n, 1))
        tint = rng.uniform(-0.12, 0.12, size=(n, 3))
        bg_rgb = np.clip(grey + tint, 0.0, 1.0)

        background = rng.integers(len(cfg.backgrounds), size=n)
        for rows in sets:
            background[rows] = background[rows[0]]
        return Scenes(
            config=cfg,
            shape=shape,
            colour=colour,
            size=size,
            texture=texture,
            count=count,
            style=rng.integers(len(cfg.styles), size=n),
            background=background,
            background_rgb=bg_rgb.astype(np.float32),
            object_group=group,
            object_xy=xy.astype(np.float32),
            object_radius=radius.astype(np.float32),
            object_angle=angle.astype(np.float32),
            object_rgb=rgb.astype(np.float32),
            seeds=rng.integers(0, 2**31 - 1, size=n),
        )

    def _contrast_sets(self, n, rng, colour, shape, size, texture, count) -> list[np.ndarray]:
        """Turn the first rows of a batch into sets of scenes that differ only in shape (in place).

        Within a set, every scene copies the first one's colours, sizes, textures, counts, second group and
        background kind; the first group's shapes are distinct. In a contrastive batch the only way to tell
        the captions of a set apart is then the shape, which otherwise is the last thing a small model
        learns (colour and count already separate most captions of a random batch).
        """
        cfg = self.config
        k = cfg.contrast_set_size
        if k <= 1 or cfg.contrast_fraction <= 0:
            return []
        held = set(cfg.holdout_pairs)
        sets = []
        for j in range(int(n * cfg.contrast_fraction) // k):
            rows = np.arange(j * k, (j + 1) * k)
            first = rows[0]
            c = cfg.colours[colour[first, 0]]
            allowed = [i for i, s in enumerate(cfg.shapes) if (c, s) not in held]
            if len(allowed) < k:
                continue
            for arr in (colour, shape, size, texture, count):
                arr[rows] = arr[first]
            shape[rows, 0] = rng.choice(allowed, size=k, replace=False)
            # A second group identical to the first would make two groups one: drop it there.
            clash = (colour[rows, 1] == colour[rows, 0]) & (shape[rows, 1] == shape[rows, 0]) & (count[rows, 1] > 0)
            count[rows[clash], 1] = 0
            sets.append(rows)
        return sets

    # ----------------------------------------------------------------- pixels
    def render(self, scenes: Scenes, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
        """Draw the scenes: float32 array [B, 3, size, size] with values in [0, 1]."""
        cfg = self.config
        res = size or cfg.image_size
        n = len(scenes)
        coords = (np.arange(res, dtype=np.float32) + 0.5) / res
        ys, xs = np.meshgrid(coords, coords, indexing="ij")  # [R, R]
        image = self._background(scenes, xs, ys, rng, res)  # [B, 3, R, R]

        b_idx, m_idx = np.nonzero(scenes.object_group >= 0)
        if len(b_idx):
            g = scenes.object_group[b_idx, m_idx]
            cx = scenes.object_xy[b_idx, m_idx, 0][:, None, None]
            cy = scenes.object_xy[b_idx, m_idx, 1][:, None, None]
            r = scenes.object_radius[b_idx, m_idx][:, None, None]
            ang = scenes.object_angle[b_idx, m_idx][:, None, None]
            dx, dy = xs[None] - cx, ys[None] - cy  # image units, [N, R, R]
            cos, sin = np.cos(ang), np.sin(ang)
            u = (cos * dx + sin * dy) / r  # object units: the shape fits in the unit disc
            v = (-sin * dx + cos * dy) / r
            shape = scenes.shape[b_idx, g]
            dist = np.empty_like(u)
            for s in np.unique(shape):
                sel = shape == s
                dist[sel] = _SDF[cfg.shapes[s]](u[sel], v[sel])
            px = r * res  # object units -> pixels
            outline = np.array([st == "outline" for st in cfg.styles])[scenes.style[b_idx]]
            band = np.abs(dist) - 1.6 / px  # a stroke ~3 px wide
            edge = np.where(outline[:, None, None], band, dist)
            alpha = np.clip(0.5 - edge * px, 0.0, 1.0)

            rgb = scenes.object_rgb[b_idx, m_idx][:, :, None, None]  # [N, 3, 1, 1]
            texture = scenes.texture[b_idx, g]
            pattern = self._texture(texture, dx * cos + dy * sin, -dx * sin + dy * cos, scenes.seeds[b_idx])
            pattern = np.where(outline[:, None, None], 0.0, pattern)
            lum = rgb.mean(axis=1, keepdims=True)
            second = np.where(lum < 0.3, rgb * 0.4 + 0.5, rgb * 0.4)  # the texture's other tone
            colour = rgb + (second - rgb) * pattern[:, None]  # [N, 3, R, R]

            # Objects never overlap, so the order does not matter; one slot at a time keeps indices unique.
            a = alpha[:, None]
            for m in range(MAX_OBJECTS):
                sel = m_idx == m
                bb = b_idx[sel]
                image[bb] = image[bb] * (1 - a[sel]) + colour[sel] * a[sel]

        if cfg.colour_cast is not None:
            image = image * np.asarray(cfg.colour_cast, dtype=np.float32)[None, :, None, None]
        if cfg.pixel_noise > 0:
            std = rng.uniform(0, cfg.pixel_noise, size=(n, 1, 1, 1)).astype(np.float32)
            image = image + rng.standard_normal(image.shape, dtype=np.float32) * std
        return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)

    def _background(self, scenes: Scenes, xs, ys, rng, res) -> np.ndarray:
        cfg = self.config
        n = len(scenes)
        pattern = np.zeros((n, res, res), dtype=np.float32)
        # Per-image pattern parameters.
        period = rng.uniform(0.08, 0.2, size=(n, 1, 1)).astype(np.float32)
        theta = rng.uniform(0, np.pi, size=(n, 1, 1)).astype(np.float32)
        phase = rng.uniform(0, 1, size=(n, 1, 1)).astype(np.float32)
        along = xs * np.cos(theta) + ys * np.sin(theta)
        across = -xs * np.sin(theta) + ys * np.cos(theta)
        for k in np.unique(scenes.background):
            sel = scenes.background == k
            name = cfg.backgrounds[k]
            p, a, c, ph = period[sel], along[sel], across[sel], phase[sel]
            if name == "plain":
                val = np.zeros_like(a)
            elif name == "striped":
                val = (np.mod(a / p + ph, 1.0) < 0.5).astype(np.float32)
            elif name == "checkered":
                val = ((np.floor(xs / p + ph) + np.floor(ys / p + ph)) % 2).astype(np.float32)
            elif name == "dotted":
                fx, fy = np.mod(xs / p + ph, 1.0) - 0.5, np.mod(ys / p + ph, 1.0) - 0.5
                val = (fx**2 + fy**2 < 0.07).astype(np.float32)
            elif name == "gradient":
                val = np.clip(a + ph - 0.5, 0.0, 1.0) * 2.0
            elif name == "noisy":
                val = rng.random(a.shape, dtype=np.float32)
            elif name == "wavy":
                val = 0.5 + 0.5 * np.sin(2 * np.pi * (a / p + 0.6 * np.sin(2 * np.pi * c / (3 * p))))
            elif name == "blotchy":
                val = _smooth_noise(rng, int(sel.sum()), res)
            elif name == "grid":
                fx, fy = np.mod(xs / p + ph, 1.0), np.mod(ys / p + ph, 1.0)
                val = ((fx < 0.18) | (fy < 0.18)).astype(np.float32)
            else:  # pragma: no cover - guarded by WorldConfig
                raise ValueError(name)
            pattern[sel] = val
        lo, hi = cfg.background_contrast
        contrast = rng.uniform(lo, hi, size=(n, 1, 1, 1)).astype(np.float32)
        sign = np.where(scenes.background_rgb.mean(1) > 0.5, -1.0, 1.0).astype(np.float32)[:, None, None, None]
        base = scenes.background_rgb[:, :, None, None]
        return np.broadcast_to(base, (n, 3, res, res)) + sign * contrast * pattern[:, None]

    def _texture(self, texture: np.ndarray, du, dv, seeds) -> np.ndarray:
        """Pattern in [0, 1] over each object (0: base colour, 1: second tone); image-unit offsets du, dv."""
        period = 0.085  # about 5 px at 64 px
        out = np.zeros_like(du)
        phase = ((seeds % 997) / 997.0).astype(np.float32)[:, None, None]
        for t, name in enumerate(self.config.textures):
            sel = texture == t
            if not sel.any() or name == "solid":
                continue
            u, v = du[sel] / period + phase[sel], dv[sel] / period + phase[sel]
            if name == "striped":
                val = np.mod(u + v, 1.0) < 0.5  # diagonal stripes
            elif name == "dotted":
                val = (np.mod(u * 0.8, 1.0) - 0.5) ** 2 + (np.mod(v * 0.8, 1.0) - 0.5) ** 2 < 0.08
            else:  # checkered
                val = (np.floor(u * 0.75) + np.floor(v * 0.75)) % 2 == 1
            out[sel] = val.astype(np.float32)
        return out

    # ----------------------------------------------------------------- captions
    def captions(self, scenes: Scenes, rng: np.random.Generator) -> list[str]:
        return [self.caption(scenes, i, rng) for i in range(len(scenes))]

    def caption(self, scenes: Scenes, i: int, rng: np.random.Generator) -> str:
        d = scenes.describe(i)
        groups = d["groups"]
        order = [0, 1] if rng.random() < 0.5 or len(groups) == 1 else [1, 0]
        phrases = [_noun_phrase(groups[k], rng) for k in order if k < len(groups)]
        # Real captions are partial: sometimes only one of two groups is mentioned.
        if len(phrases) == 2 and rng.random() < 0.15:
            phrases = phrases[:1]
        things = " and ".join(phrases)
        bg = d["background"]
        bg_words = rng.choice(BACKGROUND_WORDS[bg])
        tone = _tone_word(scenes.background_rgb[i], rng)
        background = f"{tone} {bg_words}".strip() if rng.random() < 0.5 else bg_words
        total = sum(g["count"] for g in groups)
        verb = "is" if total == 1 else "are"
        style = " outline" if d["style"] == "outline" else ""
        forms = (
            f"{things}",
            f"a photo of {things}.",
            f"a photo of {things} on a {background} background.",
            f"a{style} drawing of {things}.",
            f"{things} on a {background} background",
            f"an image showing {things}",
            f"there {verb} {things} in this picture.",
            f"a picture of {things}, {background} background.",
            f"{background} background with {things}",
        )
        weights = np.array([3, 3, 3, 1, 2, 1, 1, 1, 1], dtype=np.float64)
        return forms[rng.choice(len(forms), p=weights / weights.sum())]


def _noun_phrase(group: dict[str, Any], rng: np.random.Generator) -> str:
    """e.g. "two small striped red circles", "a red circle", "circles"; attributes dropped at random."""
    count = group["count"]
    words = []
    if rng.random() < 0.5:
        words.append(group["size"])
    if group["texture"] != "solid" and rng.random() < 0.5:
        words.append(rng.choice(TEXTURE_WORDS[group["texture"]]))
    elif group["texture"] == "solid" and rng.random() < 0.1:
        words.append(rng.choice(TEXTURE_WORDS["solid"]))
    if rng.random() < 0.85:
        words.append(group["colour"])
    shape = group["shape"]
    noun = shape if count == 1 else PLURALS.get(shape, shape + "s")
    words.append(noun)
    if count == 1:
        lead = "one" if rng.random() < 0.15 else ("an" if words[0][0] in "aeiou" else "a")
    elif rng.random() < 0.75:
        lead = COUNT_WORDS[count]
    else:
        lead = "some" if rng.random() < 0.5 else ""
    return " ".join(w for w in [lead, *words] if w)


def _tone_word(rgb: np.ndarray, rng: np.random.Generator) -> str:
    lum = float(np.mean(rgb))
    if lum < 0.42:
        return "dark"
    if lum > 0.58:
        return "light"
    return ""


def _smooth_noise(rng: np.random.Generator, n: int, res: int) -> np.ndarray:
    """Low-frequency value noise in [0, 1] (a 5x5 random grid, bilinearly upsampled)."""
    grid = rng.random((n, 6, 6), dtype=np.float32)
    t = np.linspace(0, 5, res, dtype=np.float32)
    i0 = np.minimum(t.astype(np.int64), 4)
    f = t - i0
    rows = grid[:, i0] * (1 - f)[None, :, None] + grid[:, i0 + 1] * f[None, :, None]
    out = rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f
    return (out > 0.5).astype(np.float32) * 0.7 + out * 0.3


# Signed distances (negative inside) in object units; the shapes fit in the unit disc.
def _sdf_circle(u, v):
    return np.sqrt(u * u + v * v) - 0.92


def _sdf_square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) - 0.74


def _sdf_diamond(u, v):
    return (np.abs(u) + np.abs(v) - 0.98) * 0.7071


def _sdf_triangle(u, v):
    # Equilateral, pointing up (y grows downward), circumradius 1.05, centred on its centroid.
    inr = 0.525
    return np.maximum.reduce([v, -0.866 * u - 0.5 * v, 0.866 * u - 0.5 * v]) - inr


def _sdf_hexagon(u, v):
    au, av = np.abs(u), np.abs(v)
    return np.maximum(au, 0.5 * au + 0.866 * av) - 0.82


def _sdf_cross(u, v):
    au, av = np.abs(u), np.abs(v)
    arm_h = np.maximum(au - 0.92, av - 0.3)
    arm_v = np.maximum(au - 0.3, av - 0.92)
    return np.minimum(arm_h, arm_v)


def _sdf_star(u, v):
    r = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u) + np.pi / 2  # a point straight up
    sector = 2 * np.pi / 5
    t = np.mod(theta, sector) / sector  # 0 and 1 at points, 0.5 between
    reach = 0.42 + 0.6 * np.abs(2 * t - 1)
    return (r - reach) * 0.6


def _heart_geometry() -> tuple[float, float, float, float, np.ndarray]:
    """Lobe centre (+-cx, cy), lobe radius, and the edges (normal, offset) of the lower quadrilateral."""
    cx, cy, rad, tip = 0.3, -0.36, 0.44, 0.88
    dip = cy - np.sqrt(rad**2 - cx**2)  # where the two lobes meet at the top
    # Tangent point from the tip (0, tip) to the right lobe, on its outer side.
    dx, dy = cx, cy - tip
    dist = np.hypot(dx, dy)
    ang = np.arctan2(dy, dx) + np.arcsin(rad / dist)
    reach = np.sqrt(dist**2 - rad**2)
    tx, ty = reach * np.cos(ang), tip + reach * np.sin(ang)
    corners = [(0.0, dip), (tx, ty), (0.0, tip), (-tx, ty)]  # convex; y grows downward
    edges = []
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
        nx, ny = -(y1 - y0), x1 - x0
        norm = np.hypot(nx, ny)
        edges.append((nx / norm, ny / norm, (nx * x0 + ny * y0) / norm))
    edges = np.array(edges)
    centre = np.mean(corners, axis=0)
    if (edges[:, 0] * centre[0] + edges[:, 1] * centre[1] - edges[:, 2] > 0).any():
        edges = -edges  # make the normals point outward
    return cx, cy, rad, tip, edges


_HEART = _heart_geometry()


def _sdf_heart(u, v):
    # Two round lobes and the quadrilateral (dip, tangent points, tip) that fills the hull below them;
    # every join lies on the outline, so an outline drawing has no seams inside.
    cx, cy, rad, _, edges = _HEART
    lobes = np.minimum(np.hypot(u - cx, v - cy), np.hypot(u + cx, v - cy)) - rad
    body = np.maximum.reduce([nx * u + ny * v - off for nx, ny, off in edges])
    return np.minimum(lobes, body)


_SDF = {
    "circle": _sdf_circle,
    "square": _sdf_square,
    "triangle": _sdf_triangle,
    "star": _sdf_star,
    "cross": _sdf_cross,
    "diamond": _sdf_diamond,
    "hexagon": _sdf_hexagon,
    "heart": _sdf_heart,
}


def sample_batch(
    world: World, n: int, seed: int | tuple[int, ...]
) -> tuple[np.ndarray, list[str], Scenes]:
    """Scenes, pixels and captions for one batch; everything follows from ``seed``."""
    rng = np.random.default_rng(seed)
    scenes = world.sample_scenes(n, rng)
    images = world.render(scenes, rng)
    captions = world.captions(scenes, rng)
    return images, captions, scenes
