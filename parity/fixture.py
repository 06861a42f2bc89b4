"""The inputs every parity module shares, and the golden-file format that holds the official outputs.

What is here (all deterministic, CPU, no network):

* ``CLASSNAMES``: five classes, three with "_" (the names CoOp's datasets hand to the trainers), two plain.
* ``tiny_clip(dtype)``: OpenAI's ``clip.model.CLIP`` (clip-anytorch) at toy size with seeded weights, already
  rounded to fp16 as OpenAI's releases are; ``tiny_state_dict()`` the same weights as an OpenAI state dict
  that any fork's ``clip/model.py: build_model`` accepts (widths are 64 because build_model derives the heads
  as width // 64); ``tiny_backbone()`` the SAME weights loaded by ``taskres.backbone.load_backbone``, so
  text and image features agree between the official code and taskres (within fp32 round-off: taskres
  encodes in fp32).
* ``exact_layernorm(cls)``: OpenAI's LayerNorm computes in fp32 whatever the input; this makes it keep
  the input's dtype, for float64 runs of an official fork's text or image encoder.
* ``features(dtype)``: fixed cached-feature tensors (train views [V, N, D], val, test, labels) for the
  methods that run on cached features; ``feature_pool(per_class, noise, seed)`` more of them around the same
  class directions (larger pools, overlapping classes); ``images(split)``: fixed small generated PIL images and labels.
* ``save_golden`` / ``load_golden`` / ``golden_names``: ``tests/parity/golden/<name>.safetensors`` with
  the meta as JSON in the safetensors metadata; ``for_dtype`` and ``compare`` as the CI test uses them.

Golden file conventions (``save_golden`` checks them):

* tensor keys are ``<key>`` (the same for both dtypes, e.g. labels and inputs) or ``float64/<key>`` and
  ``float32/<key>`` (what the official fp64 and fp32 runs gave); ``for_dtype(golden, dtype)`` merges them
  into plain keys for one dtype;
* ``meta["outputs"]``: the keys ``recompute`` must return and the test compares, each present for both
  dtypes; every other key is an input;
* ``meta["tolerance"]``: ``{"float64": {"atol": a, "rtol": r}, "float32": {...}}``, a key passes when
  ``|ours - official| <= atol + rtol * |official|`` elementwise; ``meta.get("tolerance_by_output", {})``
  overrides it per key (same shape); integer and bool outputs are compared exactly unless overridden;
* ``meta["official"]``: ``{"repo": "owner/name", "commit": sha, "files": [...]}``, ``meta["what"]``: one
  line, ``meta["patches"]``: how the official code was patched to run here (list of lines), and
  ``meta["module"]``: the ``parity.<module>`` whose ``recompute`` reproduces it (defaults to the name).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = ROOT / "tests" / "parity" / "golden"
MAX_GOLDEN_BYTES = 1_000_000  # the issue: each golden well under 1 MB
DTYPES = {"float64": torch.float64, "float32": torch.float32}

# Three names in the style of UCF101 / OxfordPets / Caltech101 (underscores, as CoOp's split files give them)
# and two plain ones: fix 1 of issue 19 (the per-method "_" -> " " rule) must show in the goldens.
CLASSNAMES = ["Apply_Eye_Makeup", "tabby_cat", "Playing_Daf", "dog", "airplane"]

# clip.model.CLIP(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size, context_length,
# vocab_size, transformer_width, transformer_heads, transformer_layers). build_model (clip/model.py) reads
# every number back from a state dict and sets heads = width // 64, so both widths are 64 (one head);
# context 77 and the full vocabulary because every fork tokenizes with clip.tokenize's defaults.
TINY_ARGS = (32, 32, 1, 64, 16, 77, 49408, 64, 1, 1)
EMBED_DIM = TINY_ARGS[0]
IMAGE_SIZE = TINY_ARGS[1]
# The same architecture as an open_clip model config (what taskres.backbone builds), OpenAI's activation.
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": EMBED_DIM,
    "quick_gelu": True,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 1, "width": 64, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}
TINY_NAME = "parity-tiny-clip"  # the open_clip model name (the config file's stem)
MODEL_SEED = 19  # issue 19
LOGIT_SCALE = math.log(100.0)  # the released models' temperature (exp = 100)

# Cached-feature fixture: V augmented views of N = SHOTS x C training images, and held-out splits.
VIEWS, SHOTS, VAL_PER_CLASS, TEST_PER_CLASS = 3, 4, 2, 6
FEATURE_SEED = 1919


# ----------------------------------------------------------------------------------------------- the model
@functools.lru_cache(maxsize=1)
def _tiny_state() -> dict[str, torch.Tensor]:
    """Seeded weights, rounded to fp16 values (as OpenAI's releases), kept in float64 (exact either way)."""
    from clip.model import CLIP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MODEL_SEED)
        model = CLIP(*TINY_ARGS)
    with torch.no_grad():
        model.logit_scale.fill_(LOGIT_SCALE)
    return {k: v.detach().half().double() if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items()}


