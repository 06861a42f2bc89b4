"""What the fault battery shares: the tiny backbone's flags, a small class folder, and the checks every
fault ends with (one line on stderr, exit status 2; a folder's files byte for byte; no leftovers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_MODEL, make_class_folder
from PIL import Image

from taskres.cli import main

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



def _save(img: Image.Image, path: Path, **kw) -> str:
    img.save(path, **kw)
    return str(path)


