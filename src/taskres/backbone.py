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

from .errors import UNSET, Mention, naming
from .openai_archive import ArchiveError, is_openai_clip, is_torchscript_archive, read_state_dict
from .transforms import ReferenceAugmentation, describe_transform

log = logging.getLogger(__name__)

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
    # The activation the weights were trained with: None = known from the weights (see weights_activation),
    # True = QuickGELU, False = nn.GELU; for a checkpoint file that cannot say (--quick-gelu/--no-quick-gelu).
    quick_gelu: bool | None = None


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


def _option(field: str, value=UNSET) -> Mention:
    """A BackboneConfig field an error names (the CLI shows its flag: ``--pretrained``, ``--device cpu``)."""
    return Mention("BackboneConfig", field, value)


def resolve_pretrained(cfg: BackboneConfig) -> str | None:
    """Turn the user's ``pretrained`` option into what open_clip takes (None = random weights)."""
    value = (cfg.pretrained or "none").strip()
    if value.lower() == "none":
        return None
    if value == "default":
        if cfg.name == MINI_MODEL:
            path = mini_weights_path()
            if not path.is_file():
                raise naming(BackboneError, f"the packaged weights of {MINI_MODEL} are missing ({path}); "
                             "reinstall taskres or use {none}", none=_option("pretrained", "none"))
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
            "activation": model_activation(model),
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


@dataclass(frozen=True)
class WeightsPlan:
    """What load_backbone builds, decided from a BackboneConfig before any weights are read."""

    name: str  # the open_clip model name (a .json config already registered under its stem)
    pretrained: str | None  # the resolved --pretrained: a tag, a file, or None (random weights)
    kind: str  # "none" | "tag" | "file" | "openai_archive" | "packaged" | "hub"
    quick_gelu: bool | None  # the activation to build with; None: the hf-hub model's own config decides
    note: str | None = None  # one line for the user when the activation is the config's unconfirmed default


# OpenAI trained every CLIP model it released with QuickGELU, x * sigmoid(1.702 x) (openai/CLIP
# clip/model.py: class QuickGELU, used by ResidualAttentionBlock); open_clip's pretrained table says
# quick_gelu=True for every "openai" tag (open_clip/pretrained.py).
OPENAI_SOURCE = "OpenAI's checkpoint archive (OpenAI's CLIP models use QuickGELU)"


def weights_activation(name: str, pretrained: str | None, kind: str,
                       option: bool | None) -> tuple[bool | None, str | None]:
    """The activation to build ``name`` with for these weights, and a note when nothing confirms it.

    What is known about the weights decides: a tag's entry in open_clip's pretrained table, OpenAI's own
    checkpoint archive (QuickGELU), a model config that sets ``quick_gelu`` (the ``-quickgelu`` names),
    the packaged taskres-mini weights (trained with their config). ``option`` (--quick-gelu /
    --no-quick-gelu) must agree with what is known, and decides where nothing is known: a checkpoint file
    of unknown origin or random weights. A file with neither gets the config's default and a note.
    """
    import open_clip

    if kind == "hub":
        if option is not None:
            raise naming(BackboneError, "{quick_gelu}: an hf-hub: model's own config sets its activation",
                         quick_gelu=_option("quick_gelu"))
        return None, None
    model_cfg = open_clip.get_model_config(name) or {}
    facts: list[tuple[bool, str]] = []
    if "quick_gelu" in model_cfg:
        facts.append((bool(model_cfg["quick_gelu"]), f"the model config of {name}"))
    if kind == "tag":
        pcfg = open_clip.get_pretrained_cfg(name, pretrained)
        facts.append((bool(pcfg.get("quick_gelu", False)), f"open_clip's pretrained table ({name}, {pretrained})"))
    elif kind == "openai_archive":
        facts.append((True, OPENAI_SOURCE))
    elif kind == "packaged":
        facts.append((bool(model_cfg.get("quick_gelu", False)), f"the packaged {name} weights"))
    if option is not None:
        facts.append((option, "{quick_gelu}"))
    values = {v for v, _ in facts}
    if len(values) > 1:
        said = "; ".join(f"{src}: {'QuickGELU' if v else 'nn.GELU'}" for v, src in facts)
        raise naming(BackboneError, f"contradicting activations for {name} with {{pretrained}}: {said}",
                     pretrained=_option("pretrained", pretrained), quick_gelu=_option("quick_gelu", option))
    if values:
        return values.pop(), None
    default = bool(model_cfg.get("quick_gelu", False))
    note = None
    if kind == "file":
        note = (f"--pretrained {Path(pretrained).name} does not say which activation its weights were trained "
                f"with; building {name} with {'QuickGELU' if default else 'nn.GELU'}, its config's default "
                "(pass --quick-gelu for QuickGELU weights such as OpenAI's, --no-quick-gelu to confirm)")
    return default, note


