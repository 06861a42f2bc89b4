"""--method auto: every candidate fitted as its own run, scored on the validation split only, the best kept
(ties to the simpler method), the choice and every score in metrics.json and report.html."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_MODEL, make_class_folder
from taskres.cli import main
from taskres.methods import get_method
from taskres.methods.auto import CANDIDATES, Candidate, choose, simplicity_order

TINY = ["--backbone", TINY_MODEL, "--pretrained", "none"]


def fit_args(dataset, out, *extra):
    return ["fit", "--dataset", str(dataset), *TINY, "--shots", "2", "--views", "2", "--out", str(out), "--quiet",
            *extra]


def test_fit_auto_writes_the_choice_and_every_candidates_val_score(class_folder, tmp_path, capsys):
    assert main(fit_args(class_folder, tmp_path / "run", "--method", "auto", "--set",
                         "candidates=taskres,linear_probe,zeroshot,gda", "--set", "taskres.epochs=3")) == 0
    assert "auto: chose " in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    auto = metrics["auto"]
    assert metrics["method"] == "auto" and metrics["num_val"] == auto["val_images"] > 0
    assert [c["method"] for c in auto["candidates"]] == ["zeroshot", "gda", "linear_probe", "taskres"]  # tie order
    scores = {c["method"]: c["val_top1"] for c in auto["candidates"]}
    assert all(c["error"] is None and c["val_top1"] == pytest.approx(100 * c["val_correct"] / auto["val_images"])
               for c in auto["candidates"])
    best = max(scores.values())
    assert auto["chosen"] == next(m for m, s in scores.items() if s == best) and auto["val_top1"] == best
    assert metrics["hparams"] == load_hparams(tmp_path / "run")  # the chosen method's own settings
    page = (tmp_path / "run" / "report.html").read_text()
    assert f"Method chosen on validation: {auto['chosen']}" in page
    assert all(name in page for name in scores)


def load_hparams(run):
    from taskres import load_classifier

    return load_classifier(run).meta.hparams


def test_auto_keeps_exactly_the_classifier_its_candidate_gives_alone(class_folder, tmp_path):
    """A trained candidate on augmented views: auto's classifier equals `fit --method taskres` on the same split."""
    assert main(fit_args(class_folder, tmp_path / "auto", "--method", "auto", "--set", "candidates=taskres",
                         "--set", "taskres.epochs=4")) == 0
    assert main(fit_args(class_folder, tmp_path / "alone", "--method", "taskres", "--set", "epochs=4",
                         "--split-file", str(tmp_path / "auto" / "splits.json"))) == 0
    from taskres import load_classifier

    auto, alone = load_classifier(tmp_path / "auto"), load_classifier(tmp_path / "alone")
    assert auto.residual.abs().sum() > 0  # it trained
    assert torch.equal(auto.residual, alone.residual) and torch.equal(auto.base, alone.base)
    m_auto, m_alone = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("auto", "alone"))
    assert m_auto["top1"] == m_alone["top1"] and m_auto["augmentation"] == m_alone["augmentation"]
    assert m_auto["views"] == m_alone["views"] == 2


def test_equal_val_scores_go_to_the_simpler_method():
    assert simplicity_order(["clip_adapter", "taskres", "zeroshot", "my_plugin"]) == [
        "zeroshot", "taskres", "clip_adapter", "my_plugin"]
    assert CANDIDATES[0] == "zeroshot" and "coop" not in CANDIDATES
    head = torch.nn.Linear(2, 2)
    tied = [Candidate("zeroshot", None, 0, 8, 0.1, "failed"), Candidate("gda", head, 6, 8, 0.1),
            Candidate("taskres", head, 6, 8, 0.1), Candidate("clip_adapter", head, 5, 8, 0.1)]
    assert choose(tied).name == "gda"
    tied[2] = Candidate("taskres", head, 7, 8, 0.1)
    assert choose(tied).name == "taskres"


def test_auto_refuses_a_run_without_a_validation_split(tmp_path, capsys):
    root = tmp_path / "noval"  # train/ holds exactly the shots: nothing is left to validate on
    make_class_folder(root / "train", per_class=2, seed=1)
    make_class_folder(root / "test", per_class=2, seed=2)
    assert main(fit_args(root, tmp_path / "run", "--method", "auto", "--set", "candidates=zeroshot")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method auto chooses on the validation split" in err[0]
    assert not (tmp_path / "run").exists()
    cache = tmp_path / "taskres-cache"  # conftest's TASKRES_CACHE: refused before any image was encoded
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_auto_parameters_are_checked_before_any_work():
    with pytest.raises(ValueError, match="not a method it can choose"):
        get_method("auto", {"candidates": "zeroshot,coopp"})
    with pytest.raises(ValueError, match="lr is not a parameter"):  # a candidate's parameter, checked by it
        get_method("auto", {"candidates": "zeroshot,gda", "gda.lr": "1"})
    with pytest.raises(ValueError, match="auto takes candidates="):
        get_method("auto", {"lr": "1"})
    from taskres.protocols import resolve_sweep

    sweep = resolve_sweep({"datasets": ["mini-shapes"], "methods": ["auto"], "backbones": [{"name": TINY_MODEL}]},
                          set_items=["auto.taskres.epochs=3", "auto.candidates=zeroshot,taskres"])
    assert sweep.method_params["auto"] == {"taskres.epochs": "3", "candidates": "zeroshot,taskres"}


def test_a_candidate_gets_its_own_text_recipe(class_folder, tmp_path):
    """The class folders are named "red_thing", ...: Tip-Adapter prompts "red thing" (its original replaces "_"),
    TaskRes the raw name. Chosen by auto, Tip-Adapter's classifier is the one its own run builds."""
    assert main(fit_args(class_folder, tmp_path / "auto", "--method", "auto", "--set", "candidates=tip_adapter")) == 0
    assert main(fit_args(class_folder, tmp_path / "alone", "--method", "tip_adapter",
                         "--split-file", str(tmp_path / "auto" / "splits.json"))) == 0
    from taskres import load_classifier

    auto, alone = (load_classifier(tmp_path / r).tensors() for r in ("auto", "alone"))
    assert auto.keys() == alone.keys() and all(torch.equal(auto[k], alone[k]) for k in auto)
