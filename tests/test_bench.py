"""taskres bench: sweeps that resume, failing cells that do not stop the others, the three protocols."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import COLOURS, TINY_MODEL, make_coop_dataset

from taskres import api, bench, cli
from taskres.cli.bench import sweep_from_args
from taskres.protocols import (Cell, base_new_labels, expand, harmonic_mean, preset, resolve_sweep, subset_classes)

TINY = ["--backbone", TINY_MODEL, "--pretrained", "none"]
# Few epochs but a large step, so that the residual moves and seeds give different accuracies.
FAST = ["--views", "2", "--set", "taskres.epochs=4", "--set", "taskres.lr=0.05"]


def make_mixed_folder(root: Path, per_class: int = 24, seed: int = 0, classes=COLOURS) -> Path:
    """Class folders whose images blend their colour with a random other class's: not trivially separable,
    so accuracy depends on which shots a seed draws."""
    rng = np.random.default_rng(seed)
    cols = np.array(list(classes.values()), dtype=np.float64)
    for i, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            w = rng.uniform(0.4, 1.0)
            colour = w * cols[i] + (1 - w) * cols[rng.integers(len(cols))]
            img = np.clip(colour[None, None] + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{k:03d}.png")
    return root


@pytest.fixture(scope="module")
def sweep_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweepdata")
    return {"coop": make_coop_dataset(root / "coop", per_class=(8, 3, 10), seed=5),
            "mixed": make_mixed_folder(root / "mixed")}


def sweep_args(results: Path, data: dict, *extra: str, datasets=("caltech101", "mixed")) -> list[str]:
    names = [str(data[d]) if d in data else d for d in datasets]
    return ["bench", str(results), "--datasets", *names, "--data-root",
            str(data["coop"]), "--shots", "1", "2", "--seeds", "1", "2", "--methods", "zeroshot", "taskres",
            "--quiet", *TINY, *FAST, *extra]


def records(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / "records").glob("*.json"))}


def parse_sweep(argv):
    args = cli.build_parser().parse_args(argv)
    return sweep_from_args(args)[0]


def test_interrupted_sweep_resumes_without_redoing_finished_cells(tmp_path, sweep_data, monkeypatch, capsys):
    results = tmp_path / "res"
    sweep = parse_sweep(sweep_args(results, sweep_data))
    assert len(expand(sweep)) == 16

    def interrupt_after_five(cell, record):
        if len(records(results)) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bench.run_sweep(sweep, results, progress=False, on_cell_done=interrupt_after_five)
    first = records(results)
    assert len(first) == 5 and all(r["status"] == "ok" for r in first.values())
    mtimes = {n: (results / "records" / f"{n}.json").stat().st_mtime_ns for n in first}

    calls = []
    real_fit = api.fit
    monkeypatch.setattr(api, "fit", lambda *a, **k: calls.append(a[0].method) or real_fit(*a, **k))
    assert cli.main(sweep_args(results, sweep_data)) == 0
    out = capsys.readouterr().out
    assert "5 already finished, 11 run now, 0 failed" in out
    assert len(calls) == 11  # only the missing cells were fitted
    final = records(results)
    assert len(final) == 16 and all(r["status"] == "ok" for r in final.values())
    assert {n: (results / "records" / f"{n}.json").stat().st_mtime_ns for n in first} == mtimes

    # A third run has nothing left to do.
    calls.clear()
    assert cli.main(sweep_args(results, sweep_data)) == 0
    assert calls == [] and "16 already finished, 0 run now" in capsys.readouterr().out


def test_killed_process_leaves_only_whole_records_and_resumes(tmp_path, sweep_data, capsys):
    results = tmp_path / "res"
    argv = [sys.executable, "-m", "taskres", *sweep_args(results, sweep_data, datasets=["mixed"])]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (results / "records").is_dir() and len(list((results / "records").glob("*.json"))) >= 2:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    before = records(results)  # every file parses: no half-written record
    assert 2 <= len(before) < 8, "the kill came after the sweep ended; nothing was tested"
    assert all(r["status"] == "ok" for r in before.values())
    mtimes = {n: (results / "records" / f"{n}.json").stat().st_mtime_ns for n in before}
    assert cli.main(sweep_args(results, sweep_data, datasets=["mixed"])) == 0
    assert f"{len(before)} already finished, {8 - len(before)} run now, 0 failed" in capsys.readouterr().out
    assert len(records(results)) == 8
    assert {n: (results / "records" / f"{n}.json").stat().st_mtime_ns for n in before} == mtimes


def test_failing_cell_is_recorded_and_others_complete(tmp_path, capsys):
    # One class has 3 images: a 50/20/30 folder split gives it 2 training images, so 4 shots cannot be drawn.
    data = make_mixed_folder(tmp_path / "small", per_class=10)
    for p in sorted((data / "red").glob("*.png"))[3:]:
        p.unlink()
    results = tmp_path / "res"
    argv = ["bench", str(results), "--datasets", str(data), "--shots", "1", "4", "2", "--seeds", "1",
            "--methods", "zeroshot", "--quiet", *TINY, "--views", "1"]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    recs = records(results)
    assert len(recs) == 3
    failed = recs["test-tiny__small__zeroshot__4shot__seed1"]
    assert failed["status"] == "error" and failed["error"]["type"] == "DatasetError"
    # a cell's record keeps the library's words (the bench runs cells through the Python API)
    assert "fewer than FitConfig.shots=4" in failed["error"]["message"]
    assert "1 failed" in out and "fewer than FitConfig.shots=4" in out
    assert [recs[f"test-tiny__small__zeroshot__{k}shot__seed1"]["status"] for k in (1, 2)] == ["ok", "ok"]

    # A rerun retries only the failed cell (still failing); --keep-failed leaves it alone.
    ok_mtime = (results / "records" / "test-tiny__small__zeroshot__1shot__seed1.json").stat().st_mtime_ns
    assert cli.main(argv) == 1
    assert "2 already finished, 0 run now, 1 failed" in capsys.readouterr().out
    assert (results / "records" / "test-tiny__small__zeroshot__1shot__seed1.json").stat().st_mtime_ns == ok_mtime
    assert cli.main([*argv, "--keep-failed"]) == 0
    assert "0 run now, 0 failed" in capsys.readouterr().out


def test_changed_settings_are_not_silently_reused(tmp_path, sweep_data, capsys):
    results = tmp_path / "res"
    base = ["bench", str(results), "--datasets", str(sweep_data["mixed"]), "--shots", "1", "--seeds", "1",
            "--methods", "taskres", "--quiet", *TINY, "--views", "1"]
    assert cli.main([*base, "--set", "epochs=2"]) == 0
    assert cli.main([*base, "--set", "epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "taskres: error:" in err and "other settings" in err and "--redo-changed" in err
    assert cli.main([*base, "--set", "epochs=3", "--redo-changed"]) == 0
    (rec,) = records(results).values()
    assert rec["hparams"]["epochs"] == 3


def test_record_holds_what_reruns_the_cell(tmp_path, sweep_data, capsys):
    results = tmp_path / "res"
    argv = ["bench", str(results), "--datasets", "caltech101", "--data-root", str(sweep_data["coop"]),
            "--shots", "2", "--seeds", "3", "--methods", "taskres", "--quiet", *TINY, *FAST]
    assert cli.main(argv) == 0
    capsys.readouterr()
    (rec,) = records(results).values()
    assert rec["name"] == "test-tiny__caltech101__taskres__2shot__seed3"
    assert rec["versions"] == api.versions()
    assert rec["backbone_identity"]["fingerprint"] and rec["backbone_config"]["pretrained"] == "none"
    assert rec["hparams"]["epochs"] == 4 and rec["hparams"]["lr"] == 0.05 and rec["hparams"]["alpha"] == 0.5
    splits = json.loads((results / rec["splits"]).read_text())
    assert len(splits["train"]) == 2 * len(COLOURS) and splits["seed"] == 3
    assert rec["config"]["method_params"] == {"epochs": "4", "lr": "0.05"}

    # The recorded `taskres fit` command, run alone, gives the same accuracy on the same split.
    cmd = shlex.split(rec["rerun"][0])
    assert cmd[:2] == ["taskres", "fit"]
    assert cli.main(cmd[1:] + ["--quiet"]) == 0
    rerun = json.loads((Path(cmd[cmd.index("--out") + 1]) / "metrics.json").read_text())
    assert rerun["top1"]["test"] == rec["scores"]["top1"]
    assert json.loads((Path(cmd[cmd.index("--out") + 1]) / "splits.json").read_text())["train"] == splits["train"]


def test_sweep_layers_preset_file_and_flags(tmp_path, capsys):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("datasets: [dtd, eurosat]\nshots: [1, 16]\nseeds: [1]\npretrained: none\n"
                   "backbones: [RN50, {name: ViT-B-16, label: vitb16}]\nmethod_params: {taskres: {epochs: 5}}\n")
    args = cli.build_parser().parse_args(["bench", str(tmp_path / "r"), "--preset", "paper", "--config", str(cfg),
                                          "--seeds", "2", "3", "--set", "taskres.lr=1e-3"])
    sweep, missing = sweep_from_args(args)
    assert sweep.datasets == ["dtd", "eurosat"] and sweep.shots == [1, 16] and sweep.seeds == [2, 3]
    assert [(b.display, b.pretrained) for b in sweep.backbones] == [("RN50", "none"), ("vitb16", "none")]
    assert sweep.method_params["taskres"] == {"epochs": 5, "lr": "1e-3"}
    assert "zeroshot" in sweep.methods and set(missing).isdisjoint(sweep.methods)

    # The paper preset alone: 11 datasets x 5 shots x 3 seeds x its methods, listed without running anything.
    assert cli.main(["bench", str(tmp_path / "p"), "--preset", "paper", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cells = [line for line in lines if line.startswith("todo")]
    n_methods = len(resolve_sweep(preset("paper")[0]).methods)
    assert len(cells) == 11 * 5 * 3 * n_methods
    assert any("RN50__imagenet__taskres__16shot__seed3" in line for line in cells)


@pytest.mark.parametrize("argv, message", [
    (["--methods", "taskres", "nope"], "unknown method(s) nope"),
    (["--methods", "taskres", "--set", "zzz=1"], "no method of the sweep has a parameter 'zzz'"),
    (["--methods", "taskres", "--set", "taskres.epochs=many"], "epochs"),
    (["--methods", "taskres", "--shots", "0"], "--shots must all be at least 1"),
    (["--methods", "taskres", "--config", "missing.yaml"], "--config missing.yaml: no such file"),
])
def test_bad_sweep_options_fail_in_one_line(tmp_path, capsys, argv, message):
    code = cli.main(["bench", str(tmp_path / "r"), "--datasets", "x", "--shots", "1", "--seeds", "1", *TINY, *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("taskres: error:") and message in err and "\n" not in err
    assert not (tmp_path / "r" / "records").exists()


def test_sweep_file_with_unknown_key_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("datasets: [dtd]\nshotz: [1]\n")
    assert cli.main(["bench", str(tmp_path / "r"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "shotz" in err


# -- domain generalisation ----------------------------------------------------------------------------------
WNIDS = {f"n0{i:07d}": name for i, name in enumerate(COLOURS)}


def _save_images(folder: Path, colour, n: int, rng) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        img = np.clip(np.array(colour)[None, None] + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{k:03d}.png")


def make_fake_imagenet(root: Path) -> Path:
    """ImageNet and its four shift sets in the CoOp layout, with 4 colour classes (-A: 2 of them, -R: 3)."""
    rng = np.random.default_rng(7)
    (root / "imagenet").mkdir(parents=True)
    (root / "imagenet" / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in WNIDS.items()))
    for i, (wnid, name) in enumerate(WNIDS.items()):
        colour = COLOURS[name]
        _save_images(root / "imagenet" / "images" / "train" / wnid, colour, 6, rng)
        _save_images(root / "imagenet" / "images" / "val" / wnid, colour, 3, rng)
        _save_images(root / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / str(i), colour, 2, rng)
        _save_images(root / "imagenet-sketch" / "images" / wnid, tuple(c // 2 for c in colour), 2, rng)
        if i in (1, 3):
            _save_images(root / "imagenet-adversarial" / "imagenet-a" / wnid, colour, 2, rng)
        if i != 0:
            _save_images(root / "imagenet-rendition" / "imagenet-r" / wnid, colour, 2, rng)
    return root


def test_domain_protocol_trains_on_imagenet_and_tests_on_its_shifts(tmp_path, capsys):
    data = make_fake_imagenet(tmp_path / "data")
    results = tmp_path / "res"
    argv = ["bench", str(results), "--protocol", "domain", "--datasets", "imagenet", "--data-root", str(data),
            "--shots", "2", "--seeds", "1", "2", "--methods", "zeroshot", "taskres", "--quiet", *TINY, *FAST]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    recs = records(results)
    assert len(recs) == 4
    rec = recs["test-tiny__imagenet__taskres__2shot__seed1__domain"]
    targets = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    assert list(rec["scores"]) == ["imagenet", *targets, "target_average"]
    assert rec["scores"]["target_average"] == pytest.approx(np.mean([rec["scores"][t] for t in targets]))
    assert rec["details"]["num_images"] == {"imagenet": 12, "imagenetv2": 8, "imagenet_sketch": 8,
                                            "imagenet_a": 4, "imagenet_r": 6}
    assert rec["details"]["class_subset"] == {"imagenetv2": False, "imagenet_sketch": False, "imagenet_a": True,
                                              "imagenet_r": True}
    assert rec["rerun"][0].startswith("taskres fit") and "taskres eval" in rec["rerun"][1]

    # -A is scored with the ImageNet classifier's rows of its 2 classes, recomputed here by hand.
    from taskres.backbone import BackboneConfig, load_backbone
    from taskres.classifier import load_classifier
    from taskres.datasets import load_dataset

    clf = load_classifier(results / rec["run_dir"])
    task_a = load_dataset("imagenet_a", data)
    bb = load_backbone(BackboneConfig(TINY_MODEL, "none"))
    import torch

    feats = torch.cat([bb.encode_images(bb.preprocess(Image.open(s.path).convert("RGB"))[None])
                       for s in task_a.test])
    rows = [list(WNIDS).index(w) for w in task_a.class_ids]
    pred = clf(feats)[:, rows].argmax(1)
    expected = 100.0 * float((pred == torch.tensor([s.label for s in task_a.test])).float().mean())
    assert rec["scores"]["imagenet_a"] == pytest.approx(expected)
    assert "Domain generalisation" in out and "target average" in out


# -- base-to-new --------------------------------------------------------------------------------------------
def test_subset_classes_relabels_and_keeps_ids(tmp_path):
    from taskres.datasets import load_dataset

    task = load_dataset(str(make_mixed_folder(tmp_path / "m", per_class=10)))
    sub = subset_classes(task, [3, 1])
    assert sub.classnames == [task.classnames[3], task.classnames[1]]
    assert sub.class_ids == [task.class_ids[3], task.class_ids[1]]
    for split in ("train", "val", "test"):
        full = {s.path: s.label for s in task.split(split)}
        kept = sub.split(split)
        assert {s.path for s in kept} == {p for p, y in full.items() if y in (1, 3)}
        assert all({0: 3, 1: 1}[s.label] == full[s.path] for s in kept)
    assert base_new_labels(5) == ([0, 1, 2], [3, 4]) and base_new_labels(4) == ([0, 1], [2, 3])
    with pytest.raises(ValueError, match="distinct"):
        subset_classes(task, [1, 1])
    assert harmonic_mean(80.0, 40.0) == pytest.approx(2 * 80 * 40 / 120)


def test_base2new_protocol(tmp_path, sweep_data, capsys):
    results = tmp_path / "res"
    argv = ["bench", str(results), "--protocol", "base2new", "--datasets", "caltech101", "--data-root",
            str(sweep_data["coop"]), "--shots", "2", "--seeds", "1", "--methods", "zeroshot", "taskres", "coop",
            "clip_adapter", "linear_probe", "--quiet", *TINY, *FAST, "--set", "coop.n_ctx=4", "--set", "coop.epochs=2",
            "--set", "clip_adapter.epochs=2"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    recs = records(results)
    zs = recs["test-tiny__caltech101__zeroshot__2shot__seed1__base2new"]
    tr = recs["test-tiny__caltech101__taskres__2shot__seed1__base2new"]
    names = list(COLOURS)
    assert tr["details"]["base_classes"] == names[:2] and tr["details"]["new_classes"] == names[2:]
    assert tr["details"]["num_images"] == {"base": 20, "new": 20}  # 10 test images per class
    splits = json.loads((results / tr["splits"]).read_text())
    assert {y for _, y in splits["train"]} == {0, 1} and len(splits["train"]) == 4  # base classes' shots only
    for rec in (zs, tr):
        s = rec["scores"]
        assert s["hm"] == pytest.approx(harmonic_mean(s["base"], s["new"]))
    # TaskRes has no residual for unseen classes: on them it is the frozen base, i.e. zero-shot CLIP.
    assert tr["scores"]["new"] == zs["scores"]["new"]
    assert (results / tr["run_dir"] / "classifier_new.safetensors").is_file()
    # CoOp and CLIP-Adapter carry what they learned to the new classes; a linear probe has nothing to carry
    for name in ("coop", "clip_adapter"):
        rec = recs[f"test-tiny__caltech101__{name}__2shot__seed1__base2new"]
        assert rec["scores"]["new"] is not None and 0 <= rec["scores"]["new"] <= 100
        assert (results / rec["run_dir"] / "classifier_new.safetensors").is_file()
    assert recs["test-tiny__caltech101__linear_probe__2shot__seed1__base2new"]["scores"]["new"] is None
    assert "Base-to-new" in out


def test_cells_are_named_by_what_they_run():
    sweep = resolve_sweep({"datasets": ["dtd"], "shots": [4], "seeds": [2], "methods": ["taskres"],
                           "backbones": ["ViT-B-16"]})
    (cell,) = expand(sweep)
    assert cell.name == "ViT-B-16__dtd__taskres__4shot__seed2"
    assert Cell("domain", cell.backbone, "imagenet", "taskres", 16, 1).name.endswith("__seed1__domain")


def test_bench_takes_fits_cache_options_and_they_reach_every_cell(tmp_path, sweep_data, capsys):
    """--memory-map and --verify-cache are fit's options that apply to a cell: bench has them too (issue 20),
    and the numbers are those of the in-memory run (memory mapping and verifying change no result)."""
    common = ["--datasets", "caltech101", "--data-root", str(sweep_data["coop"]), "--shots", "2", "--seeds", "3",
              "--methods", "taskres", "--quiet", *TINY, *FAST]
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    shown = capsys.readouterr().out
    assert "--memory-map" in shown and "--verify-cache" in shown
    assert cli.main(["bench", str(tmp_path / "plain"), *common]) == 0
    assert cli.main(["bench", str(tmp_path / "mapped"), *common, "--memory-map", "--verify-cache", "none"]) == 0
    (plain,), (mapped,) = records(tmp_path / "plain").values(), records(tmp_path / "mapped").values()
    assert mapped["config"]["memory_map"] is True and mapped["config"]["verify_cache"] == "none"
    assert plain["config"]["memory_map"] is False and plain["config"]["verify_cache"] is None
    assert mapped["scores"] == plain["scores"] and mapped["key"] == plain["key"]
    with pytest.raises(SystemExit):  # argparse's own refusal, as for fit
        cli.main(["bench", str(tmp_path / "x"), *common, "--verify-cache", "some"])
    assert "--verify-cache: invalid choice" in capsys.readouterr().err
