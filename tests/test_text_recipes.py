"""Each method's text classifier as its original builds it (issue 19, fixes 1 and 3): the names it prompts with
("_" kept or turned into spaces), its templates (its own on ImageNet) and its mean over templates."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from taskres.api import FitConfig, build_context, evaluate, fit
from taskres.datasets import TaskData
from taskres.datasets.base import Sample
from taskres.datasets.coop import IMAGENET_TEMPLATES
from taskres.methods import METHODS, get_method, recipe_of
from taskres.methods import coop as coop_module
from taskres.methods.base import TrainingError
from taskres.methods.kit.text_recipe import IMAGENET_SELECT, TASKRES

NAMES = ["Apply_Eye_Makeup", "tabby_cat", "dog"]
SPACED = ["Apply Eye Makeup", "tabby cat", "dog"]
# What each original prompts with (verified in its official code; methods/kit/text_recipe.py cites the files).
SPACES = {"zeroshot", "zeroshot_ens", "coop", "clip_adapter", "tip_adapter", "tip_adapter_f", "lpp", "gda"}
RAW = {"taskres", "taskres_enhanced", "clap", "linear_probe"}
# method -> templates on ImageNet (the dataset's own there: TaskRes's 8)
IMAGENET = {
    "taskres": IMAGENET_TEMPLATES, "taskres_enhanced": IMAGENET_TEMPLATES, "clap": IMAGENET_TEMPLATES,
    "linear_probe": IMAGENET_TEMPLATES,
    "tip_adapter": list(IMAGENET_SELECT), "tip_adapter_f": list(IMAGENET_SELECT), "lpp": list(IMAGENET_SELECT),
    "gda": list(IMAGENET_SELECT), "zeroshot_ens": list(IMAGENET_SELECT),
    "zeroshot": ["a photo of a {}."], "clip_adapter": ["a photo of a {}."], "coop": ["a photo of a {}."],
}
NORMALISE_EACH = {"tip_adapter", "tip_adapter_f", "lpp", "gda", "zeroshot", "zeroshot_ens", "coop"}


def task(name="ucf101", templates=("a photo of a person doing {}.",)):
    return TaskData(name, list(NAMES), list(templates), train=[], val=[], test=[])


def expected_classifier(backbone, names, templates, normalise_each):
    feats = torch.stack([backbone.encode_texts([t.format(c) for c in names]).double() for t in templates], 1)
    if normalise_each:
        return F.normalize(F.normalize(feats, dim=-1).mean(1), dim=-1)
    return feats.mean(1)


# --method auto fits other methods, each on its own recipe; its own is TaskRes's base (its zero-shot column)
ALL = set(METHODS) - {"auto"}


def test_every_method_declares_a_recipe():
    assert ALL == SPACES | RAW == set(IMAGENET)
    assert get_method("auto").recipe is TASKRES


@pytest.mark.parametrize("method", sorted(ALL))
def test_prompt_names_follow_the_original(tiny_backbone, method):
    ctx = build_context(task(), tiny_backbone, None, shots=1, seed=1, progress=False,
                        recipe=get_method(method).recipe)
    assert ctx.classnames == NAMES  # what the classifier saves and a user sees
    assert ctx.prompt_classnames == (SPACED if method in SPACES else NAMES)
    own = ["a photo of a person doing {}."]
    assert ctx.templates == ([*IMAGENET_SELECT, *own] if method == "zeroshot_ens" else own)
    want = expected_classifier(tiny_backbone, ctx.prompt_classnames, ctx.templates, method in NORMALISE_EACH)
    assert torch.allclose(ctx.text_classifier.double(), want, atol=1e-6)


@pytest.mark.parametrize("method", sorted(ALL))
def test_imagenet_templates_and_normalisation_follow_the_original(tiny_backbone, method):
    ctx = build_context(task("imagenet", IMAGENET_TEMPLATES), tiny_backbone, None, shots=1, seed=1,
                        progress=False, recipe=get_method(method).recipe)
    assert ctx.templates == IMAGENET[method]
    want = expected_classifier(tiny_backbone, ctx.prompt_classnames, IMAGENET[method], method in NORMALISE_EACH)
    assert torch.allclose(ctx.text_classifier.double(), want, atol=1e-6)
    if method in NORMALISE_EACH:  # not the same as normalising the unnormalised mean on 7 templates
        other = F.normalize(expected_classifier(tiny_backbone, ctx.prompt_classnames, IMAGENET[method], False), dim=-1)
        assert len(IMAGENET[method]) == 1 or not torch.allclose(want, other, atol=1e-6)


def test_taskres_base_is_unchanged(tiny_backbone):
    """TaskRes's base (proven against the authors' code) is still the backbone's plain template mean."""
    for t in (task(), task("imagenet", IMAGENET_TEMPLATES)):
        ctx = build_context(t, tiny_backbone, None, shots=1, seed=1, progress=False,
                            recipe=get_method("taskres").recipe)
        assert torch.equal(ctx.text_classifier, tiny_backbone.text_classifier(t.classnames, t.templates))


