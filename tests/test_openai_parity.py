"""Real CLIP architectures computed as OpenAI's own code computes them, offline.

For RN50 and ViT-B/32 at full size, seeded random weights are made with OpenAI's model code (the
``clip`` package, clip-anytorch on PyPI) and rounded to fp16 as OpenAI released them (clip/model.py:
convert_weights), then written three ways: (a) as an OpenAI TorchScript archive (what clip.load downloads),
(b) as a state-dict file, (c) into a private Hugging Face cache under the ``openai`` tag's repository, so that
``--pretrained openai`` resolves offline exactly as after a download. Each is loaded through
taskres.backbone and compared with OpenAI's model in fp32 (what clip.load returns on a CPU: build_model
then .float()): preprocessed images, image features, text features of the project's templates, the
template-mean classifier and the zero-shot logits.

Cost: each architecture is built once per module (one reference model, three files, three backbones).
"""

from __future__ import annotations

import math
import shutil
import types
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import clip  # noqa: E402 - clip-anytorch (the dev extra); it needs setuptools<81 (pkg_resources)

from clip.model import CLIP, QuickGELU, convert_weights  # noqa: E402

from taskres.backbone import BackboneConfig, load_backbone, normalize, text_classifier  # noqa: E402
from taskres.datasets import IMAGENET_TEMPLATES  # noqa: E402
from taskres.datasets.coop import SPLIT_JSON_DATASETS  # noqa: E402
from taskres.methods.taskres import taskres_logits  # noqa: E402

# clip.model.CLIP's arguments for OpenAI's RN50 and ViT-B/32 (what clip/model.py's build_model reads from
# their state dicts): embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
# context_length, vocab_size, transformer_width, transformer_heads, transformer_layers
ARCHS = {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12),
    "ViT-B-32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
}
TOL = 1e-5
CLASSNAMES = ["tabby cat", "golden retriever"]
# the project's templates: two of the ImageNet ensemble and Oxford Pets' own
TEMPLATES = [IMAGENET_TEMPLATES[0], IMAGENET_TEMPLATES[-1], SPLIT_JSON_DATASETS["oxford_pets"][3]]
REVISION = "0" * 39 + "1"  # any commit hash: the cache's refs/main points at it


def _images() -> list[Image.Image]:
    """Smooth colour gradients with noise, neither square nor 224: resize and crop both matter."""
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((260, 300), (341, 256)):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], -1)
        out.append(Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)))
    return out


def _openai_model(arch: str) -> CLIP:
    """OpenAI's model with seeded random weights, carrying what OpenAI's released archives carry."""
    torch.manual_seed(1234)
    model = CLIP(*ARCHS[arch]).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))  # the released models' temperature
    # OpenAI's archives hold these three as buffers (clip/clip.py reads model.input_resolution; clip/model.py's
    # build_model deletes all three before loading a state dict)
    model.register_buffer("input_resolution", torch.tensor(ARCHS[arch][1]))
    for key, value in (("context_length", 77), ("vocab_size", 49408)):
        delattr(model, key)
        model.register_buffer(key, torch.tensor(value))
    return model


def _write_archive(model: CLIP, path) -> None:
    """A TorchScript archive of ``model`` (traced, as OpenAI's are), its weights in OpenAI's fp16/fp32 mix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # one short method is enough: every parameter and buffer of the module tree goes into the archive
        traced = torch.jit.trace_module(model, {"encode_text": clip.tokenize(["a"])}, check_trace=False)
    convert_weights(model)  # fp16 where OpenAI's released weights are fp16
    params = dict(traced.named_parameters())
    for name, p in model.named_parameters():
        params[name].data = params[name].data.to(p.dtype)
    traced.save(str(path))


def _plant_hf_cache(state_dict: dict, hub_root, arch: str) -> None:
    """The weights where huggingface_hub puts a download of the ``openai`` tag's repository."""
    import open_clip
    from safetensors.torch import save_file

    repo = open_clip.get_pretrained_cfg(arch, "openai")["hf_hub"].strip("/")  # e.g. timm/resnet50_clip.openai
    base = hub_root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(REVISION)
    (base / "blobs").mkdir()
    blob = base / "blobs" / "planted-open-clip-model"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(blob))
    snap = base / "snapshots" / REVISION
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").symlink_to("../../blobs/planted-open-clip-model")


