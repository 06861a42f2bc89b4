"""Parity of the text classifier taskres gives each comparison method with the one its official code builds,
on a one-template dataset (UCF101) and on ImageNet, with the fixture's class names (three hold "_").

    python -m parity.text_classifiers --repo /path/to/snapshots   # a folder holding one checkout per repository

The folder holds the checkouts under the names ``owner+name`` (e.g. ``gaopengcuhk+Tip-Adapter``); each official
function runs as written on the fixture's tiny CLIP (fp64 and fp32):
- Tip-Adapter, GDA, LP++: ``utils.clip_classifier(classnames, template, clip_model)`` with the templates of
  their ``datasets/ucf101.py`` and ``datasets/imagenet.py``;
- CLAP, TaskRes: ``_get_base_text_features`` of ``trainers/adapters.py`` / ``trainers/taskres.py`` with their
  ``TextEncoder``, for cfg.DATASET.NAME "UCF101" and "ImageNet";
- CLIP-Adapter: ``clip_adapter.py`` ``TextEncoder(cfg, classnames, clip_model).forward()``.
``recompute`` builds each with the method's taskres text recipe (taskres.methods.kit.text_recipe) from the
templates taskres's own dataset readers give UCF101 and ImageNet.
"""

from __future__ import annotations

import argparse
import contextlib
import types
from pathlib import Path

import torch

from parity import fixture
from parity.text_official import literal, load_module, official_code, recipe_text_classifier, snapshot_commit

# method -> (repository, files read, how to run it)
SOURCES = {
    "tip_adapter": ("gaopengcuhk/Tip-Adapter", ["utils.py", "datasets/ucf101.py", "datasets/imagenet.py"],
                    "clip_classifier"),
    "gda": ("mrflogs/ICLR24", ["utils.py", "datasets/ucf101.py", "datasets/imagenet.py"], "clip_classifier"),
    "lpp": ("FereshteShakeri/FewShot-CLIP-Strong-Baseline", ["utils.py", "datasets/ucf101.py",
                                                             "datasets/imagenet.py"], "clip_classifier"),
    "clap": ("jusiro/CLAP", ["trainers/adapters.py", "datasets/imagenet_templates.py"], "base_text_features"),
    "taskres": ("geekyutao/TaskRes", ["trainers/taskres.py", "trainers/imagenet_templates.py"], "base_text_features"),
    "clip_adapter": ("gaopengcuhk/CLIP-Adapter", ["clip_adapter.py"], "clip_adapter"),
}
OFFICIAL = {"repo": ", ".join(r for r, _, _ in SOURCES.values()),
            "files": [f"{r}:{f}" for r, fs, _ in SOURCES.values() for f in fs],
            "what": "each comparison method's zero-shot text classifier as its official code builds it "
                    "(goldens text_<method>, one per repository)"}
# taskres dataset name -> (Dassl's cfg.DATASET.NAME, the templates taskres's reader gives it)
DATASETS = {"ucf101": ("UCF101", ["a photo of a person doing {}."]), "imagenet": ("ImageNet", None)}
DEVIATIONS = [
    ("ImageNet class names: Tip-Adapter, GDA and LP++ prompt their in-code `imagenet_classes` (one list, the same "
     "in the three repositories); taskres prompts the names of CoOp's classnames.txt, which CoOp's DATASETS.md says "
     "is copied from the same CLIP notebook",
     "not measured: classnames.txt is not in any public snapshot to compare; the goldens feed both the same names"),
]


def dataset_templates(name: str) -> list[str]:
    from taskres.datasets.coop import IMAGENET_TEMPLATES

    templates = DATASETS[name][1]
    return list(IMAGENET_TEMPLATES) if templates is None else list(templates)


def _cfg(dataset: str):
    return types.SimpleNamespace(DATASET=types.SimpleNamespace(NAME=dataset))


def clip_classifier_runs(repo: Path, model) -> dict[str, torch.Tensor]:
    """utils.clip_classifier on each dataset's own templates; [D, C] transposed to taskres's [C, D]."""
    utils = load_module("utils")
    templates = {"ucf101": literal(repo / "datasets" / "ucf101.py", "template"),
                 "imagenet": literal(repo / "datasets" / "imagenet.py", "imagenet_templates")}
    with torch.no_grad():
        return {name: utils.clip_classifier(list(fixture.CLASSNAMES), templates[name], model).t()
                for name in DATASETS}


