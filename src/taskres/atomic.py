"""Atomic writes: a killed run leaves either the old file (or folder) or the new one, never half of one.

Files and folders made here get the permissions a plain ``open`` / ``mkdir`` would give under the
process's umask (``tempfile`` alone makes them private, 0600 / 0700, and a shared cache or results folder
would be unreadable by colleagues).
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import secrets
import shutil
import socket
import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path

TMP_TAG = ".tmp-"  # temporary folders beside a run: ``.<name>.tmp-<pid>@<host>-<random>``
OLD_TAG = ".old-"  # a replaced run moved aside for the moment of the swap: ``.<name>.old-<pid>@<host>-<random>``


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux: /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the usual set-and-restore
    os.umask(mask)
    return mask


def _follow_umask(path: str | Path, folder: bool = False) -> None:
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _follow_umask(tmp)  # after the writer: some (safetensors) replace the file with one of their own
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename:
            raise
        # a write that failed ("No space left on device") says no file: name the one it was writing
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: Path, data: bytes) -> None:
    """``data`` into ``path`` (the one place atomic writers of bytes go through; tests make it fail)."""
    with open(path, "wb") as fh:
        fh.write(data)


def write_json_atomic(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        write_bytes(tmp, (json.dumps(data, indent=1, sort_keys=False) + "\n").encode())


def read_json(path: Path):
    return json.loads(Path(path).read_text())


# -- whole folders (run folders, bench cells) ---------------------------------------------------------------
class RunExistsError(ValueError):
    """The output folder already holds a run and replacing it was not asked for."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner() -> str:
    """``<pid>@<host>``: who writes a temporary folder (a shared file system may hold other hosts' ones)."""
    host = "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname()) or "host"
    return f"{os.getpid()}@{host}"


def _dead_local_writer(name: str, tag: str) -> bool:
    """True when ``name`` was made by a process of this host that no longer runs."""
    try:
        pid, rest = name.split(tag, 1)[1].split("@", 1)
        host = rest.rsplit("-", 1)[0]
        return host == _owner().split("@", 1)[1] and not _pid_alive(int(pid))
    except (IndexError, ValueError):
        return False


def recover_folder(path: Path) -> None:
    """Tidy what a killed writer of ``path`` left beside it (this machine's dead processes only).

    A replaced run is moved aside for the instant of the swap; if the writer died right then, ``path`` is
    missing and the old run is put back. Temporary folders of dead writers are removed: they were never
    renamed into place, so no half-written folder is ever taken for a run.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return
    for prefix, tag in ((f".{path.name}{OLD_TAG}", OLD_TAG), (f".{path.name}{TMP_TAG}", TMP_TAG)):
        for item in sorted(parent.glob(glob.escape(prefix) + "*")):
            if not _dead_local_writer(item.name, tag):
                continue
            if tag == OLD_TAG and not path.exists():
                os.replace(item, path)
            else:
                shutil.rmtree(item, ignore_errors=True)


def check_output_folder(path: Path, *, overwrite: bool, option: str = "--out",
                        is_run=lambda p: any(p.iterdir()), foreign=lambda p: []) -> None:
    """Refuse, in one line, an output folder that cannot or may not be (re)placed; before any work.

    ``foreign(path)`` lists what in the folder its writer never writes: replacing the folder would delete
    those, so a folder holding any is refused even with ``overwrite`` (a run's own file names beside a
    user's notes do not make the notes a run's)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(20, f"{option} is a file, not a folder", str(path))
    if path.is_dir() and any(path.iterdir()):
        others = foreign(path)
        if others:
            more = f" and {len(others) - 3} more" if len(others) > 3 else ""
            raise RunExistsError(f"{option} {path} holds files that no run writes ({', '.join(others[:3])}{more}); "
                                 "refusing to replace it (move them out, or choose another folder)")
        if not is_run(path):
            raise RunExistsError(f"{option} {path} is a folder that holds other files, not a run; "
                                 "refusing to replace it (choose another folder)")
        if not overwrite:
            raise RunExistsError(f"{option} {path} already holds a run (pass --overwrite to replace it)")


@contextmanager
def atomic_folder(path: Path, *, overwrite: bool = False, option: str = "--out",
                  is_run=lambda p: any(p.iterdir()), foreign=lambda p: []):
    """Yield an empty temporary folder beside ``path``; on success it becomes ``path`` by renames.

    An existing run at ``path`` is replaced only with ``overwrite`` (checked now, before the caller does any
    work, and again at the swap). The swap is one atomic exchange where Linux offers it
    (renameat2); elsewhere the old folder is moved aside, the new one renamed in, and only then the old one
    deleted, so ``path`` is the complete old run, the complete new one, or (killed between the two renames,
    which :func:`recover_folder` undoes on the next write) missing. On failure the
    temporary folder is removed and ``path`` is exactly as it was.
    """
    path = Path(os.path.abspath(path))
    recover_folder(path)
    check_output_folder(path, overwrite=overwrite, option=option, is_run=is_run, foreign=foreign)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_TAG}{_owner()}-", dir=path.parent))
    try:
        _follow_umask(tmp, folder=True)
        yield tmp
        # another writer's run, or files put there meanwhile?
        check_output_folder(path, overwrite=overwrite, option=option, is_run=is_run, foreign=foreign)
        if path.exists() and _exchange(tmp, path):
            pass  # one atomic swap: tmp now holds the old run, removed below
        elif path.exists():
            old = path.with_name(f".{path.name}{OLD_TAG}{_owner()}-{secrets.token_hex(4)}")
            os.replace(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


# -- ownership (one bench cell, one process) ----------------------------------------------------------------
def try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive ``flock`` on ``path``, or None while another process holds it.

    The kernel releases the lock when its process ends, however it ends (kill -9 included), so a killed
    owner never leaves a stale lock to detect. The file holds the owner's ``<pid>@<host>`` for messages and
    is never removed (removing a lock file races with a process that just opened it). On a file system
    without locks the lock is taken without one, with a warning."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        logging.getLogger("taskres").warning("cannot lock %s (%s): two sweeps on this folder may run one cell "
                                             "twice", path, exc.strerror or type(exc).__name__)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, _owner().encode())
    except OSError as exc:  # a full disk: name the file
        os.close(fd)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    return fd


def release_lock(fd: int) -> None:
    os.close(fd)  # closing the descriptor releases the lock


def wait_for_lock(path: Path) -> None:
    """Return once no process holds ``path`` (its owner finished, or died)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        pass  # no locks on this file system: nothing to wait for
    finally:
        os.close(fd)


def lock_owner(path: Path) -> str | None:
    """The ``<pid>@<host>`` written in a lock file (None: none)."""
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None
