"""Each baseline at its release's settings (issue 11): per-dataset values, formulas, augmentation, search split.

The expected values are those of the official repositories' files named in each test, typed in here: a test
fails if a table or a default drifts from its source.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from taskres.api import FitConfig, build_context, fit
from taskres.backbone import BackboneConfig
from taskres.classifier import CosineClassifier
from taskres.cli.commands import fit_command
from taskres.datasets import DatasetError, TaskData, load_dataset, make_fewshot_split
from taskres.errors import OptionError
from taskres.features import CachedViews, View, entry_key
from taskres.methods import METHODS, FitContext, get_method
from taskres.methods.clap import outer_step, zero_shot_confidence
from taskres.methods.kit.search import linspace_grid
from taskres.methods.lpp import init_alpha
from taskres.methods.zeroshot import IMAGENET_TEMPLATES_SELECT, ensemble_templates, normalized_template_mean
from taskres.protocols import BackboneSpec, Cell, SweepConfig, fit_config
from taskres.transforms import random_resized_crop_box

from conftest import TINY_MODEL, make_coop_dataset


def ctx_for(task_name: str, shots: int = 16, **kw) -> FitContext:
    """A context that only names a cell (for resolved_params)."""
    return FitContext(task_name=task_name, classnames=["a", "b"], templates=["{}"], text_classifier=torch.eye(2),
                      logit_scale=0.0, train=None, shots=shots, seed=1, backbone_identity={"model": "RN50"}, **kw)


# -- Tip-Adapter: gaopengcuhk/Tip-Adapter configs/<dataset>.yaml -------------------------------------------
@pytest.mark.parametrize("dataset, scale, alpha, epochs", [
    ("dtd", [13, 13], 2, 20),  # configs/dtd.yaml
    ("oxford_flowers", [50, 50], 10, 20),  # configs/oxford_flowers.yaml
    ("eurosat", [12, 10], 2, 100),  # configs/eurosat.yaml
    ("fgvc_aircraft", [30, 30], 5, 20),  # configs/fgvc.yaml
    ("stanford_cars", [20, 10], 3, 20),  # configs/stanford_cars.yaml
    ("caltech101", [12, 5], 3, 20),  # configs/caltech101.yaml
    ("imagenet", [7, 3], 1.17, 20),  # configs/imagenet.yaml
])
def test_tip_adapter_resolves_the_release_config_of_each_dataset(dataset, scale, alpha, epochs):
    for name in ("tip_adapter", "tip_adapter_f"):
        p = get_method(name).resolved_params(ctx_for(dataset))
        assert p.search_scale == scale and p.init_alpha == alpha and p.init_beta == 1.0
        assert p.search_step == [200, 20]
    assert get_method("tip_adapter_f").resolved_params(ctx_for(dataset)).epochs == epochs


def test_tip_adapter_set_values_win_and_unknown_datasets_get_imagenets():
    p = get_method("tip_adapter_f", ["search_scale=5,4", "epochs=3", "init_alpha=0.5"]).resolved_params(ctx_for("dtd"))
    assert (p.search_scale, p.epochs, p.init_alpha) == ([5.0, 4.0], 3, 0.5)
    p = get_method("tip_adapter").resolved_params(ctx_for("mini-shapes"))
    assert (p.search_scale, p.init_alpha) == ([7, 3], 1.17)


def test_tip_adapter_grid_is_the_release_formula():
    # utils.py search_hp: [i * (scale - 0.1) / step + 0.1 for i in range(step)]
    for top, steps in ((13, 200), (50, 20)):
        expected = [i * (top - 0.1) / steps + 0.1 for i in range(steps)]
        assert np.allclose(linspace_grid(top, steps), expected, rtol=0, atol=1e-12)


def _tip_f_steps(num_images: int, epochs: int, monkeypatch) -> tuple[list[float], dict]:
    """Fit Tip-Adapter-F on num_images random features; the lr of every AdamW step it takes, and its meta."""
    lrs = []
    step = torch.optim.AdamW.step

    def counting_step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(num_images) % 2
    views = CachedViews(torch.randn(1, num_images, 8, generator=g, dtype=torch.float64).float(), labels)
    ctx = FitContext(task_name="dtd", classnames=["a", "b"], templates=["{}"], text_classifier=torch.eye(2, 8),
                     logit_scale=float(np.log(100.0)), train=views, shots=num_images // 2, seed=1,
                     backbone_identity={}, progress=False)
    clf = get_method("tip_adapter_f", {"epochs": epochs}).fit(ctx)
    return lrs, clf.meta.extra


@pytest.mark.parametrize("num_images, batches", [(300, 2), (511, 2), (512, 2), (200, 1)])
def test_tip_adapter_f_keeps_the_last_partial_batch_as_the_release(num_images, batches, monkeypatch):
    # Issue 19, fix 2: main.py's train_loader_F is built with drop_last=False (datasets/utils.py
    # build_data_loader) and CosineAnnealingLR(optimizer, train_epoch * len(train_loader_F)): 300 images at
    # batch 256 are 2 steps an epoch, and the cosine reaches 0 only after the last of them.
    epochs = 3
    lrs, extra = _tip_f_steps(num_images, epochs, monkeypatch)
    assert len(lrs) == epochs * batches
    total = epochs * batches
    assert lrs == pytest.approx([0.5 * 1e-3 * (1 + np.cos(np.pi * k / total)) for k in range(total)], rel=1e-12)
    assert extra["steps_per_epoch"] == batches


# -- CLIP-Adapter: clip_adapter.py ratio 0.2; CoOp's schedule (its README: train with CoOp's commands) ----
@pytest.mark.parametrize("dataset, shots, epochs", [
    ("imagenet", 16, 50), ("dtd", 1, 50), ("eurosat", 4, 100), ("oxford_flowers", 16, 200)])
def test_clip_adapter_ratio_and_epochs_per_cell(dataset, shots, epochs):
    p = get_method("clip_adapter").resolved_params(ctx_for(dataset, shots))
    assert p.ratio == 0.2 and p.epochs == epochs and p.lr == 0.002 and p.batch_size == 32
    assert get_method("clip_adapter", ["ratio=0.6"]).resolved_params(ctx_for(dataset, shots)).ratio == 0.6


# -- LP++: FereshteShakeri/FewShot-CLIP-Strong-Baseline methods/linear_probe_p2.py ----------------------------
def test_lpp_initial_alpha_averages_own_class_scores_only():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(4)
    scores = torch.rand(12, 3, generator=g)
    # the release: compute_centroids_alpha masks each score matrix row with its one-hot label, so class c's
    # centroid is the mean of f_i . t_c over the class-c images; alpha_init = 250 * mean over c.
    one_hot = F.one_hot(y, 3).float()
    release = 250 * float(((one_hot * scores) / one_hot.sum(0, keepdim=True)).sum(0).mean())
    assert init_alpha(scores, y, 3, 250.0) == pytest.approx(release, rel=1e-6)
    all_classes = 250 * float((one_hot.t() @ scores / 4).mean())  # the old, wrong average over every class
    assert abs(init_alpha(scores, y, 3, 250.0) - all_classes) > 1.0


# -- GDA: mrflogs/ICLR24 main_few_shots.py -------------------------------------------------------------------
def test_gda_grid_is_the_releases():
    assert get_method("gda").params.alpha_grid == [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]
    assert get_method("gda").params.fallback_alpha == 0.1


# -- augmentation per method ---------------------------------------------------------------------------------
EXPECTED_SCALES = {
    "tip_adapter": (0.5, 1.0), "tip_adapter_f": (0.5, 1.0),  # Tip-Adapter main.py train_tranform
    "lpp": (0.5, 1.0),  # FewShot-CLIP-Strong-Baseline main.py train_tranform
    "gda": (0.5, 1.0),  # ICLR24 main_few_shots.py train_tranform
    "linear_probe": None,  # CoOp lpclip/feat_extractor.py: build_transform(cfg, is_train=False)
    "taskres": (0.08, 1.0), "coop": (0.08, 1.0), "clip_adapter": (0.08, 1.0),  # Dassl RRCROP_SCALE
    "clap": (0.08, 1.0),  # jusiro/CLAP SGD_lr1e-1_B256_ep300.yaml, Dassl's crop
}


def test_each_method_declares_its_reference_crop():
    for name, scale in EXPECTED_SCALES.items():
        assert METHODS[name].aug_scale == scale, name
    assert get_method("linear_probe").params.normalize is False  # lpclip: raw clip_model.visual features


def test_the_cache_key_names_the_crop_scale(tiny_backbone):
    paths = ["a/1.png", "b/2.png"]
    plain = entry_key(tiny_backbone, paths, View("aug", 0, 1))
    assert entry_key(tiny_backbone, paths, View("aug", 0, 1, (0.08, 1.0))) == plain  # the same crop, one entry
    assert entry_key(tiny_backbone, paths, View("aug", 0, 1, (0.5, 1))) != plain
    assert "s0.5-1.0" in View("aug", 0, 1, (0.5, 1)).describe(tiny_backbone)


def test_crop_boxes_respect_the_scale():
    rng = np.random.default_rng(0)
    areas = [h * w / (200 * 160) for _, _, h, w in (random_resized_crop_box(200, 160, rng, (0.5, 1.0))
                                                    for _ in range(300))]
    assert min(areas) > 0.45 and max(areas) <= 1.0  # rounding of h, w only


@pytest.fixture(scope="module")
def coop_tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    make_coop_dataset(root, "dtd", per_class=(8, 6, 3))
    return root


def _fit(method, root, tmp_path, **kw):
    cfg = FitConfig(method=method, dataset="dtd", data_root=str(root), backbone=BackboneConfig(TINY_MODEL, "none"),
                    shots=2, seed=1, views=2, cache_dir=str(tmp_path / "cache"), progress=False,
                    method_params={"epochs": 2} if method in ("taskres", "tip_adapter_f") else {}, **kw)
    return fit(cfg)


def _entries(tmp_path) -> int:
    return len(list((tmp_path / "cache").glob("*/*/index.json")))


def test_methods_share_views_only_where_their_crops_agree(coop_tasks, tmp_path, tiny_backbone):
    m = _fit("tip_adapter", coop_tasks, tmp_path).metrics
    assert m["augmentation"] == [0.5, 1.0] and m["views"] == 2
    after_tip = _entries(tmp_path)  # 2 train views + val + test
    _fit("gda", coop_tasks, tmp_path)
    assert _entries(tmp_path) == after_tip  # GDA crops as Tip-Adapter: the same two views, read back
    assert _fit("taskres", coop_tasks, tmp_path).metrics["augmentation"] == [0.08, 1.0]
    assert _entries(tmp_path) == after_tip + 2  # two views of its own crop
    m = _fit("linear_probe", coop_tasks, tmp_path).metrics
    assert m["augmentation"] is None and m["views"] == 1 and m["num_train"] == 2 * 4
    assert _entries(tmp_path) == after_tip + 3  # the train images under the test transform


def test_extract_encodes_the_views_of_the_method_asked_for(coop_tasks):
    from taskres.extract import ExtractConfig, planned_views

    def train_views(method):
        cfg = ExtractConfig("dtd", str(coop_tasks), splits=("train",), shots=2, views=2, method=method)
        return [view for _, _, view in planned_views(cfg)]

    assert [v.scale for v in train_views("gda")] == [(0.5, 1.0)] * 2
    assert [v.scale for v in train_views("taskres")] == [(0.08, 1.0)] * 2
    assert train_views("linear_probe") == [View()]


def test_gda_crops_imagenet_as_its_release(tmp_path):
    # mrflogs/ICLR24 datasets/imagenet.py: ImageNet's train_preprocess crops at 0.08-1, where every other
    # dataset goes through main_few_shots.py's train_tranform at 0.5-1; fit and extract both follow it
    from taskres.extract import ExtractConfig, planned_views

    from conftest import COLOURS, draw

    rng = np.random.default_rng(0)
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "classnames.txt").write_text("n01 red thing\nn02 blue thing\n")
    for split, count in (("train", 5), ("val", 2)):
        for i, wnid in enumerate(("n01", "n02")):
            folder = tmp_path / "imagenet" / "images" / split / wnid
            folder.mkdir(parents=True)
            for j in range(count):
                draw(list(COLOURS.values())[i], rng).save(folder / f"{j}.png")
    cfg = ExtractConfig("imagenet", str(tmp_path), splits=("train",), shots=2, views=2, method="gda")
    assert [view.scale for _, _, view in planned_views(cfg)] == [(0.08, 1.0)] * 2
    fitted = fit(FitConfig(method="gda", dataset="imagenet", data_root=str(tmp_path), shots=2, seed=1, views=2,
                           backbone=BackboneConfig(TINY_MODEL, "none"), cache_dir=str(tmp_path / "cache"),
                           progress=False))
    assert fitted.metrics["augmentation"] == [0.08, 1.0]
    assert METHODS["gda"].crop_scale("imagenet") == (0.08, 1.0) and METHODS["gda"].crop_scale("dtd") == (0.5, 1.0)
    assert METHODS["lpp"].crop_scale("imagenet") == (0.5, 1.0)  # LP++'s datasets/imagenet.py keeps 0.5-1


# -- the search split ----------------------------------------------------------------------------------------
def test_full_and_fewshot_search_splits_differ_and_are_recorded(coop_tasks, tmp_path):
    task = load_dataset("dtd", str(coop_tasks))
    few = make_fewshot_split(task, 2, 1)
    full = make_fewshot_split(task, 2, 1, search_split="full")
    assert [s.path for s in few.train] == [s.path for s in full.train]  # the shots do not depend on it
    assert len(few.val) == 2 * task.num_classes and len(full.val) == len(task.val) == 6 * task.num_classes
    for split, fitted in (("fewshot", _fit("gda", coop_tasks, tmp_path)),
                          ("full", _fit("gda", coop_tasks, tmp_path, search_split="full",
                                        out=str(tmp_path / "run")))):
        assert fitted.metrics["search_split"] == split
        assert fitted.metrics["num_val"] == (len(few.val) if split == "fewshot" else len(full.val))
    assert (tmp_path / "run" / "splits.json").read_text().count('"search_split": "full"') == 1
    with pytest.raises(ValueError, match=r"FitConfig\.split_file=.*search split"):  # a full split file under the default option
        _fit("gda", coop_tasks, tmp_path, split_file=str(tmp_path / "run" / "splits.json"))


def test_no_full_search_split_without_a_validation_split(coop_tasks):
    task = load_dataset("dtd", str(coop_tasks))
    with pytest.raises(DatasetError, match="no validation split"):
        make_fewshot_split(dataclasses.replace(task, val=[]), 2, 1, search_split="full")
    with pytest.raises(OptionError, match="^search_split must be one of"):  # the library names the field
        make_fewshot_split(task, 2, 1, search_split="test")


def test_a_sweep_records_and_keys_its_search_split(tmp_path):
    spec = BackboneSpec(TINY_MODEL, "none")
    cell = Cell("fewshot", spec, "dtd", "gda", 2, 1)
    default = SweepConfig(datasets=["dtd"], methods=["gda"], backbones=[spec])
    full = dataclasses.replace(default, search_split="full")
    assert "search_split" not in cell.key(default)  # records from before the option stay valid
    assert cell.key(full)["search_split"] == "full" and cell.key(full) != cell.key(default)
    assert fit_config(cell, full, tmp_path, False).search_split == "full"
    assert "--search-split full" in fit_command(cell, full, tmp_path / "splits.json", tmp_path / "out")


# -- zero-shot: TaskRes trainers/zsclip.py ZeroshotCLIP2 ------------------------------------------------------
def test_zeroshot_ensemble_templates_follow_zsclip():
    assert ensemble_templates("dtd", ["{} texture."]) == [*IMAGENET_TEMPLATES_SELECT, "{} texture."]
    assert ensemble_templates("imagenet", ["a photo of a {}.", *IMAGENET_TEMPLATES_SELECT]) == \
        list(IMAGENET_TEMPLATES_SELECT)
    variant = ensemble_templates("imagenetv2", [*IMAGENET_TEMPLATES_SELECT, "a photo of a {}."])
    assert variant == [*IMAGENET_TEMPLATES_SELECT, "a photo of a {}."]  # CUSTOM_TEMPLATES["ImageNetV2"]


def test_zeroshot_ensemble_normalises_each_template(tiny_backbone):
    names = ["red thing", "blue thing"]
    task = TaskData("dtd", names, ["{} texture."], train=[], val=[], test=[])
    method = get_method("zeroshot_ens")
    ctx = build_context(task, tiny_backbone, None, shots=1, seed=1, progress=False, recipe=method.recipe)
    templates = ensemble_templates("dtd", ["{} texture."])
    assert ctx.templates == templates
    per_template = [F.normalize(tiny_backbone.encode_texts([t.format(c) for c in names]).float(), dim=-1)
                    for t in templates]
    expected = F.normalize(torch.stack(per_template).mean(0), dim=-1)
    assert torch.allclose(normalized_template_mean(tiny_backbone.encode_texts, names, templates), expected, atol=1e-6)
    clf = method.fit(ctx)
    assert torch.allclose(clf.base, expected, atol=1e-6)
    assert torch.equal(get_method("zeroshot", ["templates=ensemble"]).fit(ctx).base, clf.base)


# -- CLAP: jusiro/CLAP trainers/adapters.py ------------------------------------------------------------------
def _clap_ctx(val: bool = True) -> FitContext:
    g = torch.Generator().manual_seed(3)
    means, text = torch.randn(3, 16, generator=g) * 3, torch.randn(3, 16, generator=g)
    y = torch.arange(3).repeat_interleave(4)
    views = torch.stack([means[y] + torch.randn(12, 16, generator=g) for _ in range(2)])
    return FitContext(task_name="synthetic", classnames=["a", "b", "c"], templates=["{}"], text_classifier=text,
                      logit_scale=float(torch.tensor(100.0).log()), train=CachedViews(views, y, seed=1), shots=4,
                      seed=1, backbone_identity={"model": "synthetic"},
                      val_features=means if val else None, val_labels=torch.arange(3) if val else None)


def test_clap_multipliers_are_the_zero_shot_confidence_and_it_needs_no_val():
    ctx = _clap_ctx()
    x, y = ctx.train.views.reshape(-1, 16), ctx.train.labels.repeat(2)
    probs = torch.softmax(100 * F.normalize(x, dim=-1) @ F.normalize(ctx.text_classifier, dim=-1).t(), 1)
    expected = torch.stack([probs[y == c, c].mean() for c in range(3)])
    assert torch.allclose(zero_shot_confidence(x, y, ctx.text_classifier, ctx.logit_scale, 3), expected, atol=1e-6)
    with_val = get_method("clap", ["epochs=20"]).fit(ctx)
    without = get_method("clap", ["epochs=20"]).fit(_clap_ctx(val=False))
    assert torch.equal(with_val.weight, without.weight)  # no validation split is read


def test_clap_starts_at_zero_shot_and_the_penalty_holds_it_there():
    ctx = _clap_ctx()
    zs = CosineClassifier(ctx.meta("zeroshot", {}), ctx.text_classifier, None, 0.0, ctx.logit_scale)
    f = torch.randn(5, 16)
    assert torch.allclose(get_method("clap", ["epochs=0"]).fit(ctx)(f), zs(f), atol=1e-4)
    free = get_method("clap", ["epochs=30", "constraint=none"]).fit(ctx).weight
    held = get_method("clap", ["epochs=30"]).fit(ctx).weight
    start = 100 * F.normalize(ctx.text_classifier, dim=-1)
    assert (held - start).norm() < (free - start).norm()


def test_clap_outer_step_is_phr():
    lam, rho, d = torch.tensor([0.5, 0.2, 0.0]), torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.3, 0.4, 0.1])
    new_lam, new_rho = outer_step(lam, rho, d)
    assert torch.allclose(new_lam, torch.tensor([0.5, 0.6, 0.2])) and torch.equal(new_rho, d)
    assert torch.equal(outer_step(torch.tensor([-1.0]), torch.tensor([0.1]), torch.tensor([1.0]))[0],
                       torch.tensor([0.0]))


def test_clap_defaults_are_the_releases():
    p = get_method("clap").params  # configs/trainers/SGD_lr1e-1_B256_ep300.yaml, Dassl's SGD momentum
    assert (p.lr, p.epochs, p.batch_size, p.momentum, p.weight_decay, p.warmup_lr) == (0.1, 300, 256, 0.9, 0.0, 1e-5)
    assert (p.constraint, p.multipliers) == ("l2", "fixed")
