"""Parity of taskres's zero-shot methods with CoOp's zero-shot trainers (KaiyangZhou/CoOp trainers/zsclip.py):
``zeroshot`` against ``ZeroshotCLIP``, ``zeroshot_ens`` against ``ZeroshotCLIP2``, on a one-template dataset
(UCF101) and on ImageNet, with the fixture's class names (three hold "_").

    python -m parity.zeroshot --repo /path/to/CoOp   # a checkout of KaiyangZhou/CoOp

The official trainers' ``build_model`` runs as written on the fixture's tiny CLIP (its ``load_clip_to_cpu`` is
replaced by a function returning that model); ``model_inference`` gives the logits on fixed test images.
"""

from __future__ import annotations

import argparse
import contextlib
import types
from pathlib import Path

import torch

from parity import fixture
from parity.text_official import (load_module, official_code, snapshot_commit, taskres_encode_images,
                                  recipe_text_classifier)

OFFICIAL = {"repo": "KaiyangZhou/CoOp", "files": ["trainers/zsclip.py", "trainers/imagenet_templates.py"],
            "what": "zero-shot text classifier (ZeroshotCLIP, ZeroshotCLIP2) and its logits on fixed images"}
# (taskres dataset name, CoOp's cfg.DATASET.NAME, the templates our reader gives the dataset)
DATASETS = (("ucf101", "UCF101", ["a photo of a person doing {}."]), ("imagenet", "ImageNet", None))
TRAINERS = (("zeroshot", "ZeroshotCLIP"), ("zeroshot_ens", "ZeroshotCLIP2"))
IMAGES_PER_CLASS = 2
DEVIATIONS: list[tuple[str, str]] = []


def dataset_templates(name: str, templates: list[str] | None) -> list[str]:
    from taskres.datasets.coop import IMAGENET_TEMPLATES

    return list(IMAGENET_TEMPLATES) if templates is None else templates


def test_pixels() -> torch.Tensor:
    """The first IMAGES_PER_CLASS test images of each class, preprocessed as CLIP's ``_transform`` does."""
    from clip.clip import _transform  # clip-anytorch: OpenAI's preprocessing

    pics, labels = fixture.images("test")
    keep = [i for i in range(len(pics)) if i % fixture.TEST_PER_CLASS < IMAGES_PER_CLASS]
    return torch.stack([_transform(fixture.IMAGE_SIZE)(pics[i]) for i in keep])


def run_official(zsclip, trainer: str, dataset: str, model, pixels: torch.Tensor, select: list[str]):
    """One official trainer's text features and logits (its build_model and model_inference as written)."""
    zsclip.load_clip_to_cpu = lambda cfg: model  # patched: the fixture's model instead of a download
    zsclip.ZeroshotCLIP2.templates = list(select)  # patched: undo the class list's += of a previous run
    obj = object.__new__(getattr(zsclip, trainer))
    obj.cfg = types.SimpleNamespace(DATASET=types.SimpleNamespace(NAME=dataset),
                                    MODEL=types.SimpleNamespace(BACKBONE=types.SimpleNamespace(NAME="tiny")))
    obj.dm = types.SimpleNamespace(dataset=types.SimpleNamespace(classnames=list(fixture.CLASSNAMES)))
    obj.device = "cpu"
    with torch.no_grad():
        obj.build_model()
        logits = obj.model_inference(pixels.to(model.dtype))
    return obj.text_features, logits


def generate(repo: Path) -> None:
    pixels = test_pixels()
    tensors = {"pixels": pixels}
    models = {name: fixture.tiny_clip(dtype) for name, dtype in fixture.DTYPES.items()}
    layer_norm = type(models["float64"].ln_final)
    with official_code(repo):
        zsclip = load_module("trainers.zsclip")
        select = list(load_module("trainers.imagenet_templates").IMAGENET_TEMPLATES_SELECT)
        for dtype_name, model in models.items():
            for method, trainer in TRAINERS:
                for ours, theirs, _ in DATASETS:
                    with fixture.exact_layernorm(layer_norm) if dtype_name == "float64" else contextlib.nullcontext():
                        text, logits = run_official(zsclip, trainer, theirs, model, pixels, select)
                    tensors[f"{dtype_name}/{method}/{ours}/text"] = text
                    tensors[f"{dtype_name}/{method}/{ours}/logits"] = logits
    outputs = [f"{m}/{d}/{k}" for m, _ in TRAINERS for d, _, _ in DATASETS for k in ("text", "logits")]
    meta = {
        "official": {**{k: OFFICIAL[k] for k in ("repo", "files")}, "commit": snapshot_commit(repo)},
        "what": OFFICIAL["what"], "outputs": outputs,
        "classnames": list(fixture.CLASSNAMES),
        "patches": ["dassl stubbed (registry decorator, TrainerX base class; unused by build_model)",
                    "trainers/coop.py load_clip_to_cpu -> the fixture's tiny CLIP (fp64 or fp32)",
                    "ZeroshotCLIP2.templates reset to IMAGENET_TEMPLATES_SELECT before each run (its += grows the "
                    "class list across runs in one process)",
                    "fp64: OpenAI's LayerNorm keeps the input dtype (fixture.exact_layernorm)",
                    ".cuda() / .to('cuda') stay on the CPU"],
        "tolerance": {"float64": {"atol": 1e-12, "rtol": 1e-12}, "float32": {"atol": 1e-5, "rtol": 1e-5}},
        # taskres's CosineClassifier keeps its weights in float32 by design (a saved classifier is fp32), so
        # its logits carry fp32 round-off in both runs; the text classifier itself is compared in fp64.
        "tolerance_by_output": {f"{m}/{d}/logits": {"float64": {"atol": 5e-5, "rtol": 0},
                                                     "float32": {"atol": 5e-5, "rtol": 0}}
                                for m, _ in TRAINERS for d, _, _ in DATASETS},
    }
    fixture.save_golden("zeroshot", tensors, meta)


def recompute(golden: dict[str, torch.Tensor], meta: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """taskres's ZeroShot / ZeroShotEnsemble, given the text classifier of their recipe, on the same images."""
    from taskres.methods import FitContext, get_method

    classnames = meta["classnames"]
    features = taskres_encode_images(golden["pixels"], dtype)
    out = {}
    for method, _ in TRAINERS:
        for ours, _, templates in DATASETS:
            templates = dataset_templates(ours, templates)
            zs = get_method(method)
            text = recipe_text_classifier(method, ours, templates, classnames, dtype)
            ctx = FitContext(task_name=ours, classnames=classnames, templates=templates, text_classifier=text,
                             logit_scale=fixture.tiny_backbone().logit_scale, train=None, shots=0, seed=1,
                             backbone_identity={}, text_recipe=zs.recipe)
            clf = zs.fit(ctx)
            out[f"{method}/{ours}/text"] = text
            with torch.no_grad():
                out[f"{method}/{ours}/logits"] = clf(features)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a checkout of " + OFFICIAL["repo"])
    generate(parser.parse_args().repo)


if __name__ == "__main__":
    main()
