"""``--set alpha=auto --set lr=auto``: parsing, the grid, selection on val only, what is recorded, and why."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from test_taskres import D, separable_context

from taskres.classifier import load_classifier, save_classifier
from taskres.methods import TrainingError, get_method
from taskres.methods.taskres.autotune import KAPPAS, SIGMAS, candidate_grid, text_rms, val_scores
from taskres.methods.base import parse_overrides
from taskres.methods.taskres import TASKRES_LR, TaskRes, TaskResParams
from taskres.methods.taskres_enhanced import TaskResEnhancedParams

EPOCHS = 40  # every candidate trains this schedule; short, so that a 17-candidate search stays near a second
GRID = 1 + len(KAPPAS) * len(SIGMAS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def draw(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh images of separable_context's classes (same centres), with their true labels."""
    same = separable_context(n_per_class=n_per_class, seed=0)
    g = torch.Generator().manual_seed(seed)
    labels = same.train.labels
    return same.train.views[0] + 0.3 * torch.randn(len(labels), D, generator=g), labels


def context(scale: float = 1.0, val=None, lr: float | None = None, monkeypatch=None, **kw):
    """``lr``: the synthetic task's reference lr, set for this test in TaskRes's per-dataset table."""
    val_x, val_y = draw(4, seed=5) if val is None else val
    ctx = separable_context(n_per_class=8, val_features=val_x, val_labels=val_y, **kw)
    if lr is not None:
        monkeypatch.setitem(TASKRES_LR, ctx.task_name, lr)
    return replace(ctx, text_classifier=ctx.text_classifier * scale)


def top1(clf, x, y) -> float:
    with torch.no_grad():
        return float((clf(x).argmax(1) == y).float().mean())


def auto(**kw) -> TaskResParams:
    return TaskResParams(epochs=EPOCHS, **{"alpha": "auto", "lr": "auto", **kw})


def test_auto_parses_for_alpha_and_lr_only():
    assert parse_overrides(TaskResParams, ["alpha=auto", "lr=AUTO", "epochs=5"]) == {"alpha": "auto", "lr": "auto",
                                                                                    "epochs": 5}
    assert parse_overrides(TaskResEnhancedParams, {"alpha": "auto", "lr": "1e-3"}) == {"alpha": "auto", "lr": 1e-3}
    assert parse_overrides(TaskResParams, ["alpha=0.5"]) == {"alpha": 0.5}
    with pytest.raises(ValueError, match="^epochs must be a whole number"):
        parse_overrides(TaskResParams, ["epochs=auto"])
    with pytest.raises(ValueError, match="^alpha must be a number.*not the text 'autox'"):
        parse_overrides(TaskResParams, ["alpha=autox"])
    with pytest.raises(ValueError, match="lr must be a number or 'auto'"):  # a string through the API
        TaskRes(TaskResParams(lr="fast")).fit(context())


def test_grid_is_scale_free_and_starts_at_the_reference():
    grid = candidate_grid(("alpha", "lr"), 0.5, 2e-3, rms=2.0)
    assert len(grid) == GRID and grid[0] == {"alpha": 0.5, "lr": 2e-3, "reference": True, "kappa": 0.25,
                                             "sigma": 0.5 * 2e-3 / 2.0}
    big = candidate_grid(("alpha", "lr"), 0.5, 2e-3, rms=20.0)
    # text 10x larger: every searched alpha 10x larger, the same learning rates (the problem's symmetry)
    assert [b["alpha"] for b in big[1:]] == pytest.approx([10 * g["alpha"] for g in grid[1:]])
    assert [b["lr"] for b in big[1:]] == pytest.approx([g["lr"] for g in grid[1:]])
    assert sorted({round(g["kappa"], 9) for g in grid[1:]}) == list(KAPPAS)
    only_lr = candidate_grid(("lr",), 0.5, 2e-3, rms=2.0)
    assert {g["alpha"] for g in only_lr} == {0.5} and len(only_lr) == 1 + len(SIGMAS)
    only_alpha = candidate_grid(("alpha",), 0.5, 2e-3, rms=2.0)
    assert {g["lr"] for g in only_alpha} == {2e-3} and len(only_alpha) == 1 + len(KAPPAS)


def test_search_keeps_the_val_best_candidate_exactly_and_records_the_grid(tmp_path, monkeypatch):
    ctx = context(lr=0.5, monkeypatch=monkeypatch)
    clf = TaskRes(auto()).fit(ctx)
    hp = clf.meta.hparams
    search = hp["auto_search"]
    assert len(search["grid"]) == GRID and search["selected_on"] == "val"
    assert search["val_images"] == len(ctx.val_labels) and search["reference"] == {"alpha": 0.5, "lr": 0.5}
    keys = [(-c["val_top1"], c["val_loss"], i) for i, c in enumerate(search["grid"])]
    best = search["grid"][min(keys)[2]]
    assert hp["alpha"] == best["alpha"] == clf.alpha and hp["lr"] == best["lr"]
    # the kept classifier is the fixed-value run with the chosen values, not a re-tuned or shortened one
    fixed = TaskRes(TaskResParams(epochs=EPOCHS, alpha=hp["alpha"], lr=hp["lr"])).fit(ctx)
    assert torch.equal(fixed.residual, clf.residual)
    # each recorded score is that candidate's top-1 and loss on ctx.val_features
    for cell in (search["grid"][0], search["grid"][-1]):
        other = TaskRes(TaskResParams(epochs=EPOCHS, alpha=cell["alpha"], lr=cell["lr"])).fit(ctx)
        assert (cell["val_top1"], cell["val_loss"]) == pytest.approx(val_scores(other, ctx.val_features,
                                                                                ctx.val_labels))
    save_classifier(clf, tmp_path / "c.safetensors")
    assert load_classifier(tmp_path / "c.safetensors").meta.hparams["auto_search"] == json.loads(json.dumps(search))