def make_reference(arch: str, root) -> types.SimpleNamespace:
    """OpenAI's model with seeded weights written three ways under ``root``, and what OpenAI's code computes."""
    model = _openai_model(arch)
    _write_archive(model, root / f"{arch}.pt")  # leaves ``model`` with OpenAI's fp16 weights
    markers = ("input_resolution", "context_length", "vocab_size")  # build_model drops them: a saved state lacks them
    state = {k: v for k, v in model.state_dict().items() if k not in markers}
    torch.save(state, root / f"{arch}-state.pt")
    _plant_hf_cache(state, root / "hub", arch)
    del state
    model.float()  # what clip.load(path, device="cpu") returns: OpenAI's model on fp16-rounded weights, in fp32
    preprocess = clip.clip._transform(ARCHS[arch][1])  # OpenAI's test transform
    images = _images()
    prompts = [t.format(c) for c in CLASSNAMES for t in TEMPLATES]
    with torch.no_grad():
        pixels = torch.stack([preprocess(im) for im in images])
        image_feats = model.encode_image(pixels).float()
        text_feats = model.encode_text(clip.tokenize(prompts)).float()
        # the negative control: the same weights through nn.GELU (open_clip 3.x's default for RN50, ViT-B-32)
        for block in model.transformer.resblocks:
            assert isinstance(block.mlp.gelu, QuickGELU)
            block.mlp.gelu = torch.nn.GELU()
        gelu_text_feats = model.encode_text(clip.tokenize(prompts)).float()
    return types.SimpleNamespace(
        arch=arch, root=root, images=images, prompts=prompts, pixels=pixels, image_feats=image_feats,
        text_feats=text_feats, gelu_text_feats=gelu_text_feats, logit_scale=float(model.logit_scale.detach()))


def backbone_config(ref, source: str) -> BackboneConfig:
    if source == "archive":
        return BackboneConfig(ref.arch, str(ref.root / f"{ref.arch}.pt"))
    if source == "state_dict":  # a file that cannot say its activation: the user says it
        return BackboneConfig(ref.arch, str(ref.root / f"{ref.arch}-state.pt"), quick_gelu=True)
    return BackboneConfig(ref.arch, "openai")  # resolved from the planted cache (offline_hf_cache)


def gaps(ref, backbone) -> dict[str, float]:
    """Max absolute differences from OpenAI's code: pixels, unit image/text features, t, logits."""
    pixels = torch.stack([backbone.preprocess(im) for im in ref.images])
    image_feats = backbone.encode_images(pixels)
    seen = {}

    def encode(prompts):
        seen["feats"] = backbone.encode_texts(prompts)
        return seen["feats"]

    base = text_classifier(encode, CLASSNAMES, TEMPLATES)  # the pipeline's base classifier t
    text_feats = seen["feats"]
    ref_base = ref.text_feats.reshape(len(CLASSNAMES), len(TEMPLATES), -1).mean(1)
    logits = taskres_logits(image_feats, base, torch.zeros_like(base), 0.5, backbone.logit_scale)  # x = 0
    ref_logits = math.exp(ref.logit_scale) * normalize(ref.image_feats) @ normalize(ref_base).t()
    return {
        "pixels": _max_diff(pixels, ref.pixels),
        "image": _max_diff(normalize(image_feats), normalize(ref.image_feats)),
        "image_rel": _max_diff(image_feats, ref.image_feats) / float(ref.image_feats.abs().max()),
        "text": _max_diff(normalize(text_feats), normalize(ref.text_feats)),
        "text_rel": _max_diff(text_feats, ref.text_feats) / float(ref.text_feats.abs().max()),
        "base": _max_diff(normalize(base), normalize(ref_base)),
        "logits": _max_diff(logits, ref_logits),
        "logit_scale": abs(backbone.logit_scale - ref.logit_scale),
        "argmax_differs": float(not torch.equal(logits.argmax(1), ref_logits.argmax(1))),
        "gelu_text": _max_diff(normalize(ref.gelu_text_feats), normalize(ref.text_feats)),
    }


@pytest.fixture(scope="module", params=sorted(ARCHS))
def openai_ref(request, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order on both sides (the suite runs on one thread anyway)
    root = tmp_path_factory.mktemp(f"openai-{request.param}")
    yield make_reference(request.param, root)
    shutil.rmtree(root, ignore_errors=True)  # a few hundred MB per architecture
    torch.set_num_threads(threads)


def offline_hf_cache(monkeypatch, hub_root) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_CACHE", str(hub_root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both variables once, at import: set its module values as well
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub_root))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("source", ["archive", "state_dict", "hf_cache"])
def test_features_equal_openais_own_code(openai_ref, source, monkeypatch):
    if source == "hf_cache":
        offline_hf_cache(monkeypatch, openai_ref.root / "hub")
    backbone = load_backbone(backbone_config(openai_ref, source))
    assert backbone.identity["activation"] == "quick_gelu"
    got = gaps(openai_ref, backbone)
    # what the comparison would see with nn.GELU: far outside the tolerance (the bug this file guards against)
    assert got.pop("gelu_text") > 30 * TOL
    assert got.pop("argmax_differs") == 0
    assert all(v <= TOL for v in got.values()), got
