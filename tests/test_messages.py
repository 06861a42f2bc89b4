"""The library's errors name fields (what a Python caller set); the CLI's name flags (what a user typed) (issue 20).

One check per module whose messages mention options: the Python call's text, then the same error through the
command line or through the CLI's rewrite (``taskres.cli.flags.user_message``), which fills the same data.
"""

from __future__ import annotations

import pickle

import pytest

from taskres.backbone import BackboneConfig, BackboneError, load_backbone
from taskres.cli import main
from taskres.cli.flags import user_message
from taskres.datasets import DatasetError, load_dataset
from taskres.datasets.base import Sample, TaskData
from taskres.datasets.fewshot import make_fewshot_split
from taskres.errors import Mention, OptionError, naming
from taskres.features.cache import skip_hint
from taskres.protocols import read_sweep_file, resolve_sweep
from taskres.transforms import ImageError, _too_big

from conftest import TINY_MODEL

SWEEP = {"datasets": ["x"], "methods": ["zeroshot"], "shots": [1], "seeds": [1],
         "backbones": [{"name": TINY_MODEL, "pretrained": "none"}]}


def both(call) -> tuple[str, str]:
    """The error ``call`` raises, as the library says it and as the CLI says it."""
    with pytest.raises(Exception) as err:
        call()
    return str(err.value), user_message(err.value)


def test_a_mention_is_a_field_in_python_and_a_flag_on_the_command_line():
    exc = naming(ValueError, "use {on}, {off}, {dev} or {env}", on=Mention("FitConfig", "skip_bad_images", True),
                 off=Mention("BackboneConfig", "quick_gelu", False), dev=Mention("BackboneConfig", "device", "cpu"),
                 env=Mention(None, "TASKRES_MAX_IMAGE_PIXELS", "N"))
    assert str(exc) == ("use FitConfig.skip_bad_images=True, BackboneConfig.quick_gelu=False, "
                        "BackboneConfig.device='cpu' or TASKRES_MAX_IMAGE_PIXELS=N")
    assert user_message(exc) == "use --skip-bad-images, --no-quick-gelu, --device cpu or --max-image-pixels N"
    # errors cross process boundaries (decoding workers, bench jobs): the rewrite survives pickling
    assert user_message(pickle.loads(pickle.dumps(exc))) == user_message(exc)
    opt = OptionError("views", "must be at least 1 (or {off})", owner="FitConfig",
                      mentions={"off": Mention("FitConfig", "augment", False)})
    assert (str(opt), user_message(opt)) == ("FitConfig.views must be at least 1 (or FitConfig.augment=False)",
                                             "--views must be at least 1 (or --no-augment)")


def test_backbone_errors():
    lib, cli = both(lambda: load_backbone(BackboneConfig(TINY_MODEL, "none", precision="fp8")))
    assert lib.startswith("BackboneConfig.precision must be one of") and cli.startswith("--precision must be")
    lib, cli = both(lambda: load_backbone(BackboneConfig(TINY_MODEL, "/nowhere/w.safetensors")))
    assert lib.startswith("BackboneConfig.pretrained: checkpoint file not found") and "--" not in lib
    assert cli.startswith("--pretrained: checkpoint file not found")


def test_dataset_errors(tmp_path, capsys):
    lib, cli = both(lambda: load_dataset("dtd"))
    assert "needs FitConfig.data_root " in lib and "needs --data-root " in cli
    assert main(["fit", "--dataset", "dtd", "--backbone", TINY_MODEL, "--pretrained", "none",
                 "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "needs --data-root " in capsys.readouterr().err
    task = TaskData("t", ["a", "b"], ["{}"], train=[Sample("a.png", 0), Sample("b.png", 1)], val=[], test=[])
    lib, cli = both(lambda: make_fewshot_split(task, 2, 1))
    assert "fewer than FitConfig.shots=2 (use FitConfig.allow_fewer_shots=True " in lib
    assert "fewer than --shots 2 (use --allow-fewer-shots " in cli


def test_feature_cache_and_image_hints():
    exc = skip_hint("cannot read x.png")
    assert isinstance(exc, ImageError)
    assert (str(exc), user_message(exc)) == ("cannot read x.png (use FitConfig.skip_bad_images=True to skip such "
                                             "files)", "cannot read x.png (use --skip-bad-images to skip such files)")
    exc = _too_big("x.png", (4, 4), 10)
    assert "raise it with TASKRES_MAX_IMAGE_PIXELS=N, 0 for none" in str(exc)
    assert "raise it with --max-image-pixels N, 0 for none" in user_message(exc)


def test_sweep_errors(tmp_path, capsys):
    lib, cli = both(lambda: read_sweep_file(tmp_path / "missing.yaml"))
    assert lib == f"sweep file {tmp_path / 'missing.yaml'}: no such file"
    assert cli == f"--config {tmp_path / 'missing.yaml'}: no such file"
    (tmp_path / "s.yaml").write_text("views: 2.5\n")
    lib, cli = both(lambda: read_sweep_file(tmp_path / "s.yaml"))
    assert lib.startswith(f"sweep file {tmp_path / 's.yaml'}: views: expected")
    assert cli.startswith(f"--config {tmp_path / 's.yaml'}: views: expected")
    lib, cli = both(lambda: resolve_sweep(SWEEP, set_items=["lr"]))
    assert (lib, cli) == ("set item 'lr': expected [METHOD.]KEY=VALUE", "--set lr: expected [METHOD.]KEY=VALUE")
    lib, cli = both(lambda: resolve_sweep({**SWEEP, "backbones": []}))
    assert lib.startswith("SweepConfig.backbones is empty") and "--" not in lib
    assert cli == "--backbone is empty: give at least one (or --preset paper, or --config FILE)"
    assert main(["bench", str(tmp_path / "r"), "--datasets", "x", "--shots", "1", "--seeds", "1",
                 "--methods", "zeroshot", "--backbone", TINY_MODEL, "--set", "lr"]) == 2
    assert capsys.readouterr().err.strip() == "taskres: error: --set lr: expected [METHOD.]KEY=VALUE"


def test_split_file_errors(tmp_path):
    from taskres.api import FitConfig, resolve_split

    for i in range(4):
        (tmp_path / f"{i}.png").touch()  # checked to exist, never read
    task = TaskData("t", ["a"], ["{}"], train=[Sample(str(tmp_path / f"{i}.png"), 0) for i in range(4)], val=[],
                    test=[])
    split = make_fewshot_split(task, 2, 1)
    (tmp_path / "split.json").write_text(__import__("json").dumps(split.to_json()))
    cfg = FitConfig(dataset="t", split_file=str(tmp_path / "split.json"), shots=3)
    lib, cli = both(lambda: resolve_split(cfg, task))
    assert lib.startswith("FitConfig.shots=3 disagrees with FitConfig.split_file=") and "(drop FitConfig.shots," in lib
    assert cli.startswith(f"--shots 3 disagrees with --split-file {tmp_path / 'split.json'}, made with --shots 2")


def test_classifier_backbone_mismatch():
    from types import SimpleNamespace

    from taskres.classifier import check_backbone

    clf = SimpleNamespace(meta=SimpleNamespace(backbone={"model": "RN50", "fingerprint": "a", "activation": "gelu"}))
    lib, cli = both(lambda: check_backbone(clf, {"model": "RN50", "fingerprint": "b", "activation": "gelu"}))
    assert lib.endswith("give the same BackboneConfig.name/BackboneConfig.pretrained")
    assert cli.endswith("give the same --backbone/--pretrained")