def plan_weights(cfg: BackboneConfig) -> WeightsPlan:
    """Check the options and decide which weights, from where, with which activation (nothing is built)."""
    import open_clip

    is_hub = cfg.name.startswith("hf-hub:")
    if not is_hub and cfg.name not in open_clip.list_models():
        raise BackboneError(
            f"unknown backbone {cfg.name!r}; choose an open_clip model name (e.g. RN50, ViT-B-16, "
            f"{MINI_MODEL}) or an hf-hub: id"
        )
    pretrained = resolve_pretrained(cfg)
    if is_hub:
        kind = "hub"
    elif pretrained is None:
        kind = "none"
    elif open_clip.get_pretrained_cfg(cfg.name, pretrained):
        kind = "tag"
    elif not _looks_like_file(pretrained) and not Path(pretrained).exists():
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(cfg.name)) or "none"
        raise naming(BackboneError, f"{{pretrained}} is neither a checkpoint file nor a tag of {cfg.name} "
                     f"(its tags: {tags})", pretrained=_option("pretrained", pretrained))
    else:
        if not Path(pretrained).is_file():
            raise naming(BackboneError, f"{{pretrained}}: checkpoint file not found: {pretrained}",
                         pretrained=_option("pretrained"))
        if cfg.pretrained == "default" and cfg.name == MINI_MODEL:
            kind = "packaged"
        elif is_torchscript_archive(pretrained):
            kind = "openai_archive"  # checked to be OpenAI's CLIP layout when it is read
        else:
            kind = "file"
    quick_gelu, note = weights_activation(cfg.name, pretrained, kind, cfg.quick_gelu)
    return WeightsPlan(cfg.name, pretrained, kind, quick_gelu, note)


def load_backbone(cfg: BackboneConfig) -> Backbone:
    """Build an open_clip model with its weights, tokenizer and preprocessing (see BackboneConfig)."""
    import open_clip

    _register_mini_config()
    if cfg.name.endswith(".json"):  # a model config file of one's own: register it under its file stem
        if not Path(cfg.name).is_file():
            raise naming(BackboneError, f"{{name}}: model config file not found: {cfg.name}", name=_option("name"))
        open_clip.add_model_config(cfg.name)
        cfg = replace(cfg, name=Path(cfg.name).stem)
    if cfg.precision not in PRECISIONS:
        raise naming(BackboneError, f"{{precision}} must be one of {', '.join(PRECISIONS)}, not {cfg.precision!r}",
                     precision=_option("precision"))
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise naming(BackboneError, "{device} was asked for, but no CUDA device is available; use {cpu}",
                     device=_option("device", cfg.device), cpu=_option("device", "cpu"))
    plan = plan_weights(cfg)
    needs_download = plan.kind in ("hub", "tag")
    if needs_download and not _weights_cached(cfg.name, plan.pretrained) and not _network_reachable():
        raise naming(
            BackboneError,
            f"cannot download weights {plan.pretrained or cfg.name!r} for {cfg.name}: no network. Download the "
            "checkpoint elsewhere and give its path: {path} "
            "(or .pt/.bin, or OpenAI's own RN50.pt, ViT-B-16.pt, ...)",
            path=_option("pretrained", f"/path/to/{cfg.name}.safetensors"))
    state_dict = _read_openai_archive(plan.pretrained) if plan.kind == "openai_archive" else None
    if plan.note:
        log.warning("%s", plan.note)
    model, preprocess = build_model(plan, cfg.device)
    if state_dict is not None:
        _load_openai_state(model, state_dict, plan)
    # Encoders run in fp32 weights; fp16/bf16 only through autocast, so the frozen weights stay exact.
    tokenizer = open_clip.get_tokenizer(cfg.name)
    return Backbone(model, tokenizer, preprocess, cfg, plan.pretrained)


