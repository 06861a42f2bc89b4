"""The frozen vision-language backbone: one call loads any open_clip model from any source of weights.

Everything downstream sees a :class:`Backbone`: encode images, encode texts, the model's own test
preprocessing, the reference training augmentation, CLIP's logit scale and an identity that names the
exact weights (used in cache keys and stored in every exported classifier).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .transforms import ReferenceAugmentation, describe_transform

MINI_MODEL = "taskres-mini"
MINI_DIR = Path(__file__).parent / "mini"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BackboneError(RuntimeError):
    """The backbone could not be built; the message says which option to change."""


@dataclass(frozen=True)
class BackboneConfig:
    name: str = MINI_MODEL  # an open_clip model name, or "hf-hub:org/repo"
    pretrained: str = "default"  # tag ("openai", "laion2b_..."), a checkpoint file, "none", or "default"
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | fp16 | bf16 (fp16/bf16 only make sense on a GPU)


def _register_mini_config() -> None:
    import open_clip

    if MINI_MODEL not in open_clip.list_models() and (MINI_DIR / f"{MINI_MODEL}.json").is_file():
        open_clip.add_model_config(MINI_DIR / f"{MINI_MODEL}.json")


def mini_weights_path() -> Path:
    return MINI_DIR / f"{MINI_MODEL}.safetensors"


def _network_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_pretrained(cfg: BackboneConfig) -> str | None:
    """Turn the user's ``pretrained`` option into what open_clip takes (None = random weights)."""
    value = (cfg.pretrained or "none").strip()
    if value.lower() == "none":
        return None
    if value == "default":
        if cfg.name == MINI_MODEL:
            path = mini_weights_path()
            if not path.is_file():
                raise BackboneError(
                    f"the packaged weights of {MINI_MODEL} are missing ({path}); reinstall taskres "
                    "or pass --pretrained none"
                )
            return str(path)
        if cfg.name.startswith("hf-hub:"):
            return None
        return "openai"
    return value


