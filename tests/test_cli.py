"""`taskres fit / eval / predict` end to end on generated images, and the errors a user can meet."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY_MODEL, make_class_folder

from taskres.cli import main
from taskres.classifier import load_classifier

TINY = ["--backbone", TINY_MODEL, "--pretrained", "none"]


def fit_args(dataset, out, *extra):
    trained = "zeroshot" not in extra
    return ["fit", "--dataset", str(dataset), *TINY, "--shots", "2", "--views", "2", "--out", str(out), "--quiet",
            *(["--set", "epochs=3"] if trained else []), *extra]


def test_fit_writes_every_output(class_folder, tmp_path, capsys):
    assert main(fit_args(class_folder, tmp_path / "run")) == 0
    out = capsys.readouterr().out
    assert "test top-1 =" in out
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "taskres" and metrics["dataset"] == "colours"
    assert metrics["shots"] == 2 and metrics["seed"] == 1 and 0 <= metrics["top1"]["test"] <= 100
    assert metrics["backbone"]["model"] == "test-tiny" and metrics["hparams"]["alpha"] == 0.5
    config = json.loads((run / "config.json").read_text())
    assert config["method_params"] == {"epochs": "3"} and config["backbone"]["pretrained"] == "none"
    assert {"torch", "open_clip", "taskres"} <= set(config["versions"])
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["train"]) == 8 and len(splits["eval_test"]) == metrics["num_images"]["test"]
    clf = load_classifier(run / "classifier.safetensors")
    assert clf.classnames == ["blue thing", "green thing", "red thing", "yellow thing"]
    assert clf.meta.backbone["fingerprint"] == metrics["backbone"]["fingerprint"]
    assert clf.residual.abs().sum() > 0  # trained


def test_coop_layout_fit_and_split_file_reproduces_run(coop_root, tmp_path):
    args = fit_args("caltech101", tmp_path / "a", "--data-root", str(coop_root), "--seed", "2")
    assert main(args) == 0
    again = fit_args("caltech101", tmp_path / "b", "--data-root", str(coop_root), "--seed", "2",
                     "--split-file", str(tmp_path / "a" / "splits.json"))
    assert main(again) == 0
    a = json.loads((tmp_path / "a" / "splits.json").read_text())
    b = json.loads((tmp_path / "b" / "splits.json").read_text())
    assert a["train"] == b["train"]
    ca, cb = load_classifier(tmp_path / "a"), load_classifier(tmp_path / "b")
    assert torch.equal(ca.residual, cb.residual)


def test_eval_and_predict(class_folder, tmp_path, capsys):
    assert main(fit_args(class_folder, tmp_path / "run", "--method", "zeroshot")) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--dataset", str(class_folder), "--json", "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    res = json.loads(lines[-1])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert res["top1"] == pytest.approx(metrics["top1"]["test"])
    image = sorted((class_folder / "red_thing").iterdir())[0]
    assert main(["predict", str(tmp_path / "run"), str(image), "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(image) and len(out) == 4
    probs = [float(line.split("%")[0]) for line in out[1:]]
    assert probs == sorted(probs, reverse=True)


def test_a_gpu_run_is_evaluated_on_the_cpu_with_device_cpu(class_folder, tmp_path, capsys):
    assert main(fit_args(class_folder, tmp_path / "run", "--method", "zeroshot")) == 0
    config_file = tmp_path / "run" / "config.json"
    config = json.loads(config_file.read_text())
    config["backbone"]["device"] = "cuda:7"  # as written by `fit --device cuda:7` on a GPU machine
    config_file.write_text(json.dumps(config))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--dataset", str(class_folder), "--device", "cpu", "--json",
                 "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["top1"] == pytest.approx(metrics["top1"]["test"])
    image = sorted((class_folder / "red_thing").iterdir())[0]
    assert main(["predict", str(tmp_path / "run"), str(image), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(image)
    if not torch.cuda.is_available():  # the run's own device is still what is used when none is given
        assert main(["predict", str(tmp_path / "run"), str(image)]) != 0
        assert "--device cuda:7 was asked for" in capsys.readouterr().err


def test_saved_classifier_reloads_to_identical_logits(class_folder, tmp_path):
    assert main(fit_args(class_folder, tmp_path / "run")) == 0
    clf = load_classifier(tmp_path / "run")
    from taskres.classifier import save_classifier

    save_classifier(clf, tmp_path / "copy.safetensors")
    f = torch.randn(5, clf.base.shape[1])
    assert torch.equal(clf(f), load_classifier(tmp_path / "copy.safetensors")(f))


def errors_of(args, capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


def test_corrupt_image_error_and_skip(tmp_path, capsys, caplog):
    root = make_class_folder(tmp_path / "d", per_class=8)
    shutil.copy(__file__, root / "red_thing" / "zzz_broken.png")  # not an image
    err = errors_of(fit_args(root, tmp_path / "run") + ["--set", "epochs=1"], capsys)
    assert "zzz_broken.png" in err and "--skip-bad-images" in err
    assert main(fit_args(root, tmp_path / "run", "--skip-bad-images", "--allow-fewer-shots")) == 0
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().err + caplog.text


def test_user_errors_are_one_line(class_folder, coop_root, tmp_path, capsys):
    assert "folder not found" in errors_of(fit_args("dtd", tmp_path / "r", "--data-root", str(tmp_path)), capsys)
    assert "fewer than --shots 50" in errors_of(fit_args(class_folder, tmp_path / "r", "--shots", "50"), capsys)
    err = errors_of(["fit", "--dataset", str(class_folder), "--shots", "2", "--backbone", "RN50", "--pretrained",
                     str(tmp_path / "missing.pt")], capsys)
    assert "checkpoint file not found" in err and "missing.pt" in err
    assert "unknown backbone" in errors_of(["fit", "--dataset", str(class_folder), "--shots", "2", "--backbone",
                                            "NoSuchNet"], capsys)
    assert "not a parameter" in errors_of(fit_args(class_folder, tmp_path / "r", "--set", "nope=1"), capsys)
    assert "classifier file not found" in errors_of(["eval", str(tmp_path / "none"), "--dataset",
                                                     str(class_folder)], capsys)


def test_classifier_from_another_backbone_or_class_list_is_refused(class_folder, tmp_path, capsys):
    assert main(fit_args(class_folder, tmp_path / "run", "--method", "zeroshot")) == 0
    other_cfg = tmp_path / "other-tiny.json"
    cfg = json.loads(open(TINY_MODEL).read())
    cfg["vision_cfg"]["layers"] = 1
    other_cfg.write_text(json.dumps(cfg))
    err = errors_of(["eval", str(tmp_path / "run"), "--dataset", str(class_folder), "--backbone", str(other_cfg),
                     "--pretrained", "none", "--quiet"], capsys)
    assert "was trained on backbone test-tiny" in err and "other-tiny" in err
    other = make_class_folder(tmp_path / "animals", per_class=4, classes={"cat": (1, 2, 3), "dog": (3, 2, 1)})
    err = errors_of(["eval", str(tmp_path / "run"), "--dataset", str(other), "--quiet"], capsys)
    assert "does not know 2 of the dataset's 2 classes" in err


def test_classifier_file_that_is_not_safetensors(tmp_path, capsys):
    bad = tmp_path / "classifier.safetensors"
    bad.write_bytes(b"\x80\x04pickle-ish bytes")
    assert "not a safetensors classifier file" in errors_of(["predict", str(bad), __file__], capsys)


def test_online_regime_runs(class_folder, tmp_path):
    assert main(fit_args(class_folder, tmp_path / "run", "--regime", "online")) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["regime"] == "online" and metrics["views"] == 0


@pytest.mark.parametrize("method", ["taskres", "clip_adapter"])
def test_memory_mapped_views_train_the_same_classifier(class_folder, tmp_path, method):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(fit_args(class_folder, tmp_path / "ram", "--method", method, *cache)) == 0
    assert main(fit_args(class_folder, tmp_path / "mapped", "--method", method, "--memory-map", *cache)) == 0
    ram, mapped = load_classifier(tmp_path / "ram"), load_classifier(tmp_path / "mapped")
    dim = next(iter(ram.tensors().values())).shape[-1]  # every head's first tensor is [*, D]
    f = torch.randn(6, dim)
    torch.testing.assert_close(mapped(f), ram(f), rtol=1e-5, atol=1e-5)
    a = json.loads((tmp_path / "ram" / "metrics.json").read_text())
    b = json.loads((tmp_path / "mapped" / "metrics.json").read_text())
    assert a["top1"] == b["top1"] and a["num_train"] == b["num_train"]
    if method == "taskres":
        assert ram.residual.abs().sum() > 0


def test_memory_map_needs_the_cache(class_folder, tmp_path, capsys):
    assert main(fit_args(class_folder, tmp_path / "run", "--memory-map", "--cache-dir", "")) != 0
    err = capsys.readouterr().err.strip()
    assert "need a cache folder" in err and "\n" not in err


def test_only_the_cli_package_speaks_argparse_and_production_code_has_no_test_hooks():
    """The library speaks Python (issue 20): flags live in taskres/cli/ alone (the mini model's pretraining
    script keeps its own runner), and no production module reads a test's kill switch."""
    from pathlib import Path

    import taskres

    root = Path(taskres.__file__).parent
    sources = {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in root.rglob("*.py")}
    speaks = {name for name, text in sources.items() if "argparse" in text}
    assert speaks and all(name.startswith("cli/") or name == "mini/pretrain.py" for name in speaks), speaks
    assert not [name for name, text in sources.items() if "TASKRES_TEST" in text or "os._exit" in text]


@pytest.mark.parametrize("field, value, flag", [("shots", 0, "--shots"), ("num_workers", -1, "--workers"),
                                                ("views", 0, "--views")])
def test_the_library_names_the_field_and_the_cli_its_flag(tmp_path, capsys, field, value, flag):
    """fit(FitConfig(shots=0)) speaks Python (FitConfig.shots); `taskres fit --shots 0` speaks flags."""
    from taskres.api import FitConfig, fit
    from taskres.errors import OptionError

    with pytest.raises(OptionError) as err:
        fit(FitConfig(dataset=str(tmp_path / "none"), progress=False, **{field: value}))
    assert str(err.value).startswith(f"FitConfig.{field} ") and flag not in str(err.value)
    assert (err.value.owner, err.value.field) == ("FitConfig", field)
    args = ["fit", "--dataset", str(tmp_path / "none"), flag, str(value)]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"taskres: error: {flag} {err.value.problem}")
