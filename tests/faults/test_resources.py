"""What taskres promises when the machine says no: permissions, a file where a folder belongs, a read-only
or full disk each end as one line naming the path, with the old run intact; outputs follow the umask."""

from __future__ import annotations

import os

import pytest
from kit import colours, fit_args, one_line_error  # noqa: F401 (fixtures)

from taskres.cli import main


def test_file_system_errors_are_one_line_naming_the_path(colours, tmp_path, capsys, monkeypatch):
    import taskres.atomic

    def denied(*args, dir=None, **kw):
        raise PermissionError(13, "Permission denied", dir)

    with monkeypatch.context() as m:  # what a read-only or foreign parent folder gives, even when run as root
        m.setattr(taskres.atomic.tempfile, "mkdtemp", denied)
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



# -- a full disk ----------------------------------------------------------------------------------------------
def _disk_full(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")  # what a write to a full disk raises: no path


@pytest.mark.parametrize("writer", ["taskres.classifier.write_bytes", "taskres.atomic.write_bytes"])
def test_a_full_disk_is_one_line_naming_the_path_and_the_old_run_stays(colours, tmp_path, capsys, monkeypatch,
                                                                        writer):
    from kit import leftovers, snapshot

    out = tmp_path / "run"
    assert main(fit_args(colours, out, "--shots", "2")) == 0
    before = snapshot(out)
    with monkeypatch.context() as m:
        m.setattr(writer, _disk_full)
        err = one_line_error(fit_args(colours, out, "--shots", "1", "--overwrite"), capsys)
    assert err.startswith("taskres: error: No space left on device: ") and str(tmp_path) in err, err
    what = "classifier.safetensors" if "classifier" in writer else "config.json"  # the first file each writes
    assert err.endswith(what), err
    assert snapshot(out) == before and leftovers(tmp_path, "run") == []


def test_a_full_disk_under_the_cache_names_the_cache_file(colours, tmp_path, capsys, monkeypatch):
    import numpy as np

    cache = tmp_path / "cache"

    def save(fh, *args, **kwargs):
        _disk_full()

    monkeypatch.setattr(np, "save", save)
    err = one_line_error(fit_args(colours, tmp_path / "run", "--shots", "1", "--cache-dir", str(cache)), capsys)
    assert err.startswith("taskres: error: No space left on device: ") and str(cache) in err and ".npy" in err
    assert not (tmp_path / "run").exists()