def _looks_like_file(value: str) -> bool:
    return os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz"))


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the parameters: different weights never share cache entries or classifiers."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().reshape(-1)
        if t.numel() > 1 << 16:  # a strided sample keeps this cheap for billion-parameter models
            t = t[:: t.numel() // (1 << 16) + 1]
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(t.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class Backbone:
    """A frozen open_clip model in eval mode with the few operations the pipeline needs."""

    def __init__(self, model, tokenizer, preprocess, cfg: BackboneConfig, pretrained: str | None):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.preprocess = preprocess  # the model's own test transform (resize short side, centre crop)
        self.config = cfg
        self.device = torch.device(cfg.device)
        self.dtype = PRECISIONS[cfg.precision]
        pp = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = pp.get("size", getattr(model.visual, "image_size", 224))
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(pp.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std = tuple(pp.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.augmentation = ReferenceAugmentation(self.image_size, self.mean, self.std)
        self.embed_dim = int(self.encode_texts(["x"]).shape[-1])
        self.identity = {
            "model": cfg.name,
            "pretrained": "none" if pretrained is None else (
                Path(pretrained).name if _looks_like_file(pretrained) else pretrained),
            "fingerprint": weights_fingerprint(model),
            "embed_dim": self.embed_dim,
            "precision": cfg.precision,
        }

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature as stored (a log value); logits use exp(logit_scale)."""
        return float(self.model.logit_scale.detach().float().cpu())

    def test_transform_id(self) -> str:
        return describe_transform(self.preprocess)

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features, float32 on the CPU."""
        images = images.to(self.device, non_blocking=True)
        with self._autocast():
            feats = self.model.encode_image(images)
        return feats.float().cpu()

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Unnormalised text features (EOT token times text_projection), float32 on the CPU."""
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i : i + batch_size]).to(self.device)
            with self._autocast():
                out.append(self.model.encode_text(tokens).float().cpu())
        return torch.cat(out)

    def text_classifier(self, classnames: list[str], templates: list[str]) -> torch.Tensor:
        """The base classifier t [C, D]: mean over templates of UNnormalised text embeddings."""
        return text_classifier(self.encode_texts, classnames, templates)


def text_classifier(encode_texts, classnames: list[str], templates: list[str]) -> torch.Tensor:
    if not templates:
        raise ValueError("at least one prompt template is needed")
    prompts = [tpl.format(name) for name in classnames for tpl in templates]
    feats = encode_texts(prompts)
    return feats.reshape(len(classnames), len(templates), -1).mean(dim=1)


def load_backbone(cfg: BackboneConfig) -> Backbone:
    """Build an open_clip model with its weights, tokenizer and preprocessing (see BackboneConfig)."""
    import open_clip

    _register_mini_config()
    if cfg.name.endswith(".json"):  # a model config file of one's own: register it under its file stem
        if not Path(cfg.name).is_file():
            raise BackboneError(f"--backbone: model config file not found: {cfg.name}")
        open_clip.add_model_config(cfg.name)
        cfg = replace(cfg, name=Path(cfg.name).stem)
    if cfg.precision not in PRECISIONS:
        raise BackboneError(f"--precision must be one of {', '.join(PRECISIONS)}, not {cfg.precision!r}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise BackboneError(f"--device {cfg.device} was asked for, but no CUDA device is available; pass --device cpu")
    is_hub = cfg.name.startswith("hf-hub:")
    if not is_hub and cfg.name not in open_clip.list_models():
        raise BackboneError(
            f"unknown backbone {cfg.name!r}; choose an open_clip model name (e.g. RN50, ViT-B-16, "
            f"{MINI_MODEL}) or an hf-hub: id"
        )
    pretrained = resolve_pretrained(cfg)
    if pretrained is not None and _looks_like_file(pretrained) and not Path(pretrained).is_file():
        raise BackboneError(f"--pretrained: checkpoint file not found: {pretrained}")
    needs_download = is_hub or (pretrained is not None and not _looks_like_file(pretrained))
    if needs_download and not _weights_cached(cfg.name, pretrained) and not _network_reachable():
        raise BackboneError(
            f"cannot download weights {pretrained or cfg.name!r} for {cfg.name}: no network. Download the "
            f"checkpoint elsewhere and pass its path: --pretrained /path/to/{cfg.name}.safetensors "
            "(or .pt/.bin)"
        )
    # open_clip logs through the root logger (a warning for random weights, noisy download retries):
    # quiet it while the model is built, then restore the level so our own warnings still show.
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(max(level, logging.ERROR + 1))
    try:
        if is_hub:
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.name, precision="fp32", device=cfg.device)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # random weights (--pretrained none) are the same in every run
                model, _, preprocess = open_clip.create_model_and_transforms(
                    cfg.name, pretrained=pretrained, precision="fp32", device=cfg.device)
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackboneError(f"could not load {cfg.name} with --pretrained {cfg.pretrained}: {msg}") from None
    finally:
        root_logger.setLevel(level)
    # Encoders run in fp32 weights; fp16/bf16 only through autocast, so the frozen weights stay exact.
    tokenizer = open_clip.get_tokenizer(cfg.name)
    return Backbone(model, tokenizer, preprocess, cfg, pretrained)


def _weights_cached(name: str, pretrained: str | None) -> bool:
    """True when open_clip would find the weights without the network (Hugging Face cache)."""
    try:
        import open_clip
        from huggingface_hub import try_to_load_from_cache

        if name.startswith("hf-hub:"):
            repo = name[len("hf-hub:"):]
            files = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        else:
            pcfg = open_clip.get_pretrained_cfg(name, pretrained or "")
            repo = pcfg.get("hf_hub", "").rstrip("/")
            files = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if not repo:
            return False
        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)
    except Exception:  # noqa: BLE001 - any failure here only means "not known to be cached"
        return False


def config_dict(cfg: BackboneConfig) -> dict:
    return asdict(cfg)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
