"""The comparison methods (linear probe, CoOp, CLIP-Adapter, Tip-Adapter(-F), TaskRes*, LP++, GDA, CLAP).

Two generated tasks, both separable, both poor for zero-shot CLIP:
- the text task, built from the tiny random text encoder: class c's image features are the text feature of
  the prompt "[hidden context] <class name>." plus noise, the hidden context being random token embeddings.
  A method learning through the text encoder (CoOp, TaskRes*) can find that context; the others learn the
  classes from the features.
- the feature task: random class means and a random, unrelated text classifier; no backbone at all. The
  tiny encoder's text features are nearly collinear (cosine ~0.99), which starves CLIP-Adapter's gradient
  (it adapts the image side against that frozen text classifier), so it is tested here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from taskres.classifier import CosineClassifier, load_classifier, save_classifier
from taskres.cli import main
from taskres.features import CachedViews
from taskres.methods import CLASSIFIERS, METHODS, FitContext, TrainingError, get_method
from taskres.methods.coop import coop_epochs
from taskres.methods.taskres import TaskRes, TaskResParams
from taskres.methods.taskres_enhanced import template_mean_pre_projection
from taskres.methods.kit.text_encoder import TextTower

from conftest import TINY_MODEL

NAMES = ["red thing", "green thing", "blue thing", "yellow thing"]
TEMPLATE = "a photo of a {}."
SHOTS = 4
CHANCE = 1 / len(NAMES)

# Settings that keep each fit well under a second on one CPU thread (few epochs, small batches so that 16
# training images still give several steps per epoch).
FAST = {
    "linear_probe": {"max_iter": 100, "refine_steps": 2},
    "coop": {"n_ctx": 4, "epochs": 40, "batch_size": 4, "lr": 5e-4},
    "clip_adapter": {"epochs": 40, "lr": 0.05, "batch_size": 4},
    "tip_adapter": {},
    "tip_adapter_f": {"epochs": 5, "batch_size": 4},
    "taskres_enhanced": {"epochs": 10, "lr": 0.01, "batch_size": 4, "proj_epochs": 10, "proj_batch_size": 4,
                         "proj_lrs": [1e-3, 1e-2]},
    "lpp": {"epochs": 50},
    "gda": {},
    "clap": {"epochs": 100},
}
OURS = sorted(FAST)
FEATURE_TASK_METHODS = {"clip_adapter"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: extra threads only add contention on a shared machine (10x slower under load).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclasses.dataclass
class Task:
    ctx: FitContext
    test_x: torch.Tensor
    test_y: torch.Tensor


def make_task(backbone, seed: int = 0, views: int = 2, val: bool = True) -> Task:
    tower = TextTower(backbone)
    g = torch.Generator().manual_seed(seed)
    n_ctx = 4
    tokens = tower.tokenize([" ".join(["X"] * n_ctx) + f" {name}." for name in NAMES])
    with torch.no_grad():
        emb = tower.embed(tokens)
        emb[:, 1:1 + n_ctx] = torch.randn(n_ctx, tower.width, generator=g) * 0.3  # the hidden context
        targets = tower.project(tower.pooled(emb, tokens), *tower.projection()).float()
    spread = float((targets - targets.mean(0)).norm(dim=1).mean())
    sigma = 0.5 * spread / targets.shape[1] ** 0.5  # noise: half the between-class spread

    def draw(n):
        y = torch.arange(len(NAMES)).repeat_interleave(n)
        return targets[y] + sigma * torch.randn(len(y), targets.shape[1], generator=g), y

    train_views = torch.stack([draw(SHOTS)[0] for _ in range(views)])
    train_y = torch.arange(len(NAMES)).repeat_interleave(SHOTS)
    val_x, val_y = draw(4) if val else (None, None)
    test_x, test_y = draw(30)
    ctx = FitContext(
        task_name="synthetic", classnames=list(NAMES), templates=[TEMPLATE],
        text_classifier=backbone.text_classifier(NAMES, [TEMPLATE]), logit_scale=backbone.logit_scale,
        train=CachedViews(train_views, train_y, seed=1), shots=SHOTS, seed=1,
        backbone_identity=backbone.identity, val_features=val_x, val_labels=val_y, backbone=backbone,
        progress=False)
    return Task(ctx, test_x, test_y)


def make_feature_task(seed: int = 0, dim: int = 32) -> Task:
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(len(NAMES), dim, generator=g), dim=-1) * 5
    text = torch.randn(len(NAMES), dim, generator=g)

    def draw(n):
        y = torch.arange(len(NAMES)).repeat_interleave(n)
        return means[y] + torch.randn(len(y), dim, generator=g), y

    train_views = torch.stack([draw(SHOTS)[0] for _ in range(2)])
    val_x, val_y = draw(4)
    test_x, test_y = draw(30)
    ctx = FitContext(
        task_name="synthetic", classnames=list(NAMES), templates=[TEMPLATE], text_classifier=text,
        logit_scale=float(torch.tensor(100.0).log()), train=CachedViews(train_views, draw(SHOTS)[1], seed=1),
        shots=SHOTS, seed=1, backbone_identity={"model": "synthetic", "fingerprint": "0"}, val_features=val_x,
        val_labels=val_y, backbone=None, progress=False)
    return Task(ctx, test_x, test_y)


@pytest.fixture(scope="module")
def task(tiny_backbone) -> Task:
    return make_task(tiny_backbone)


@pytest.fixture(scope="module")
def feature_task() -> Task:
    return make_feature_task()


def top1(clf, x, y) -> float:
    with torch.no_grad():
        return float((clf(x).argmax(1) == y).float().mean())


def zero_shot(ctx):
    return CosineClassifier(ctx.meta("zeroshot", {}), ctx.text_classifier, None, 0.0, ctx.logit_scale)


def test_registry_lists_every_method_and_its_classifier_kind():
    for name in OURS:
        assert name in METHODS and METHODS[name].name == name
    assert {"cosine", "linear", "clip_adapter", "tip_adapter", "coop"} <= set(CLASSIFIERS)


@pytest.mark.parametrize("name", OURS)
def test_method_learns_exports_and_is_deterministic(name, task, feature_task, tmp_path):
    task = feature_task if name in FEATURE_TASK_METHODS else task
    assert top1(zero_shot(task.ctx), task.test_x, task.test_y) <= 0.5  # so that learning is needed
    clf = get_method(name, FAST[name]).fit(task.ctx)
    acc = top1(clf, task.test_x, task.test_y)
    assert acc >= 0.8, f"{name}: top-1 {acc:.2f} on a separable task (chance {CHANCE:.2f})"
    assert clf.meta.method == name

    path = tmp_path / "clf.safetensors"
    save_classifier(clf, path)
    loaded = load_classifier(path)
    assert type(loaded) is type(clf) and loaded.meta.method == name
    with torch.no_grad():
        assert torch.equal(loaded(task.test_x), clf(task.test_x))

    again = get_method(name, FAST[name]).fit(task.ctx)  # same seed, same data: the same classifier
    for key, tensor in clf.tensors().items():
        assert torch.equal(tensor, again.tensors()[key]), f"{name}: {key} differs between two runs"


def test_text_tower_reproduces_encode_text(tiny_backbone):
    tower = TextTower(tiny_backbone)
    tokens = tower.tokenize(["a photo of a red thing.", "x", "itap of the blue thing."])
    with torch.no_grad():
        torch.testing.assert_close(tower.encode(tokens), tiny_backbone.model.encode_text(tokens), rtol=0, atol=0)


def test_tip_adapter_with_alpha_zero_is_zero_shot(task):
    clf = get_method("tip_adapter", {"alpha": 0.0}).fit(task.ctx)
    with torch.no_grad():
        torch.testing.assert_close(clf(task.test_x), zero_shot(task.ctx)(task.test_x))


def test_tip_adapter_searches_on_val_and_fine_tuning_moves_the_keys(task):
    tip = get_method("tip_adapter").fit(task.ctx)
    assert tip.meta.extra["val_top1"] is not None and tip.alpha > 0 and tip.beta > 0
    tuned = get_method("tip_adapter_f", FAST["tip_adapter_f"]).fit(task.ctx)
    assert not torch.equal(tuned.keys, tip.keys)
    assert torch.equal(tuned.values, tip.values)


def test_coop_from_a_photo_of_a_without_training_is_zero_shot(task):
    clf = get_method("coop", {"ctx_init": "a photo of a", "epochs": 0}).fit(task.ctx)
    assert clf.meta.extra["n_ctx"] == 4
    torch.testing.assert_close(clf.base, task.ctx.text_classifier, rtol=1e-5, atol=1e-5)


def test_coop_training_beats_its_own_initial_prompts(task):
    untrained = get_method("coop", {**FAST["coop"], "epochs": 0}).fit(task.ctx)
    trained = get_method("coop", FAST["coop"]).fit(task.ctx)
    assert top1(trained, task.test_x, task.test_y) >= top1(untrained, task.test_x, task.test_y) + 0.2


def test_coop_keeps_its_context_and_rebuilds_its_own_prompts_from_it(task, tmp_path):
    method = get_method("coop", {**FAST["coop"], "epochs": 3})
    clf = method.fit(task.ctx)
    assert clf.kind == "coop" and clf.context.shape == (4, task.ctx.backbone.model.transformer.width)
    save_classifier(clf, tmp_path / "coop.safetensors")
    loaded = load_classifier(tmp_path / "coop.safetensors")
    assert torch.equal(loaded.context, clf.context)
    # the base-to-new hook on the training classes themselves gives back the trained classifier
    again = method.classifier_for_new_classes(loaded, task.ctx)
    torch.testing.assert_close(again.base, clf.base, rtol=1e-5, atol=1e-5)
    assert again.meta.extra["new_classes"] == "learned context, new class names"


def test_clip_adapter_carries_its_adapter_to_new_classes(feature_task):
    task = feature_task
    method = get_method("clip_adapter", {**FAST["clip_adapter"], "epochs": 3})
    clf = method.fit(task.ctx)
    same = method.classifier_for_new_classes(clf, task.ctx)
    with torch.no_grad():
        assert torch.equal(same(task.test_x), clf(task.test_x))
    other = dataclasses.replace(task.ctx, text_classifier=task.ctx.text_classifier.flip(0),
                                classnames=task.ctx.classnames[::-1])
    new = method.classifier_for_new_classes(clf, other)
    assert torch.equal(new.fc1, clf.fc1) and torch.equal(new.text, other.text_classifier)
    assert new.classnames == other.classnames


def test_coop_schedule_follows_the_shots():
    assert [coop_epochs("caltech101", k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert coop_epochs("imagenet", 16) == 50


def test_coop_rejects_a_context_longer_than_the_text_encoder(task):
    with pytest.raises(TrainingError, match="n_ctx"):
        get_method("coop", {"n_ctx": 16, "epochs": 0}).fit(task.ctx)  # the tiny model holds 16 tokens


def test_clip_adapter_with_ratio_zero_is_zero_shot(feature_task):
    task = feature_task
    clf = get_method("clip_adapter", {**FAST["clip_adapter"], "ratio": 0.0, "epochs": 3}).fit(task.ctx)
    assert clf.fc1.abs().sum() > 0  # the adapter exists; the ratio switches it off
    with torch.no_grad():
        torch.testing.assert_close(clf(task.test_x), zero_shot(task.ctx)(task.test_x))


def test_gda_with_alpha_zero_is_zero_shot(task):
    clf = get_method("gda", {"alpha": 0.0}).fit(task.ctx)
    with torch.no_grad():
        torch.testing.assert_close(clf(task.test_x), zero_shot(task.ctx)(task.test_x), rtol=1e-5, atol=1e-4)


class Recorder:
    """A FitContext stand-in that remembers which of its attributes a method reads."""

    def __init__(self, ctx):
        object.__setattr__(self, "_ctx", ctx)
        object.__setattr__(self, "seen", set())

    def __getattr__(self, name):
        self.seen.add(name)
        return getattr(self._ctx, name)


def test_linear_probe_search_sees_only_the_context(task):
    # A FitContext holds no test data at all; the search can only use the few-shot val split.
    assert not [f.name for f in dataclasses.fields(FitContext) if "test" in f.name]
    spy = Recorder(task.ctx)
    first = get_method("linear_probe", FAST["linear_probe"]).fit(spy)
    assert spy.seen <= {"train", "all_train_features", "val_features", "val_labels", "num_classes", "classnames",
                        "meta"}, spy.seen
    assert {"val_features", "val_labels"} <= spy.seen
    assert first.meta.extra["val_top1"] is not None
    second = get_method("linear_probe", FAST["linear_probe"]).fit(task.ctx)
    assert first.meta.extra["c"] == second.meta.extra["c"]
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)

    fixed = Recorder(task.ctx)  # with C given there is nothing to search: val is not even read
    get_method("linear_probe", {**FAST["linear_probe"], "c": 1.0}).fit(fixed)
    assert not {"val_features", "val_labels"} & fixed.seen


def test_methods_without_val_fall_back_to_their_defaults(tiny_backbone):
    task = make_task(tiny_backbone, val=False)
    for name in ("linear_probe", "tip_adapter", "gda", "lpp"):
        clf = get_method(name, FAST[name]).fit(task.ctx)
        assert clf.meta.extra["val_top1"] is None
    assert get_method("gda").fit(task.ctx).meta.extra["alpha"] == 0.1


def test_enhanced_base_projection_is_linear_in_the_pre_projection_features(tiny_backbone):
    tower = TextTower(tiny_backbone)
    templates = [TEMPLATE, "itap of the {}."]
    pre = template_mean_pre_projection(tower, NAMES, templates)
    weight, _ = tower.projection()
    torch.testing.assert_close(pre @ weight.detach(), tiny_backbone.text_classifier(NAMES, templates),
                               rtol=1e-5, atol=1e-5)


def test_taskres_enhanced_without_projection_tuning_is_taskres(task):
    settings = {"epochs": 5, "lr": 0.01, "batch_size": 4}
    star = get_method("taskres_enhanced", {**settings, "proj_epochs": 0}).fit(task.ctx)
    plain = TaskRes(TaskResParams(**settings)).fit(task.ctx)
    assert star.meta.method == "taskres_enhanced" and star.meta.extra["proj_epoch"] == 0
    assert torch.equal(star.base, plain.base) and torch.equal(star.residual, plain.residual)


def test_taskres_enhanced_tunes_the_base_when_val_says_so(task):
    clf = get_method("taskres_enhanced", {**FAST["taskres_enhanced"], "epochs": 0}).fit(task.ctx)
    extra = clf.meta.extra
    assert extra["proj_epoch"] > 0 and extra["proj_val_top1"] > extra["pretrained_proj_val_top1"]
    assert not torch.allclose(clf.base, task.ctx.text_classifier)
    assert top1(clf, task.test_x, task.test_y) > top1(zero_shot(task.ctx), task.test_x, task.test_y) + 0.3


@pytest.mark.parametrize("name, overrides, message", [
    ("tip_adapter", {"keys": "bogus"}, "keys"),
    ("gda", {"train_views": "bogus"}, "train_views"),
    ("lpp", {"alpha_grad": "bogus"}, "alpha_grad"),
    ("linear_probe", {"c": -1.0}, "c must be positive"),
    ("linear_probe", {"device": "bogus"}, "device"),
    ("taskres_enhanced", {"proj_lrs": [0.0]}, "proj_lrs"),
])
def test_bad_settings_name_the_option(name, overrides, message, task):
    with pytest.raises(ValueError, match=message):
        get_method(name, overrides).fit(task.ctx)


def test_text_methods_need_a_backbone(task):
    ctx = dataclasses.replace(task.ctx, backbone=None)
    for name in ("coop", "taskres_enhanced"):
        with pytest.raises(TrainingError, match="backbone"):
            get_method(name, FAST[name]).fit(ctx)


def test_unknown_parameter_is_a_clear_error():
    with pytest.raises(ValueError, match="coop: n_ctxx is not a parameter"):
        get_method("coop", ["n_ctxx=4"])


CLI_SETTINGS = {
    "linear_probe": ["max_iter=50", "refine_steps=1"],
    "coop": ["n_ctx=4", "epochs=2"],
    "clip_adapter": ["epochs=2"],
    "tip_adapter": [],
    "tip_adapter_f": ["epochs=2"],
    "taskres_enhanced": ["epochs=2", "proj_epochs=2"],
    "lpp": ["epochs=5"],
    "gda": [],
    "clap": ["epochs=2"],
}


@pytest.mark.parametrize("name", OURS)
def test_cli_fit_then_eval(name, class_folder, tmp_path, capsys):
    run = tmp_path / "run"
    sets = [arg for s in CLI_SETTINGS[name] for arg in ("--set", s)]
    assert main(["fit", "--method", name, "--dataset", str(class_folder), "--backbone", TINY_MODEL,
                 "--pretrained", "none", "--shots", "2", "--views", "2", "--quiet", "--out", str(run), *sets]) == 0
    assert f"{name} on colours" in capsys.readouterr().out
    assert load_classifier(run).meta.method == name
    assert main(["eval", str(run), "--dataset", str(class_folder), "--quiet"]) == 0
    assert "top-1" in capsys.readouterr().out


def test_cli_coop_with_word_initialised_context(class_folder, tmp_path):
    run = tmp_path / "run"
    assert main(["fit", "--method", "coop", "--dataset", str(class_folder), "--backbone", TINY_MODEL,
                 "--pretrained", "none", "--shots", "1", "--views", "1", "--quiet", "--out", str(run),
                 "--set", "ctx_init=a photo of a", "--set", "epochs=1"]) == 0
    assert load_classifier(run).meta.extra["prompt_prefix"] == "a photo of a"


def test_cli_reports_bad_method_settings(class_folder, tmp_path, capsys):
    code = main(["fit", "--method", "tip_adapter", "--dataset", str(class_folder), "--backbone", TINY_MODEL,
                 "--pretrained", "none", "--shots", "1", "--views", "1", "--quiet", "--set", "keys=bogus"])
    assert code == 2
    assert "taskres: error:" in capsys.readouterr().err


def test_logits_do_not_depend_on_the_feature_norm(task):
    # Classifiers take raw encoder features and normalise them: the feature's scale must not matter.
    for name in ("gda", "lpp", "tip_adapter"):
        clf = get_method(name, FAST[name]).fit(task.ctx)
        with torch.no_grad():
            torch.testing.assert_close(clf(task.test_x * 3.0), clf(task.test_x), rtol=1e-4, atol=1e-4)


def test_classifier_module_imports_no_method_and_new_kinds_register_themselves(tmp_path):
    import ast

    import taskres.classifier as classifier_module
    from taskres.classifier import Classifier, ClassifierMeta, load_classifier, save_classifier

    tree = ast.parse(Path(classifier_module.__file__).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.startswith("methods") or ".methods" in m], imported  # no import circle

    class ScaledClassifier(Classifier):  # a kind of one's own, defined outside taskres
        kind = "test_scaled"

        def __init__(self, meta, weight):
            super().__init__(meta)
            self.register_buffer("weight", weight)

        def forward(self, features):
            return features @ self.weight.t()

        def tensors(self):
            return {"weight": self.weight}

        @classmethod
        def from_tensors(cls, tensors, meta, config):
            return cls(meta, tensors["weight"])

    try:
        clf = ScaledClassifier(ClassifierMeta(["a", "b"], {"model": "m"}, "test"), torch.eye(2, 3))
        save_classifier(clf, tmp_path / "c.safetensors")
        loaded = load_classifier(tmp_path / "c.safetensors")
        assert type(loaded) is ScaledClassifier and torch.equal(loaded.weight, clf.weight)
        with pytest.raises(TypeError, match="test_scaled"):
            type("Other", (Classifier,), {"kind": "test_scaled"})
    finally:
        CLASSIFIERS.pop("test_scaled", None)


def test_text_tower_runs_the_causal_prefix_only_and_gives_the_full_length_features(tiny_backbone):
    from taskres.methods.kit.text_encoder import TextTower

    tower = TextTower(tiny_backbone)
    texts = ["a photo of a red thing.", "x", "a longer prompt with several more words in it"]
    tokens = tower.tokenize(texts)
    assert tower.causal and tower._needed_length(tokens) < tokens.shape[1]  # padding is skipped
    with torch.no_grad():
        embedded = tower.embed(tokens)
        short = tower.pooled(embedded, tokens, prefix_only=True)
        full = tower.pooled(embedded, tokens)
    torch.testing.assert_close(short, full, rtol=0, atol=1e-5)
    tower.causal = False  # a mask that is not causal: every position is needed
    assert tower._needed_length(tokens) == tokens.shape[1]
    assert not TextTower._is_causal(torch.zeros(4, 4)) and TextTower._is_causal(
        torch.full((4, 4), float("-inf")).triu(1))
