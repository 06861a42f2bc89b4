"""Fault injection for runs: foreign split files, failed and killed fits over a run, images of unusual modes
and sizes, bad parameters, file-system faults, umask, sweep labels. Each fault must end as one line naming
the culprit (exit status 2, no traceback) with nothing lost, or as the correct result."""

from __future__ import annotations

import json
import os
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, make_class_folder
from PIL import Image

from taskres.cli import main
from taskres.io import OLD_TAG, _owner, recover_folder
from taskres.transforms import MAX_PIXELS_ENV, load_image

TINY = ["--backbone", TINY_MODEL, "--pretrained", "none"]


def fit_args(dataset, out, *extra, method="zeroshot"):
    trained = ["--set", "epochs=2"] if method == "taskres" else []
    return ["fit", "--dataset", str(dataset), *TINY, "--method", method, "--views", "1", "--out", str(out),
            "--quiet", *trained, *extra]


def one_line_error(args, capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("taskres: error: "), err
    return err


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) with its bytes and mode."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mode) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    # 6 per class: the 50/20/30 split gives 3 train images per class, 1 val, 2 test
    return make_class_folder(tmp_path_factory.mktemp("faults") / "colours", per_class=6)


@pytest.fixture(scope="module")
def reference_run(colours, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(fit_args(colours, out, "--shots", "2")) == 0
    return out


# -- split files --------------------------------------------------------------------------------------------
def _edited_split(reference_run: Path, tmp_path: Path, edit) -> Path:
    data = json.loads((reference_run / "splits.json").read_text())
    edit(data)
    path = tmp_path / "split.json"
    path.write_text(json.dumps(data))
    return path


def test_split_file_of_other_class_names_is_refused(colours, reference_run, tmp_path, capsys):
    # the same images (same generator, same dataset name) under other class names, from a classnames.txt
    renamed = make_class_folder(tmp_path / "renamed" / "colours", per_class=6)
    (renamed / "classnames.txt").write_text("blue_thing sky\ngreen_thing grass\nred_thing fire\nyellow_thing sun\n")
    err = one_line_error(fit_args(renamed, tmp_path / "out", "--split-file", str(reference_run / "splits.json")),
                         capsys)
    assert "class 0 is 'blue thing', but 'sky'" in err and "splits.json" in err
    assert not (tmp_path / "out").exists()
    split = _edited_split(reference_run, tmp_path, lambda d: d.update(dataset="dtd"))
    assert "made for dataset 'dtd', not 'colours'" in one_line_error(
        fit_args(colours, tmp_path / "out", "--split-file", str(split)), capsys)


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["train"][0].__setitem__(1, 99), "has label 99, outside 0..3"),
    (lambda d: d["train"][0].__setitem__(0, "/etc/hostname"), "train image /etc/hostname is outside the dataset's"),
    (lambda d: d["train"][0].__setitem__(0, d["train"][0][0] + "/../../../../../../etc/hostname"), "is outside"),
    (lambda d: d["train"][0].__setitem__(0, d["train"][0][0][:-4] + "-gone.png"), "-gone.png does not exist"),
    (lambda d: d["train"][0].__setitem__(1, (d["train"][0][1] + 1) % 4), "but 0 ('blue thing') in dataset"),
    (lambda d: d["train"][1].__setitem__(0, d["train"][0][0]), "is listed twice"),
    (lambda d: d["val"].append(d["train"][0]), "is not in the val split of dataset 'colours'"),
    (lambda d: d.update(train=d["train"][1:]), "has 1 of the file's 2 shots"),
    (lambda d: d.update(shots=1), "has 2 train images, more than the shots 1"),
    (lambda d: d.update(classnames=d["classnames"][:3]), "lists 3 classes, dataset 'colours' has 4"),
    (lambda d: d.pop("train"), "not a few-shot split file"),
])
def test_a_split_file_that_does_not_fit_the_dataset_is_one_line(colours, reference_run, tmp_path, capsys, edit,
                                                                 expected):
    split = _edited_split(reference_run, tmp_path, edit)
    err = one_line_error(fit_args(colours, tmp_path / "out", "--split-file", str(split)), capsys)
    assert expected in err and str(split) in err
    assert not (tmp_path / "out").exists()


def test_shots_and_seed_next_to_a_split_file_must_agree(colours, reference_run, tmp_path, capsys):
    split = str(reference_run / "splits.json")
    err = one_line_error(fit_args(colours, tmp_path / "a", "--split-file", split, "--shots", "3"), capsys)
    assert "--shots 3 disagrees with --split-file" in err and "--shots 2" in err
    err = one_line_error(fit_args(colours, tmp_path / "a", "--split-file", split, "--seed", "5"), capsys)
    assert "--seed 5 disagrees" in err
    assert main(fit_args(colours, tmp_path / "b", "--split-file", split, "--shots", "2", "--seed", "1")) == 0
    assert main(fit_args(colours, tmp_path / "c", "--split-file", split)) == 0
    for run in ("b", "c"):
        config = json.loads((tmp_path / run / "config.json").read_text())
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert config["shots"] == metrics["shots"] == 2 and config["seed"] == metrics["seed"] == 1
        assert (json.loads((tmp_path / run / "splits.json").read_text())["train"] ==
                json.loads((reference_run / "splits.json").read_text())["train"])


