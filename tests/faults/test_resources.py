"""What taskres promises when the machine says no: permissions, a file where a folder belongs, a read-only
or full disk each end as one line naming the path, with the old run intact; outputs follow the umask."""

from __future__ import annotations

import os

import pytest
from kit import colours, fit_args, one_line_error  # noqa: F401 (fixtures)

from taskres.cli import main


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

