"""What taskres promises about run folders: a run is replaced only with --overwrite, never a folder holding
anything a run does not write; a failed or killed fit (kill -9 at any moment) leaves the old run byte for
byte; a failed bench cell keeps its previous run folder."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import make_class_folder
from kit import TINY, colours, fit_args, leftovers, one_line_error, snapshot  # noqa: F401 (fixtures)

from taskres.cli import main
from taskres.atomic import OLD_TAG, _owner, recover_folder


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
    assert "holds files that no run writes (notes.txt); refusing" in err and str(mine) in err
    assert (mine / "notes.txt").read_text() == "precious" and len(list(mine.iterdir())) == 1
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    err = one_line_error(fit_args(colours, a_file, "--overwrite"), capsys)
    assert f"--out is a file, not a folder: {a_file}" in err and a_file.read_text() == "keep"


def test_overwrite_never_deletes_what_a_run_did_not_write(colours, tmp_path, capsys):
    # a user's folder that happens to hold a file of a run's name, beside their own files
    mine = tmp_path / "mine"
    (mine / "src").mkdir(parents=True)
    (mine / "src" / "train.py").write_text("code")
    (mine / "notes.txt").write_text("precious")
    (mine / "config.json").write_text("{}")
    before = snapshot(mine)
    err = one_line_error(fit_args(colours, mine, "--overwrite"), capsys)
    assert f"--out {mine} holds files that no run writes (notes.txt, src); refusing" in err
    assert snapshot(mine) == before and leftovers(tmp_path, "mine") == []
    # a real run, with what export and an atomic writer leave beside it, is still replaced
    run = tmp_path / "run"
    assert main(fit_args(colours, run, "--shots", "1")) == 0
    for extra in ("model.onnx", "model.onnx.json", "model.torchscript.pt", ".metrics.json.x1y2.tmp"):
        (run / extra).write_text("")
    assert main(fit_args(colours, run, "--shots", "2", "--overwrite")) == 0
    assert json.loads((run / "metrics.json").read_text())["shots"] == 2
    (run / "notes.txt").write_text("mine now")
    assert "(notes.txt)" in one_line_error(fit_args(colours, run, "--shots", "1", "--overwrite"), capsys)
    assert (run / "notes.txt").read_text() == "mine now"


def test_kill_9_during_a_fit_leaves_the_old_run_and_no_run_half_written(colours, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(fit_args(colours, out, "--shots", "2")) == 0
    before = snapshot(out)
    # a long fit over it, in a child process killed once its temporary folder holds the first files. The child
    # comes from a fresh forkserver: forked from this pytest process, after earlier tests left threads behind,
    # it could hang before its first file (seen when the run-folder tests ran alone, in this order)
    import multiprocessing

    args = fit_args(colours, out, "--shots", "1", "--overwrite", method="taskres")
    args[args.index("epochs=2")] = "epochs=100000"
    child = multiprocessing.get_context("forkserver").Process(target=main, args=(args,))
    child.start()
    try:
        deadline = time.time() + 120
        while not any((tmp_path / n / "splits.json").exists() for n in leftovers(tmp_path, "run")):
            assert child.is_alive(), "the fit ended before it was killed"
            assert time.time() < deadline, "the fit never got there"
            time.sleep(0.01)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert child.exitcode == -signal.SIGKILL
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


@pytest.mark.parametrize("exchange", [True, False])
def test_the_swap_with_and_without_an_atomic_exchange(tmp_path, monkeypatch, exchange):
    import taskres.atomic
    from taskres.atomic import RunExistsError, atomic_folder

    if not exchange:  # file systems without renameat2: aside, in, remove
        monkeypatch.setattr(taskres.atomic, "_exchange", lambda a, b: False)
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
