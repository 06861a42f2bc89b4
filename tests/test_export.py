"""`taskres export`: the ONNX graph run by onnxruntime alone gives `taskres predict`'s probabilities."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, draw
from PIL import Image

from taskres.api import predict
from taskres.classifier import Classifier, ClassifierError, ClassifierMeta, load_classifier
from taskres.cli import main
from taskres.export import ProbabilityModel, export_model, write_onnx
from taskres.methods import CLASSIFIERS

ort = pytest.importorskip("onnxruntime")
README = Path(__file__).parents[1] / "README.md"
TOL = 1e-4


@pytest.fixture(scope="module")
def run(tmp_path_factory, class_folder) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    assert main(["fit", "--dataset", str(class_folder), "--backbone", TINY_MODEL, "--pretrained", "none",
                 "--shots", "2", "--views", "2", "--set", "epochs=3", "--set", "lr=1e-2", "--out", str(out),
                 "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """Generated images of several sizes and aspect ratios, so resize and crop matter."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    paths = []
    for i, (colour, size) in enumerate([((220, 30, 30), (40, 40)), ((30, 200, 60), (57, 33)),
                                        ((30, 60, 220), (29, 71)), ((230, 220, 40), (90, 64)),
                                        ((120, 120, 120), (33, 33))]):
        img = draw(colour, rng, size=max(size)).resize(size, Image.NEAREST)
        paths.append(str(folder / f"img{i}.png"))
        img.save(paths[-1])
    return paths


def readme_example() -> str:
    """The onnxruntime example of the README, exactly as printed there."""
    text = README.read_text()
    found = re.search(r"<!-- onnx-example -->\s*```python\n(.*?)```", text, re.S)
    assert found, "README.md has no onnxruntime example marked <!-- onnx-example -->"
    return found.group(1)


def test_onnx_with_onnxruntime_alone_matches_predict(run, images, capsys):
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert "model.onnx" in capsys.readouterr().out
    code = readme_example()
    assert "import torch" not in code and "taskres" not in code.replace("taskres export", "")
    assert len(code.strip().splitlines()) <= 16
    namespace: dict = {}
    exec(compile(code.split("# usage")[0], "README-onnx-example", "exec"), namespace)
    classnames, probs = namespace["onnx_predict"](str(run), images)  # 5 images: the batch axis is dynamic
    clf = load_classifier(run)
    assert classnames == clf.classnames and probs.shape == (len(images), len(classnames))
    want = predict(run, images, k=len(classnames))
    for row, got in zip(want, probs):
        expected = np.zeros(len(classnames))
        for name, p in row["top"]:
            expected[classnames.index(name)] = p
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    assert not np.allclose(probs[0], probs[1], atol=1e-3)  # different images, different answers


def test_preprocessing_json(run):
    info = json.loads((run / "model.onnx.json").read_text())
    pp = info["preprocess"]
    assert pp["resize"] == {"size": 32, "rule": "shorter side to size, aspect kept", "interpolation": "bicubic",
                            "antialias": True}
    assert pp["crop"]["size"] == [32, 32] and len(pp["mean"]) == 3 and len(pp["std"]) == 3
    assert info["input"]["shape"] == ["N", 3, 32, 32] and info["input"]["name"] == "images"
    assert info["classnames"] == load_classifier(run).classnames and info["classifier_kind"] == "cosine"


def test_torchscript_matches_predict(run, images, tiny_backbone):
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    model = torch.jit.load(str(run / "model.torchscript.pt"))
    batch = torch.stack([tiny_backbone.preprocess(Image.open(p).convert("RGB")) for p in images])
    probs = model(batch)
    want = predict(run, images, k=probs.shape[1])
    names = load_classifier(run).classnames
    for row, got in zip(want, probs):
        for name, p in row["top"]:
            assert abs(float(got[names.index(name)]) - p) < TOL


def _head(kind: str, dim: int = 32, classes: int = 4) -> Classifier:
    """A classifier of each kind with random tensors (what each kind computes is tested elsewhere)."""
    g = torch.Generator().manual_seed(3)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    meta = ClassifierMeta([f"c{i}" for i in range(classes)], {"model": "x"}, kind)
    tensors, config = {
        "cosine": ({"base": r(classes, dim), "residual": r(classes, dim)}, {"alpha": 0.5, "logit_scale": 4.6}),
        "linear": ({"weight": r(classes, dim), "bias": r(classes)}, {"normalize": True}),
        "clip_adapter": ({"fc1": r(dim // 4, dim), "fc2": r(dim, dim // 4), "text": r(classes, dim)},
                    {"ratio": 0.2, "logit_scale": 4.6}),
        "tip_adapter": ({"text": torch.nn.functional.normalize(r(classes, dim), dim=-1), "keys": r(8, dim),
                   "labels": torch.arange(8) % classes}, {"alpha": 1.0, "beta": 5.0, "logit_scale": 4.6}),
        "coop": ({"base": r(classes, dim), "context": r(4, 16)}, {"logit_scale": 4.6}),
    }[kind]
    return CLASSIFIERS[kind].from_tensors(tensors, meta, config)


class AllHeads(torch.nn.Module):
    """Every kind's ProbabilityModel side by side in one graph: one export (seconds) covers them all."""

    def __init__(self, heads):
        super().__init__()
        self.models = torch.nn.ModuleList(ProbabilityModel(torch.nn.Identity(), h).eval() for h in heads)

    def forward(self, images):
        return torch.cat([m(images) for m in self.models], dim=1)


def test_every_classifier_kind_exports_to_onnx(tmp_path):
    """Each head of CLASSIFIERS through the exporter (features in: the encoder is tested above)."""
    features = torch.randn(6, 32, generator=torch.Generator().manual_seed(5))
    shipped = [k for k, cls in CLASSIFIERS.items() if cls.__module__.startswith("taskres.")]  # not tests' own
    assert set(shipped) == {"cosine", "linear", "clip_adapter", "tip_adapter", "coop"}, "a new kind: add it here"
    heads = [_head(kind) for kind in shipped]
    write_onnx(AllHeads(heads).eval(), features[:2], tmp_path / "heads.onnx")
    got = ort.InferenceSession(str(tmp_path / "heads.onnx")).run(None, {"images": features.numpy()})[0]
    for kind, head, part in zip(shipped, heads, np.split(got, len(heads), axis=1)):
        np.testing.assert_allclose(part, head.predict_proba(features).numpy(), atol=TOL, rtol=0, err_msg=kind)


def test_export_refuses_a_kind_it_does_not_know(tiny_backbone, tmp_path):
    class Odd(Classifier):  # no kind of its own: not registered, so nothing says it can be exported
        def forward(self, features):
            return features

    with pytest.raises(ClassifierError, match="Odd is not the registered class"):
        export_model(tiny_backbone, Odd(ClassifierMeta(["a"], {}, "odd")), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "classifier file not found" in err


def test_missing_onnx_packages_are_named(run, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "onnxscript", None)  # as if not installed
    assert main(["export", str(run), "--out", str(run / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "onnxscript" in err and "taskres[export]" in err
    assert not (run / "x.onnx").exists()