def tiny_state_dict(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The tiny CLIP's weights as OpenAI's state dict (what ``build_model`` of any CLIP fork accepts)."""
    return {k: v.to(dtype) if v.is_floating_point() else v.clone() for k, v in _tiny_state().items()}


def tiny_clip(dtype: torch.dtype = torch.float64):
    """clip-anytorch's ``clip.model.CLIP`` with the fixture's weights, in ``dtype``, eval mode, on the CPU.

    OpenAI's LayerNorm casts to fp32, so a float64 model runs only inside ``exact_layernorm``.
    """
    from clip.model import CLIP

    model = CLIP(*TINY_ARGS)
    model.load_state_dict(tiny_state_dict(torch.float64))
    return model.to(dtype).eval()


@contextlib.contextmanager
def exact_layernorm(layer_norm_cls):
    """While inside, ``layer_norm_cls`` (a fork's ``clip.model.LayerNorm``) keeps its input's dtype.

    OpenAI's subclass casts to fp32 and back to survive fp16; with float64 weights that cast fails ("mixed
    dtype"). Patching the class (not an instance) reaches every block of every model built from it.
    """
    saved = layer_norm_cls.forward
    layer_norm_cls.forward = torch.nn.LayerNorm.forward
    try:
        yield
    finally:
        layer_norm_cls.forward = saved


@functools.lru_cache(maxsize=1)
def tiny_model_files() -> tuple[Path, Path]:
    """(open_clip config .json, weights .safetensors) of the tiny CLIP in a private temporary folder."""
    from safetensors.torch import save_file

    folder = Path(tempfile.mkdtemp(prefix="parity-tiny-"))
    atexit.register(shutil.rmtree, folder, True)
    config = folder / f"{TINY_NAME}.json"
    config.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    weights = folder / f"{TINY_NAME}.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state_dict(torch.float32).items()}, str(weights))
    return config, weights


@functools.lru_cache(maxsize=1)
def tiny_backbone():
    """``taskres.backbone.Backbone`` holding the tiny CLIP's weights (QuickGELU, fp32, CPU)."""
    from taskres.backbone import BackboneConfig, load_backbone

    config, weights = tiny_model_files()
    return load_backbone(BackboneConfig(str(config), str(weights), quick_gelu=True))


# --------------------------------------------------------------------------------------------- the inputs
def features(dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Fixed cached features in the shape taskres's FitContext takes, made in float64 and cast to ``dtype``.

    Keys: ``train_views`` [V, N, D] (V views of each training image), ``train_labels`` [N] (SHOTS per class,
    class-sorted), ``val`` / ``val_labels``, ``test`` / ``test_labels``. Unnormalised, like CLIP's outputs:
    each class is a direction plus noise, each image a point near it, each view a small move of the image.
    """
    g = torch.Generator().manual_seed(FEATURE_SEED)
    num_classes = len(CLASSNAMES)
    centres = torch.randn(num_classes, EMBED_DIM, generator=g, dtype=torch.float64)
    centres = torch.nn.functional.normalize(centres, dim=-1)

    def split(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        noise = 0.6 * torch.randn(len(labels), EMBED_DIM, generator=g, dtype=torch.float64) / math.sqrt(EMBED_DIM)
        scale = 8.0 + torch.rand(len(labels), 1, generator=g, dtype=torch.float64) * 4.0  # CLIP-like norms
        return scale * (centres[labels] + noise), labels

    train, train_labels = split(SHOTS)
    views = train + 0.3 * torch.randn(VIEWS, *train.shape, generator=g, dtype=torch.float64)
    val, val_labels = split(VAL_PER_CLASS)
    test, test_labels = split(TEST_PER_CLASS)
    out = {"train_views": views, "train_labels": train_labels, "val": val, "val_labels": val_labels,
           "test": test, "test_labels": test_labels}
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}


def class_centres() -> torch.Tensor:
    """The unit class directions [C, D] that ``features`` draws around (float64)."""
    g = torch.Generator().manual_seed(FEATURE_SEED)
    centres = torch.randn(len(CLASSNAMES), EMBED_DIM, generator=g, dtype=torch.float64)
    return torch.nn.functional.normalize(centres, dim=-1)


def feature_pool(per_class: int, noise: float, seed: int, dtype: torch.dtype = torch.float64):
    """(features [C * per_class, D], labels) around ``class_centres``, class-sorted, with its own seed.

    For methods that draw their own shots from a larger pool (CoOp's lpclip samples from train.npz) or need
    classes that overlap (``noise`` near 1 makes the accuracy depend on a regulariser, as a search needs).
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CLASSNAMES)).repeat_interleave(per_class)
    points = class_centres()[labels] + noise * torch.randn(len(labels), EMBED_DIM, generator=g,
                                                            dtype=torch.float64) / math.sqrt(EMBED_DIM)
    scale = 8.0 + torch.rand(len(labels), 1, generator=g, dtype=torch.float64) * 4.0
    return (scale * points).to(dtype), labels


def images(split: str = "train"):
    """Fixed small RGB images (PIL) and their labels [n]: per class a colour gradient plus noise.

    ``split`` is "train" (SHOTS per class), "val" or "test"; sizes vary and are not square, so resizing
    and cropping matter. Cheap: a few milliseconds.
    """
    from PIL import Image

    per_class = {"train": SHOTS, "val": VAL_PER_CLASS, "test": TEST_PER_CLASS}[split]
    rng = np.random.default_rng({"train": 1, "val": 2, "test": 3}[split])
    out, labels = [], []
    for label in range(len(CLASSNAMES)):
        colour = np.array([(label * 97) % 256, (label * 53 + 80) % 256, (label * 151 + 40) % 256], dtype=np.float64)
        for _ in range(per_class):
            h, w = int(rng.integers(36, 52)), int(rng.integers(36, 52))
            y, x = np.mgrid[0:h, 0:w]
            ramp = (x / w + y / h)[..., None] * 40.0
            pixels = colour[None, None, :] + ramp + rng.normal(0, 18, (h, w, 3))
            out.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
            labels.append(label)
    return out, torch.tensor(labels)


# ------------------------------------------------------------------------------------------ golden files
def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.safetensors"


def golden_names() -> list[str]:
    """Every golden present, sorted."""
    return sorted(p.stem for p in GOLDEN_DIR.glob("*.safetensors"))


def save_golden(name: str, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``tests/parity/golden/<name>.safetensors`` after checking the conventions in this module's doc."""
    from safetensors.torch import save_file

    meta = {**meta, "module": meta.get("module", name)}
    for field in ("official", "what", "outputs", "tolerance", "patches"):
        if field not in meta:
            raise ValueError(f"golden {name}: meta lacks {field!r}")
    for field in ("repo", "commit", "files"):
        if field not in meta["official"]:
            raise ValueError(f"golden {name}: meta['official'] lacks {field!r}")
    for dtype in DTYPES:
        if set(meta["tolerance"].get(dtype, {})) != {"atol", "rtol"}:
            raise ValueError(f"golden {name}: meta['tolerance'][{dtype!r}] must hold atol and rtol")
        missing = [k for k in meta["outputs"] if k not in for_dtype(tensors, DTYPES[dtype])]
        if missing:
            raise ValueError(f"golden {name}: outputs {missing} have no {dtype} value (key or {dtype}/key)")
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    path = golden_path(name)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path),
              metadata={"meta": json.dumps(meta, sort_keys=True)})
    if path.stat().st_size > MAX_GOLDEN_BYTES:
        raise ValueError(f"golden {name}: {path.stat().st_size} bytes, over {MAX_GOLDEN_BYTES}; use fewer inputs")
    return path


def load_golden(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a golden file; safetensors holds only tensors and a JSON string: nothing is run."""
    from safetensors import safe_open

    with safe_open(str(golden_path(name)), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["meta"])
    return tensors, meta


def for_dtype(golden: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The golden's tensors for one dtype under plain keys: shared keys, overridden by ``<dtype>/<key>``."""
    prefix = {torch.float64: "float64/", torch.float32: "float32/"}[dtype]
    out = {k: v for k, v in golden.items() if "/" not in k}
    out.update({k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)})
    return out


def tolerance(meta: dict, key: str, dtype: torch.dtype, integer: bool) -> tuple[float, float]:
    """(atol, rtol) for one output: the per-key override, else exact for integers, else the golden's."""
    name = "float64" if dtype == torch.float64 else "float32"
    by_key = meta.get("tolerance_by_output", {}).get(key, {})
    if name in by_key:
        return float(by_key[name]["atol"]), float(by_key[name]["rtol"])
    if integer:
        return 0.0, 0.0
    return float(meta["tolerance"][name]["atol"]), float(meta["tolerance"][name]["rtol"])


def compare(got: dict[str, torch.Tensor], golden: dict[str, torch.Tensor], meta: dict,
            dtype: torch.dtype) -> list[dict]:
    """One row per output key: max |ours - official|, the worst ratio to what is allowed, pass or fail.

    ``ratio`` is max(|d| / (atol + rtol * |official|)) (<= 1 passes); a missing key or another shape fails.
    """
    expected = for_dtype(golden, dtype)
    rows = []
    for key in meta["outputs"]:
        want = expected[key]
        integer = not (want.is_floating_point() or want.is_complex())
        atol, rtol = tolerance(meta, key, dtype, integer)
        row = {"key": key, "dtype": str(dtype).replace("torch.", ""), "atol": atol, "rtol": rtol}
        mine = got.get(key)
        if mine is None or tuple(mine.shape) != tuple(want.shape):
            shape = None if mine is None else tuple(mine.shape)
            rows.append({**row, "ok": False, "max_abs": math.inf, "ratio": math.inf,
                         "problem": f"shape {shape} instead of {tuple(want.shape)}"})
            continue
        a, b = mine.detach().double(), want.double()
        diff = (a - b).abs()
        allowed = atol + rtol * b.abs()
        # where nothing is allowed (exact keys), any difference is infinitely too much; NaN never passes
        worst = torch.where(allowed > 0, diff / allowed.clamp_min(1e-300), torch.where(diff > 0, math.inf, 0.0))
        worst = torch.nan_to_num(worst, nan=math.inf, posinf=math.inf)
        ratio = float(worst.max()) if diff.numel() else 0.0
        rows.append({**row, "ok": ratio <= 1.0, "max_abs": float(diff.max()) if diff.numel() else 0.0,
                     "ratio": ratio, "problem": ""})
    return rows