def test_the_search_follows_the_val_split_not_the_test_images():
    test_x, test_y = draw(20, seed=9)
    honest = TaskRes(auto()).fit(context())
    # the same val images labelled as zero-shot CLIP sees them: val now rewards leaving the prior alone
    val_x, _ = draw(4, seed=5)
    prior_labels = TaskRes(TaskResParams(epochs=0)).fit(context())(val_x).argmax(1)
    misled = TaskRes(auto()).fit(context(val=(val_x, prior_labels)))
    h, m = honest.meta.hparams["auto_search"]["chosen"], misled.meta.hparams["auto_search"]["chosen"]
    assert (h["alpha"], h["lr"]) != (m["alpha"], m["lr"])
    assert m["val_top1"] == 100.0
    # the misled choice is worse on test: the test images never entered the choice
    assert top1(honest, test_x, test_y) > top1(misled, test_x, test_y) + 0.2


def test_huge_text_norms_defeat_the_fixed_alpha_at_any_lr_but_not_auto(monkeypatch):
    test_x, test_y = draw(20, seed=9)
    fixed = TaskResParams(epochs=EPOCHS)  # alpha 0.5 and the dataset's lr 0.5: fine at the usual scale
    assert top1(TaskRes(fixed).fit(context(1.0, lr=0.5, monkeypatch=monkeypatch)), test_x, test_y) > 0.95
    huge = context(100.0, lr=0.5, monkeypatch=monkeypatch)
    zero_shot = top1(TaskRes(TaskResParams(epochs=0)).fit(huge), test_x, test_y)
    assert zero_shot < 0.7
    for lr in (0.5, 50.0):  # coupled weight decay, 1e4x stronger relative to the gradient, pins x near 0
        assert top1(TaskRes(replace(fixed, lr=lr)).fit(huge), test_x, test_y) < zero_shot + 0.05
    clf = TaskRes(auto()).fit(huge)
    assert top1(clf, test_x, test_y) > 0.95
    assert clf.alpha > 10 * 0.5  # a scaled-up alpha did it (the grid's alphas grow with the text classifier)


def test_auto_without_a_val_split_refuses_in_one_line():
    ctx = replace(context(), val_features=None, val_labels=None)
    with pytest.raises(TrainingError, match="validation split") as err:
        TaskRes(auto()).fit(ctx)
    assert "\n" not in str(err.value) and "alpha/lr=auto" in str(err.value)


def test_only_lr_auto_keeps_the_given_alpha():
    clf = TaskRes(auto(alpha=0.7)).fit(context())
    search = clf.meta.hparams["auto_search"]
    assert search["searched"] == ["lr"] and clf.alpha == 0.7 and len(search["grid"]) == 1 + len(SIGMAS)


def test_taskres_enhanced_searches_on_its_own_base(tiny_backbone):
    from test_methods import FAST, make_task

    task = make_task(tiny_backbone)
    clf = get_method("taskres_enhanced", {**FAST["taskres_enhanced"], "alpha": "auto", "lr": "auto",
                                          "epochs": 5}).fit(task.ctx)
    assert clf.meta.method == "taskres_enhanced" and "proj_epoch" in clf.meta.extra
    search = clf.meta.hparams["auto_search"]
    assert len(search["grid"]) == GRID and clf.meta.hparams["alpha"] == search["chosen"]["alpha"]
    base = clf.base if clf.meta.extra["proj_epoch"] else task.ctx.text_classifier
    assert search["text_rms"] == pytest.approx(text_rms(base))


def test_cli_fit_with_auto_writes_the_search_to_metrics(class_folder, tmp_path, capsys):
    from taskres.cli import main

    from conftest import TINY_MODEL

    run = tmp_path / "run"
    assert main(["fit", "--dataset", str(class_folder), "--backbone", TINY_MODEL, "--pretrained", "none",
                 "--shots", "2", "--views", "1", "--out", str(run), "--quiet", "--set", "epochs=3",
                 "--set", "alpha=auto", "--set", "lr=auto"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    search = metrics["hparams"]["auto_search"]
    assert len(search["grid"]) == GRID and all(c["val_top1"] is not None for c in search["grid"])
    assert metrics["hparams"]["alpha"] == search["chosen"]["alpha"] and isinstance(metrics["hparams"]["lr"], float)
    assert f"auto: alpha = {search['chosen']['alpha']:.4g}" in out
    assert json.loads((run / "config.json").read_text())["method_params"] == {"epochs": "3", "alpha": "auto",
                                                                               "lr": "auto"}