def build_model(plan: WeightsPlan, device: str = "cpu"):
    """The open_clip model and its test transform for a plan (an OpenAI archive's weights come after)."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    kwargs: dict = {"precision": "fp32", "device": device}
    if plan.kind != "hub":
        kwargs["pretrained"] = None if plan.kind == "openai_archive" else plan.pretrained
        kwargs["force_quick_gelu"] = bool(plan.quick_gelu)  # False never overrides: a contradiction is refused
    if plan.kind == "openai_archive":
        # OpenAI's preprocessing (clip/clip.py: _transform): resize the shortest side (bicubic), centre crop,
        # OpenAI's mean and std
        kwargs.update(image_mean=OPENAI_DATASET_MEAN, image_std=OPENAI_DATASET_STD,
                      image_interpolation="bicubic", image_resize_mode="shortest")
    # open_clip logs through the root logger (a warning for random weights, noisy download retries):
    # quiet it while the model is built, then restore the level so our own warnings still show.
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(max(level, logging.ERROR + 1))
    # Random initialisation is wasted work (seconds for a ViT-L) where a checkpoint then overwrites every
    # parameter and buffer: open_clip loads full checkpoints with strict=True, as _load_openai_state does.
    # Not for hf-hub (open_clip goes on without weights when their download fails) nor .npz (a partial loader).
    full_checkpoint = plan.kind in ("tag", "file", "packaged", "openai_archive") and not str(
        plan.pretrained).endswith(".npz")
    try:
        skip_init = _no_random_init() if full_checkpoint else contextlib.nullcontext()
        with torch.random.fork_rng(devices=[]), skip_init:
            torch.manual_seed(0)  # random weights (--pretrained none) are the same in every run
            model, _, preprocess = open_clip.create_model_and_transforms(plan.name, **kwargs)
    except RuntimeError as exc:
        raise naming(BackboneError, f"could not load {plan.name} with {{pretrained}}: {_one_line(exc)}",
                     pretrained=_option("pretrained", plan.pretrained)) from None
    finally:
        root_logger.setLevel(level)
    if plan.quick_gelu and "quick_gelu" not in model_activation(model):
        raise BackboneError(f"open_clip built {plan.name} without QuickGELU, which its weights were trained with")
    return model, preprocess


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


@contextlib.contextmanager
def _no_random_init():
    """torch.nn.init's fills become no-ops while a model whose every weight will be loaded is built."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def model_activation(model: torch.nn.Module) -> str:
    """The activation the model's GELU layers compute: "quick_gelu", "gelu", "gelu_tanh", joined by "+"."""
    from open_clip.transformer import QuickGELU

    kinds = set()
    for module in model.modules():
        if isinstance(module, QuickGELU):
            kinds.add("quick_gelu")
        elif isinstance(module, torch.nn.GELU):
            kinds.add("gelu" if module.approximate == "none" else f"gelu_{module.approximate}")
    return "+".join(sorted(kinds)) or "none"


def _read_openai_archive(path: str) -> dict[str, torch.Tensor]:
    try:
        state_dict = read_state_dict(path)
    except ArchiveError as exc:
        raise naming(BackboneError, f"{{pretrained}}: {exc}", pretrained=_option("pretrained", path)) from None
    if not is_openai_clip(state_dict):
        raise naming(
            BackboneError, "{pretrained}: a TorchScript archive, but not one of OpenAI's CLIP checkpoints (no "
            "input_resolution/context_length/vocab_size buffers); save the model's state_dict() and give that",
            pretrained=_option("pretrained", path))
    return state_dict


def _load_openai_state(model: torch.nn.Module, state_dict: dict, plan: WeightsPlan) -> None:
    """OpenAI's weights into open_clip's model of the same architecture (the same parameter names)."""
    weights = {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    try:
        model.load_state_dict(weights, strict=True)  # copies fp16 storage into the fp32 parameters exactly
    except RuntimeError as exc:
        res = int(state_dict["input_resolution"])
        raise naming(
            BackboneError, f"{{pretrained}}: OpenAI's archive (input resolution {res}) does not fit {{name}}: "
            f"{_one_line(exc)}", pretrained=_option("pretrained", plan.pretrained),
            name=_option("name", plan.name)) from None


def _one_line(exc: Exception, limit: int = 240) -> str:
    """The informative line of an error: load_state_dict's first line only says "Error(s) in loading"."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _weights_cached(name: str, pretrained: str | None) -> bool:
    """True when open_clip would find the weights without the network (Hugging Face cache)."""
    try:
        import open_clip
        from huggingface_hub import try_to_load_from_cache

        files = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if name.startswith("hf-hub:"):
            repo = name[len("hf-hub:"):]
        else:
            pcfg = open_clip.get_pretrained_cfg(name, pretrained or "")
            repo, filename = os.path.split(pcfg.get("hf_hub", ""))  # "org/repo/" or "org/repo/file.bin"
            if filename:
                files = [str(Path(filename).with_suffix(".safetensors")), filename]
        if not repo:
            return False
        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)
    except Exception:  # noqa: BLE001 - any failure here only means "not known to be cached"
        return False


def config_dict(cfg: BackboneConfig) -> dict:
    return asdict(cfg)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