def base_text_features_runs(repo: Path, module: str, templates_module: str, model) -> dict[str, torch.Tensor]:
    """_get_base_text_features(cfg, classnames, clip_model, TextEncoder(clip_model)) per dataset."""
    trainer = load_module(module)
    select = load_module(templates_module).IMAGENET_TEMPLATES_SELECT
    original = list(select)
    out = {}
    for name, (dataset, _) in DATASETS.items():
        select[:] = original  # patched: its `TEMPLATES += [...]` grows the module's list on every call
        with torch.no_grad():
            found = trainer._get_base_text_features(_cfg(dataset), list(fixture.CLASSNAMES), model,
                                                    trainer.TextEncoder(model))
        out[name] = found[0] if isinstance(found, tuple) else found  # CLAP also returns every template's
    select[:] = original
    return out


def clip_adapter_runs(repo: Path, model) -> dict[str, torch.Tensor]:
    adapter = load_module("clip_adapter")
    with torch.no_grad():
        return {name: adapter.TextEncoder(_cfg(dataset), list(fixture.CLASSNAMES), model)()
                for name, (dataset, _) in DATASETS.items()}


def run_method(method: str, repo: Path, model) -> dict[str, torch.Tensor]:
    kind = SOURCES[method][2]
    with official_code(repo):
        if kind == "clip_classifier":
            return clip_classifier_runs(repo, model)
        if kind == "base_text_features":
            templates = "datasets.imagenet_templates" if method == "clap" else "trainers.imagenet_templates"
            return base_text_features_runs(repo, SOURCES[method][1][0][:-3].replace("/", "."), templates, model)
        return clip_adapter_runs(repo, model)


def generate(repo: Path) -> None:
    """``repo``: the folder of checkouts (``owner+name`` each). One golden per method, ``text_<method>``."""
    layer_norm = type(fixture.tiny_clip(torch.float64).ln_final)
    for method, (name, files, _) in SOURCES.items():
        checkout = repo / name.replace("/", "+")
        tensors = {}
        for dtype_name, dtype in fixture.DTYPES.items():
            model = fixture.tiny_clip(dtype)
            exact = fixture.exact_layernorm(layer_norm) if dtype == torch.float64 else contextlib.nullcontext()
            with exact:
                for dataset, text in run_method(method, checkout, model).items():
                    tensors[f"{dtype_name}/{method}/{dataset}"] = text.to(dtype)
        meta = {
            "module": "text_classifiers",
            "official": {"repo": name, "commit": snapshot_commit(checkout), "files": files},
            "what": f"{method}'s zero-shot text classifier (UCF101, ImageNet; '_' names)",
            "classnames": list(fixture.CLASSNAMES), "outputs": [f"{method}/{d}" for d in DATASETS],
            "patches": ["dassl stubbed (registries, trainer base classes; unused by the functions run)",
                        ".cuda() / .to('cuda') stay on the CPU",
                        "CLAP, TaskRes: IMAGENET_TEMPLATES_SELECT restored before each call (`TEMPLATES += "
                        "[...]` appends to the module's list on every call)",
                        "fp64: OpenAI's LayerNorm keeps the input dtype (fixture.exact_layernorm)",
                        "the fixture's class names stand in for each dataset's (ImageNet: for imagenet_classes)"],
            "tolerance": {"float64": {"atol": 1e-12, "rtol": 1e-12}, "float32": {"atol": 1e-5, "rtol": 1e-5}},
        }
        fixture.save_golden(f"text_{method}", tensors, meta)


def recompute(golden: dict[str, torch.Tensor], meta: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The method's text classifier from its taskres text recipe (what its FitContext receives)."""
    out = {}
    for key in meta["outputs"]:
        method, dataset = key.split("/")
        out[key] = recipe_text_classifier(method, dataset, dataset_templates(dataset), meta["classnames"], dtype)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True,
                        help="a folder holding one checkout per repository, named owner+name")
    generate(parser.parse_args().repo)


if __name__ == "__main__":
    main()
