"""Which weights, with which activation: the rule, OpenAI's archives read as data, open_clip's table honoured.

All on tiny models or on models built on the meta device (no memory, no random init, no download); the
full-size comparison with OpenAI's code is tests/test_openai_parity.py.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import open_clip
import pytest
import torch
from clip.model import CLIP, convert_weights
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from taskres.backbone import (BackboneConfig, BackboneError, WeightsPlan, build_model, load_backbone,
                              model_activation, plan_weights)
from taskres.classifier import ClassifierError, ClassifierMeta, CosineClassifier, check_backbone
from taskres.cli import backbone_config, build_parser
from taskres.cli.commands import activation_flags
from taskres.features import View, entry_key
from taskres.methods.taskres import reference_defaults
from taskres.openai_archive import ArchiveError, read_state_dict
from taskres.protocols import BackboneSpec, preset

from conftest import TINY_MODEL

README = Path(__file__).resolve().parent.parent / "README.md"
# A tiny OpenAI CLIP (clip.model.CLIP's arguments) and the open_clip config of the same architecture
TINY_OPENAI = (32, 32, 2, 64, 16, 77, 49408, 32, 2, 1)
TINY_OPENAI_CFG = {"embed_dim": 32,
                   "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
                   "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def _trace(model: torch.nn.Module, path: Path, tokens=None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inputs = {"encode_text": tokens} if tokens is not None else {"forward": torch.randn(1, 4)}
        torch.jit.trace_module(model, inputs, check_trace=False).save(str(path))


@pytest.fixture(scope="module")
def tiny_openai_archive(tmp_path_factory) -> Path:
    """A tiny OpenAI CLIP as OpenAI ships its models: traced, fp16 weights, the three marker buffers."""
    import clip

    torch.manual_seed(0)
    model = CLIP(*TINY_OPENAI).eval()
    model.register_buffer("input_resolution", torch.tensor(32))
    for key, value in (("context_length", 77), ("vocab_size", 49408)):
        delattr(model, key)
        model.register_buffer(key, torch.tensor(value))
    path = tmp_path_factory.mktemp("archive") / "tiny-openai.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trace in fp32 (CPU fp16 kernels are slow), then store OpenAI's fp16
        traced = torch.jit.trace_module(model, {"encode_text": clip.tokenize(["a"])}, check_trace=False)
    convert_weights(model)
    params = dict(traced.named_parameters())
    for name, p in model.named_parameters():
        params[name].data = params[name].data.to(p.dtype)
    traced.save(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_openai_config(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cfg") / "tiny-openai.json"
    path.write_text(json.dumps(TINY_OPENAI_CFG))
    return str(path)


# -- OpenAI's archives, read as data --------------------------------------------------------------------------
def test_archive_reads_as_torch_jit_load_would(tiny_openai_archive):
    ours = read_state_dict(tiny_openai_archive)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.jit.load(str(tiny_openai_archive)).state_dict()  # our own file: safe to run here
    assert sorted(ours) == sorted(theirs)
    for k, v in theirs.items():
        assert ours[k].dtype == v.dtype and torch.equal(ours[k], v), k
    assert ours["visual.conv1.weight"].dtype == torch.float16 and int(ours["input_resolution"]) == 32


def test_openai_archive_loads_with_quick_gelu_and_openai_preprocessing(tiny_openai_archive, tiny_openai_config):
    backbone = load_backbone(BackboneConfig(tiny_openai_config, str(tiny_openai_archive)))
    assert backbone.identity["activation"] == "quick_gelu"
    assert backbone.identity["pretrained"] == "tiny-openai.pt"
    weights = read_state_dict(tiny_openai_archive)
    for k, v in backbone.model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k].float()), k
    assert (backbone.mean, backbone.std) == (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    with pytest.raises(BackboneError, match=r"contradicting activations.*BackboneConfig\.quick_gelu=False"):
        load_backbone(BackboneConfig(tiny_openai_config, str(tiny_openai_archive), quick_gelu=False))


def test_openai_archive_for_another_architecture_is_one_clear_line(tiny_openai_archive):
    with pytest.raises(BackboneError) as err:
        load_backbone(BackboneConfig(TINY_MODEL, str(tiny_openai_archive)))
    msg = str(err.value)
    assert "\n" not in msg and "does not fit BackboneConfig.name='test-tiny'" in msg and "size mismatch" in msg


def test_torchscript_that_is_not_openai_clip_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    _trace(torch.nn.Linear(4, 2), path)
    assert sorted(read_state_dict(path)) == ["bias", "weight"]
    with pytest.raises(BackboneError, match="not one of OpenAI's CLIP checkpoints"):
        load_backbone(BackboneConfig(TINY_MODEL, str(path)))


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_archive_naming_other_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(_Payload(marker), protocol=2))
        z.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(ArchiveError, match="system"):
        read_state_dict(path)
    with pytest.raises(BackboneError) as err:
        load_backbone(BackboneConfig(TINY_MODEL, str(path)))
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


# -- the weights-to-activation rule ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, pretrained, option, want", [
    ("RN50", "openai", None, True),  # open_clip's table: quick_gelu=True
    ("RN50-quickgelu", "openai", None, True),
    ("ViT-B-32", "openai", None, True),
    ("ViT-B-32", "laion2b_s34b_b79k", None, False),
    ("RN50-quickgelu", "none", None, True),  # the config says so
    ("RN50", "none", None, False),  # random weights: the config's default
    ("RN50", "none", True, True),
])
def test_activation_rule(name, pretrained, option, want):
    plan = plan_weights(BackboneConfig(name, pretrained, quick_gelu=option))
    assert (plan.quick_gelu, plan.note) == (want, None)


@pytest.mark.parametrize("name, pretrained, option", [
    ("RN50", "openai", False), ("ViT-B-32", "laion2b_s34b_b79k", True), ("RN50-quickgelu", "none", False)])
def test_an_option_that_contradicts_the_weights_is_refused(name, pretrained, option):
    with pytest.raises(BackboneError, match="contradicting activations"):
        plan_weights(BackboneConfig(name, pretrained, quick_gelu=option))


def test_hub_models_and_unknown_tags():
    with pytest.raises(BackboneError, match="hf-hub: model's own config"):
        plan_weights(BackboneConfig("hf-hub:org/repo", quick_gelu=True))
    with pytest.raises(BackboneError, match="neither a checkpoint file nor a tag of RN50.*openai"):
        plan_weights(BackboneConfig("RN50", "openia"))


def test_a_file_that_cannot_say_gets_a_note_or_the_option(tmp_path, caplog, tiny_backbone):
    from safetensors.torch import save_file

    path = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}, str(path))
    with caplog.at_level(logging.WARNING, logger="taskres.backbone"):
        gelu = load_backbone(BackboneConfig(TINY_MODEL, str(path)))
    notes = [r.getMessage() for r in caplog.records if r.name == "taskres.backbone"]
    assert len(notes) == 1 and "\n" not in notes[0] and "mine.safetensors" in notes[0] and "--quick-gelu" in notes[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="taskres.backbone"):
        quick = load_backbone(BackboneConfig(TINY_MODEL, str(path), quick_gelu=True))
        confirmed = load_backbone(BackboneConfig(TINY_MODEL, str(path), quick_gelu=False))
    assert not [r for r in caplog.records if r.name == "taskres.backbone"]  # said explicitly: no note
    assert (gelu.identity["activation"], quick.identity["activation"]) == ("gelu", "quick_gelu")
    assert confirmed.identity == gelu.identity
    # the same weights through another activation: another backbone everywhere downstream
    assert gelu.identity["fingerprint"] == quick.identity["fingerprint"]
    paths = [str(tmp_path / "a.png")]
    assert entry_key(gelu, paths, View()) != entry_key(quick, paths, View())
    x = torch.zeros(3, gelu.embed_dim)
    clf = CosineClassifier(ClassifierMeta(["a", "b", "c"], dict(gelu.identity), "zeroshot"), x)
    check_backbone(clf, gelu.identity)
    with pytest.raises(ClassifierError, match="activation gelu.*activation quick_gelu"):
        check_backbone(clf, quick.identity)


def test_cli_flags_and_taskres_rn50_rules():
    parser = build_parser()
    for flags, want in (([], None), (["--quick-gelu"], True), (["--no-quick-gelu"], False)):
        args = parser.parse_args(["fit", "--dataset", "x", "--backbone", "RN50", "--pretrained", "w.pt", *flags])
        assert backbone_config(args).quick_gelu is want
    # a sweep's backbone carries the option to its cells and to the command that repeats a cell
    spec = BackboneSpec("RN50", "/w/rn50.safetensors", quick_gelu=True)
    assert spec.config().quick_gelu is True and activation_flags(spec) == ["--quick-gelu"]
    assert spec.key() != BackboneSpec("RN50", "/w/rn50.safetensors").key()
    assert BackboneSpec("RN50", "openai").key() == {"model": "RN50", "pretrained": "openai", "precision": "fp32"}
    # TaskRes's RN50 settings (lr 2e-3, 100/200 epochs) follow the architecture, not the activation's name
    for shots in (1, 16):
        assert reference_defaults("dtd", "RN50-quickgelu", shots) == reference_defaults("dtd", "RN50", shots)
    assert reference_defaults("dtd", "RN50-quickgelu", 1)["lr"] == 2e-3


# -- open_clip's pretrained table honoured ----------------------------------------------------------------------
def _named_models() -> list[str]:
    """The open_clip models the presets and the README name, with their -quickgelu twins."""
    known = set(open_clip.list_models())
    names = {b["name"] for p in ("fewshot", "domain", "base2new") for b in preset("paper", p)[0]["backbones"]}
    names |= {n for n in re.findall(r"`([A-Za-z0-9-]+)`", README.read_text()) if n in known}
    names |= {"ViT-B-32"}
    names |= {f"{n}-quickgelu" for n in names if f"{n}-quickgelu" in known}
    return sorted(names)


def _preprocess_facts(preprocess) -> dict:
    from torchvision import transforms as T

    steps = list(preprocess.transforms)
    resize = next(s for s in steps if isinstance(s, T.Resize))
    crop = next((s for s in steps if isinstance(s, T.CenterCrop)), None)
    norm = next(s for s in steps if isinstance(s, T.Normalize))
    return {"resize": resize.size, "interpolation": resize.interpolation.value,
            "crop": tuple(crop.size) if crop else None, "mean": tuple(norm.mean), "std": tuple(norm.std)}


def test_every_tag_of_the_named_models_gets_its_activation_and_preprocessing(monkeypatch):
    """Each tag's plan is checked; one model is built per distinct (activation, preprocessing) of a model
    name, on the meta device, with open_clip's download stubbed out: what the build depends on is exactly
    the model name, the activation and the tag's preprocessing entries, so the other tags build alike."""
    import open_clip.factory

    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda *a, **k: "")  # nothing is fetched
    names = _named_models()
    assert {"RN50", "RN50-quickgelu", "ViT-B-16", "ViT-L-14", "ViT-B-32"} <= set(names)
    built = 0
    for name in names:
        size = open_clip.get_model_config(name)["vision_cfg"]["image_size"]
        groups: dict[tuple, tuple[str, dict]] = {}
        for tag in open_clip.list_pretrained_tags_by_model(name):
            pcfg = open_clip.get_pretrained_cfg(name, tag)
            plan = plan_weights(BackboneConfig(name, tag))
            assert (plan.kind, plan.quick_gelu, plan.note) == ("tag", bool(pcfg.get("quick_gelu")), None), (name, tag)
            facts = (plan.quick_gelu, tuple(pcfg["mean"]), tuple(pcfg["std"]), pcfg["interpolation"],
                     pcfg["resize_mode"], pcfg.get("size", size))
            groups.setdefault(facts, (tag, pcfg))
        for (quick, mean, std, interp, mode, tag_size), (tag, pcfg) in groups.items():
            with torch.device("meta"):
                model, preprocess = build_model(plan_weights(BackboneConfig(name, tag)), device="meta")
            built += 1
            assert model_activation(model) == ("quick_gelu" if quick else "gelu"), (name, tag)
            assert model.visual.image_size in (tag_size, (tag_size, tag_size))
            pp = model.visual.preprocess_cfg  # what Backbone reads for the reference augmentation
            assert (tuple(pp["mean"]), tuple(pp["std"]), pp["interpolation"]) == (mean, std, interp), (name, tag)
            got = _preprocess_facts(preprocess)
            assert (got["mean"], got["std"], got["interpolation"]) == (mean, std, interp), (name, tag)
            if mode == "shortest":
                assert got["resize"] in (tag_size, [tag_size]) and got["crop"] == (tag_size, tag_size)
            if tag == "openai":  # OpenAI's preprocessing (clip/clip.py _transform)
                assert got == {"resize": got["resize"], "interpolation": "bicubic", "crop": (224, 224),
                               "mean": OPENAI_DATASET_MEAN, "std": OPENAI_DATASET_STD}
                assert got["resize"] in (224, [224])
    assert built < 40  # the grouping keeps this test to a few seconds


@pytest.mark.parametrize("name", ["RN50", "ViT-B-32", "ViT-B-16", "ViT-L-14"])
def test_openai_archives_build_with_quick_gelu_and_openai_preprocessing(name):
    with torch.device("meta"):
        model, preprocess = build_model(WeightsPlan(name, f"/x/{name}.pt", "openai_archive", True), device="meta")
    assert model_activation(model) == "quick_gelu"
    assert _preprocess_facts(preprocess) in ({"resize": r, "interpolation": "bicubic", "crop": (224, 224),
                                              "mean": OPENAI_DATASET_MEAN, "std": OPENAI_DATASET_STD}
                                             for r in (224, [224]))