def test_coop_prompts_the_names_with_spaces(tiny_backbone, monkeypatch):
    seen = []
    real = coop_module.PromptLearner

    def spy(tower, classnames, params, seed):
        seen.append(list(classnames))
        return real(tower, classnames, params, seed)

    monkeypatch.setattr(coop_module, "PromptLearner", spy)
    method = get_method("coop", {"epochs": 0, "n_ctx": 2})
    ctx = build_context(task(), tiny_backbone, None, shots=1, seed=1, progress=False, recipe=method.recipe)
    clf = method.fit(ctx)
    assert seen == [SPACED] and clf.classnames == NAMES


def test_a_context_built_for_another_recipe_is_rebuilt(tiny_backbone):
    """A context handed to a method of another recipe (a method fitting others) gives it its own classifier."""
    taskres_ctx = build_context(task(), tiny_backbone, None, shots=1, seed=1, progress=False,
                                recipe=get_method("taskres").recipe)
    for method in ("zeroshot", "zeroshot_ens", "tip_adapter"):
        recipe = get_method(method).recipe
        own = build_context(task(), tiny_backbone, None, shots=1, seed=1, progress=False, recipe=recipe)
        moved = taskres_ctx.with_recipe(recipe)
        assert moved.prompt_classnames == own.prompt_classnames == SPACED and moved.templates == own.templates
        assert torch.allclose(moved.text_classifier, own.text_classifier, atol=1e-6)
    assert taskres_ctx.with_recipe(get_method("clap").recipe) is taskres_ctx  # the same classifier
    zs = get_method("zeroshot").fit(taskres_ctx)
    want = build_context(task(), tiny_backbone, None, shots=1, seed=1, progress=False,
                         recipe=get_method("zeroshot").recipe).text_classifier
    assert torch.allclose(zs.base, want, atol=1e-6)
    with pytest.raises(ValueError, match="templates must be one of"):
        get_method("zeroshot", {"templates": "bogus"}).recipe
    with pytest.raises(TrainingError, match="no backbone"):
        dataclasses.replace(taskres_ctx, backbone=None).with_recipe(get_method("gda").recipe)


def test_fit_gives_each_method_its_text_classifier_and_records_it(tiny_backbone, tmp_path):
    """Through fit(): the run's zero-shot column and classifier follow the method's recipe, the saved names the
    dataset's."""
    images = []
    for label, colour in enumerate(("red", "green", "blue")):
        for i in range(5):
            path = tmp_path / f"{label}_{i}.png"
            Image.new("RGB", (32, 32), colour).save(path)
            images.append(Sample(str(path), label))
    data = TaskData("ucf101", list(NAMES), ["a photo of a person doing {}."], train=images, val=[], test=images)
    out = {}
    for method in ("zeroshot", "taskres"):
        res = fit(FitConfig(method=method, shots=2, seed=1, views=1, cache_dir="", progress=False),
                  backbone=tiny_backbone, task=data)
        assert res.classifier.classnames == NAMES
        out[method] = res
    zs = out["zeroshot"]
    assert zs.metrics["text_classifier"]["names"] == "spaces"
    assert zs.metrics["text_classifier"]["source"].startswith("KaiyangZhou/CoOp trainers/zsclip.py")
    want = expected_classifier(tiny_backbone, SPACED, ["a photo of a person doing {}."], True)
    assert torch.allclose(F.normalize(zs.classifier.base.double(), dim=-1), want, atol=1e-6)
    assert out["taskres"].metrics["text_classifier"]["names"] == "raw"
    # the zero-shot column beside a run is its method's own text classifier: for zero-shot, the method itself
    for evaluation in (zs.metrics["evaluation"]["test"],
                       evaluate(zs.classifier, "ucf101", task=data, backbone=tiny_backbone, cache_dir="",
                                progress=False)["evaluation"]):
        assert evaluation["zeroshot"]["ece"] == pytest.approx(evaluation["method"]["ece"], abs=1e-9)
    assert recipe_of("tip_adapter").names == "spaces" and recipe_of("not-a-method").names == "raw"


def test_bench_records_of_a_changed_recipe_are_not_reused():
    """A sweep's cell key names the text recipe for every method whose classifier is not TaskRes's base, so a
    record made before (every method on TaskRes's base) is run again; TaskRes's records stay valid."""
    from taskres.protocols import BackboneSpec, Cell, SweepConfig

    sweep = SweepConfig(datasets=["ucf101"], methods=["taskres", "tip_adapter", "zeroshot", "clap"],
                        backbones=[BackboneSpec("RN50")], method_params={"zeroshot": {"templates": "ensemble"}})
    keys = {m: Cell("fewshot", sweep.backbones[0], "ucf101", m, 1, 1).key(sweep) for m in sweep.methods}
    assert "text_recipe" not in keys["taskres"] and "text_recipe" not in keys["clap"]  # CLAP's is TaskRes's
    assert keys["tip_adapter"]["text_recipe"]["names"] == "spaces"
    assert keys["zeroshot"]["text_recipe"]["ensemble"] == list(IMAGENET_SELECT)
    import json
    assert json.loads(json.dumps(keys["tip_adapter"])) == keys["tip_adapter"]  # equal after a record's round trip
