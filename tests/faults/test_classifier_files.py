"""What taskres promises about classifier files: one whose metadata is not JSON or lacks a key, whose tensors
have the wrong width, or that holds NaN is refused by eval, predict and export alike in one line naming the
file (exit status 2), never a traceback, a "nan%" prediction or an exported NaN model."""

from __future__ import annotations

import json

import pytest
import torch
from kit import colours, fit_args, one_line_error  # noqa: F401 (fixtures)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from taskres.cli import main


@pytest.fixture(scope="module")
def trained_run(colours, tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "run"
    assert main(fit_args(colours, out, "--shots", "2")) == 0  # zeroshot: a cosine classifier, residual 0
    return out


def _damage(run, tmp_path, how):
    """A copy of the run folder whose classifier file is rewritten by ``how(tensors, meta) -> raw metadata``."""
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(run, copy)
    path = copy / "classifier.safetensors"
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["taskres"])
    raw = how(tensors, meta)
    save_file(tensors, str(path), metadata={"taskres": raw if isinstance(raw, str) else json.dumps(raw)})
    return copy


def _nan_residual(tensors, meta):
    tensors["residual"][1, 3] = float("nan")
    return meta


def _wider(tensors, meta):
    tensors["base"] = torch.cat([tensors["base"], tensors["base"][:, :1]], dim=1)
    tensors["residual"] = torch.cat([tensors["residual"], tensors["residual"][:, :1]], dim=1)
    return meta


def _fewer_rows(tensors, meta):
    tensors["residual"] = tensors["residual"][:2].contiguous()
    return meta


DAMAGE = {
    "metadata not JSON": (lambda t, m: "{'kind': cosine", "its taskres metadata is not JSON"),
    "metadata without classnames": (lambda t, m: {k: v for k, v in m.items() if k != "classnames"},
                                    "its taskres metadata lacks 'classnames'"),
    "metadata without config": (lambda t, m: {k: v for k, v in m.items() if k != "config"},
                                "do not make a 'cosine' classifier (KeyError"),
    "a tensor missing": (lambda t, m: (t.pop("residual"), m)[1], "do not make a 'cosine' classifier (KeyError"),
    "residual holding NaN": (_nan_residual, "tensor 'residual' holds NaN or inf values"),
    "one column too wide": (_wider, "does not take the backbone's"),
    "rows cut": (_fewer_rows, "does not take the backbone's"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("verb", ["eval", "predict", "export"])
def test_a_damaged_classifier_file_is_one_line_naming_it(trained_run, colours, tmp_path, capsys, damage, verb):
    how, expected = DAMAGE[damage]
    run = _damage(trained_run, tmp_path, how)
    image = str(next(colours.rglob("*.png")))
    args = {"eval": ["eval", str(run), "--dataset", str(colours), "--quiet"],
            "predict": ["predict", str(run), image], "export": ["export", str(run)]}[verb]
    err = one_line_error(args, capsys)
    assert expected in err and str(run) in err, err
    assert not (run / "model.onnx").exists()