def test_metrics_record_the_shots_actually_used(colours, tmp_path, capsys):
    assert main(fit_args(colours, tmp_path / "run", "--shots", "10", "--allow-fewer-shots")) == 0
    assert "10-shot asked, 3 per class used" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["shots"] == 3 and metrics["shots_asked"] == 10
    assert metrics["shots_per_class"] == {"min": 3, "max": 3}


# -- run folders --------------------------------------------------------------------------------------------
def test_an_existing_run_is_replaced_only_with_overwrite(colours, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(fit_args(colours, out, "--shots", "2")) == 0
    before = snapshot(out)
    err = one_line_error(fit_args(colours, out, "--shots", "1"), capsys)
    assert f"--out {out} already holds a run (pass --overwrite" in err
    assert snapshot(out) == before
    assert main(fit_args(colours, out, "--shots", "1", "--overwrite")) == 0
    assert json.loads((out / "metrics.json").read_text())["shots"] == 1
    assert leftovers(tmp_path, "run") == []


def test_a_failed_fit_leaves_the_old_run_byte_identical(colours, tmp_path, capsys, monkeypatch):
    from taskres.methods.base import TrainingError
    from taskres.methods.taskres import TaskRes

    out = tmp_path / "run"
    assert main(fit_args(colours, out, "--shots", "2", method="taskres")) == 0
    before = snapshot(out)

    def broken_fit(self, ctx):
        raise TrainingError("training diverged (injected)")

    monkeypatch.setattr(TaskRes, "fit", broken_fit)
    err = one_line_error(fit_args(colours, out, "--shots", "1", "--overwrite", method="taskres"), capsys)
    assert "injected" in err
    assert snapshot(out) == before and leftovers(tmp_path, "run") == []
    # a dataset whose red images are unreadable fails half way through encoding: same guarantee
    broken = make_class_folder(tmp_path / "broken" / "colours", per_class=6)
    for image in (broken / "red_thing").iterdir():
        image.write_bytes(b"not a png")
    err = one_line_error(fit_args(broken, out, "--shots", "2", "--overwrite"), capsys)
    assert "red_thing" in err and "unreadable" in err
    assert snapshot(out) == before and leftovers(tmp_path, "run") == []


def test_a_folder_that_is_not_a_run_or_is_a_file_is_never_replaced(colours, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    err = one_line_error(fit_args(colours, mine, "--overwrite"), capsys)
    assert "holds other files, not a run; refusing" in err and str(mine) in err
    assert (mine / "notes.txt").read_text() == "precious" and len(list(mine.iterdir())) == 1
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    err = one_line_error(fit_args(colours, a_file, "--overwrite"), capsys)
    assert f"--out is a file, not a folder: {a_file}" in err and a_file.read_text() == "keep"


def test_kill_9_during_a_fit_leaves_the_old_run_and_no_run_half_written(colours, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(fit_args(colours, out, "--shots", "2")) == 0
    before = snapshot(out)
    # a long fit over it, in a forked child (no second start-up of torch): killed once its temporary folder
    # holds the first files
    args = fit_args(colours, out, "--shots", "1", "--overwrite", method="taskres")
    args[args.index("epochs=2")] = "epochs=100000"
    pid = os.fork()
    if pid == 0:  # the child: fit, and never return into pytest
        try:
            os._exit(main(args))
        finally:
            os._exit(99)
    try:
        deadline = time.time() + 120
        while not any((tmp_path / n / "splits.json").exists() for n in leftovers(tmp_path, "run")):
            assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the fit ended before it was killed"
            assert time.time() < deadline, "the fit never got there"
            time.sleep(0.01)
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert snapshot(out) == before  # the old run, exactly
    assert len(leftovers(tmp_path, "run")) == 1  # the dead fit's temporary folder, hidden, never the run
    capsys.readouterr()
    assert main(["eval", str(out), "--dataset", str(colours), "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["top1"] == json.loads(before["metrics.json"][0])["top1"]["test"]
    # the next fit clears what the dead one left and replaces the run
    assert main(fit_args(colours, out, "--shots", "1", "--overwrite")) == 0
    assert leftovers(tmp_path, "run") == [] and json.loads((out / "metrics.json").read_text())["shots"] == 1


def test_a_swap_interrupted_between_its_renames_is_undone(tmp_path):
    run = tmp_path / "run"
    # a pid above Linux's pid_max on this host: a dead writer
    aside = tmp_path / f".run{OLD_TAG}4194999@{_owner().split('@')[1]}-beef"
    aside.mkdir()
    (aside / "metrics.json").write_text("{}")
    elsewhere = tmp_path / f".run{OLD_TAG}4194999@another-host-beef"  # another host's: not ours to touch
    elsewhere.mkdir()
    recover_folder(run)
    assert (run / "metrics.json").read_text() == "{}" and not aside.exists() and elsewhere.is_dir()


def test_a_failed_bench_cell_keeps_its_previous_run_folder(colours, tmp_path, capsys, monkeypatch):
    from taskres.methods.zeroshot import ZeroShot

    results = tmp_path / "results"
    bench = ["bench", str(results), "--datasets", str(colours), "--methods", "zeroshot", "--shots", "1", *TINY,
             "--views", "1", "--quiet"]
    assert main(bench) == 0
    (cell,) = (results / "runs").iterdir()
    before = snapshot(cell)

    def broken_fit(self, ctx):
        raise RuntimeError("injected cell failure")

    monkeypatch.setattr(ZeroShot, "fit", broken_fit)
    capsys.readouterr()
    assert main(bench + ["--set", "zeroshot.templates=single", "--redo-changed"]) == 1
    record = json.loads((results / "records" / f"{cell.name}.json").read_text())
    assert record["status"] == "error" and "injected" in record["error"]["message"]
    assert snapshot(cell) == before and leftovers(results / "runs", cell.name) == []


# -- images -------------------------------------------------------------------------------------------------
def _save(img: Image.Image, path: Path, **kw) -> str:
    img.save(path, **kw)
    return str(path)


def test_images_of_every_mode_are_scaled_not_clipped(tmp_path):
    grey16 = _save(Image.fromarray(np.full((6, 5), 30000, np.uint16)), tmp_path / "a16.png")
    assert Image.open(grey16).mode == "I;16"
    palette = Image.new("P", (4, 4), 2)
    palette.putpalette([0, 0, 0, 10, 20, 30, 200, 100, 50] + [0] * 759)
    cases = {
        grey16: (117, 117, 117),  # 30000 / 65535 * 255 (PIL's convert gives 255: white)
        _save(Image.fromarray(np.full((4, 4), 30000, np.int32)), tmp_path / "i.tiff"): (117, 117, 117),
        _save(Image.fromarray(np.full((4, 4), 0.25, np.float32)), tmp_path / "f.tiff"): (64, 64, 64),
        _save(Image.new("LA", (4, 4), (100, 7)), tmp_path / "la.png"): (100, 100, 100),
        _save(palette, tmp_path / "p.png", transparency=0): (200, 100, 50),
        _save(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path / "c.tiff"): (255, 0, 0),
        _save(Image.new("1", (4, 4), 1), tmp_path / "one.png"): (255, 255, 255),
        _save(Image.new("RGBA", (4, 4), (1, 2, 3, 0)), tmp_path / "rgba.png"): (1, 2, 3),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's palette-transparency warning, for one, must not appear
        for path, rgb in cases.items():
            img = load_image(path)
            assert img.mode == "RGB" and tuple(np.asarray(img)[0, 0]) == rgb, path


def test_a_huge_image_is_one_line_with_the_limit_and_no_warning(tmp_path, capsys, monkeypatch):
    from taskres.transforms import ImageError

    huge = _save(Image.new("1", (10000, 10000)), tmp_path / "huge.png")  # 10^8 pixels, 12 kB on disk
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError) as exc:
            load_image(huge)
    message = str(exc.value)
    assert "huge.png" in message and "10000 x 10000" in message and "89,478,485" in message
    assert "--max-image-pixels" in message and MAX_PIXELS_ENV in message
    # the option raises (or lowers) the limit; the decoding workers see it through the environment
    root = make_class_folder(tmp_path / "d" / "colours", per_class=4)
    monkeypatch.setenv(MAX_PIXELS_ENV, "")
    err = one_line_error(fit_args(root, tmp_path / "run", "--shots", "1", "--max-image-pixels", "1000"), capsys)
    assert "image too large" in err and "40 x 40 = 1,600 pixels, over the limit of 1,000" in err
    assert main(fit_args(root, tmp_path / "run", "--shots", "1", "--max-image-pixels", "1600")) == 0
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ImageError, match=MAX_PIXELS_ENV):
        load_image(huge)


# -- parameters, file system, umask, names ------------------------------------------------------------------
@pytest.mark.parametrize("extra, expected", [
    (["--set", "epochs=-5"], "--set epochs must be at least 0, not -5"),
    (["--set", "lr=0"], "--set lr must be positive, not 0.0"),
    (["--set", "lr=nan"], "must be a finite number"),
    (["--set", "batch_size=0"], "--set batch_size must be at least 1, not 0"),
    (["--set", "gradient=guess"], "--set gradient must be one of"),
    (["--shots", "0"], "--shots must be a whole number, at least 1"),
    (["--views", "0"], "--views must be a whole number, at least 1"),
    (["--batch-size", "0"], "--batch-size must be a whole number, at least 1"),
    (["--workers", "-1"], "--workers must be a whole number, at least 0"),
    (["--max-image-pixels", "-1"], "--max-image-pixels must be 0"),
])
def test_bad_parameters_are_one_line_before_any_work(colours, tmp_path, capsys, extra, expected):
    assert expected in one_line_error(fit_args(colours, tmp_path / "run", *extra, method="taskres"), capsys)
    assert not (tmp_path / "run").exists() and leftovers(tmp_path, "run") == []


def test_bench_refuses_bad_parameters_before_any_cell(colours, tmp_path, capsys):
    err = one_line_error(["bench", str(tmp_path / "r"), "--datasets", str(colours), "--methods", "taskres",
                          "--shots", "1", *TINY, "--set", "taskres.epochs=-5"], capsys)
    assert "--set epochs must be at least 0, not -5" in err and not (tmp_path / "r").exists()


def test_file_system_errors_are_one_line_naming_the_path(colours, tmp_path, capsys, monkeypatch):
    import taskres.io

    def denied(*args, dir=None, **kw):
        raise PermissionError(13, "Permission denied", dir)

    with monkeypatch.context() as m:  # what a read-only or foreign parent folder gives, even when run as root
        m.setattr(taskres.io.tempfile, "mkdtemp", denied)
        err = one_line_error(fit_args(colours, tmp_path / "ro" / "run"), capsys)
    assert err == f"taskres: error: Permission denied: {tmp_path / 'ro'}"
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    err = one_line_error(fit_args(colours, tmp_path / "run", "--shots", "1", "--cache-dir", str(a_file)), capsys)
    assert "Not a directory" in err and str(a_file) in err and a_file.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_folder_is_one_line(colours, tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        err = one_line_error(fit_args(colours, parent / "run"), capsys)
        assert "Permission denied" in err and str(parent) in err
    finally:
        parent.chmod(0o755)


@pytest.mark.parametrize("mask", [0o022, 0o007])
def test_outputs_follow_the_umask(colours, tmp_path, mask):
    old = os.umask(mask)
    try:
        assert main(fit_args(colours, tmp_path / "run", "--shots", "1", "--cache-dir", str(tmp_path / "cache"))) == 0
    finally:
        os.umask(old)
    files = [p for p in [*(tmp_path / "run").rglob("*"), *(tmp_path / "cache").rglob("*")] if p.is_file()]
    assert len(files) > 5
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o777 & ~mask


def test_a_sweep_label_cannot_leave_the_results_folder(colours, tmp_path, capsys):
    box = tmp_path / "box"
    results = box / "a" / "results"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"backbones:\n  - name: {TINY_MODEL}\n    pretrained: none\n    label: ../../../x\n")
    assert main(["bench", str(results), "--config", str(sweep), "--datasets", str(colours), "--methods",
                 "zeroshot", "--shots", "1", "--views", "1", "--quiet"]) == 0
    outside = [p for p in box.rglob("*") if results not in p.parents and p != results and p not in results.parents]
    assert outside == []
    (record,) = (results / "records").iterdir()
    assert record.name.startswith("x__colours__zeroshot")
    assert main(["report", str(results)]) == 0
    assert [p for p in box.rglob("*") if results not in p.parents and p != results and p not in results.parents] == []


@pytest.mark.parametrize("exchange", [True, False])
def test_the_swap_with_and_without_an_atomic_exchange(tmp_path, monkeypatch, exchange):
    import taskres.io
    from taskres.io import RunExistsError, atomic_folder

    if not exchange:  # file systems without renameat2: aside, in, remove
        monkeypatch.setattr(taskres.io, "_exchange", lambda a, b: False)
    run = tmp_path / "run"
    with atomic_folder(run) as stage:
        (stage / "metrics.json").write_text("old")
    with pytest.raises(RunExistsError):
        with atomic_folder(run):
            pass
    with pytest.raises(KeyError):
        with atomic_folder(run, overwrite=True) as stage:
            (stage / "metrics.json").write_text("half")
            raise KeyError("killed half way")
    assert (run / "metrics.json").read_text() == "old"
    with atomic_folder(run, overwrite=True) as stage:
        (stage / "metrics.json").write_text("new")
    assert (run / "metrics.json").read_text() == "new" and leftovers(tmp_path, "run") == []
