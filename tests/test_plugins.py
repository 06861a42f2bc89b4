"""Methods from other packages (taskres.methods entry points): the example package installed into a temporary
path runs through `taskres methods`, fit, a two-cell bench and report; broken plugins are named in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_MODEL
from taskres.cli import main
from taskres.classifier import (CLASSIFIERS, Classifier, ClassifierError, ClassifierMeta, load_classifier,
                               save_classifier)

EXAMPLE = Path(__file__).parents[1] / "examples" / "taskres-example-method"
TINY = ["--backbone", TINY_MODEL, "--pretrained", "none"]


def _fake_dist(site: Path, name: str, version: str, entry_points: str) -> None:
    """A package as an installer leaves it: a dist-info folder with its entry points."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example package pip-installed (offline) into a temporary folder, beside two broken plugins."""
    root = tmp_path_factory.mktemp("plugins")
    source, site = root / "example", root / "site"
    shutil.copytree(EXAMPLE, source)  # pip builds in the source folder: keep the repository's clean
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(source)], check=True, capture_output=True, timeout=300)
    (site / "broken_plugin.py").write_text("raise ImportError('needs the package frobnicate, which is missing')\n")
    _fake_dist(site, "broken-plugin", "1.0", "[taskres.methods]\nbroken = broken_plugin:Method\n")
    _fake_dist(site, "shadow-plugin", "2.0", "[taskres.methods]\ntaskres = taskres_example_method:NearestCentroid\n")
    return site


def taskres(args: list[str], site: Path) -> subprocess.CompletedProcess:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "taskres", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_example_plugin_runs_through_fit_bench_and_report(site, class_folder, tmp_path, capsys):
    listed = taskres(["methods"], site)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:-1]}
    assert "taskres-example-method==0.1.0" in rows["example_centroid"]
    assert "built-in" in rows["taskres"] and "CVPR 2023" in rows["taskres"]  # not replaced by the shadowing one
    # each broken plugin: one line naming it and its package; the built-ins are all still there
    warnings = [line for line in listed.stderr.splitlines() if "plugin method" in line]
    assert len(warnings) == 2, listed.stderr
    assert any("'broken'" in w and "broken-plugin==1.0" in w and "frobnicate" in w for w in warnings)
    assert any("'taskres'" in w and "shadow-plugin==2.0" in w and "built-in" in w for w in warnings)
    from taskres.methods import BUILTIN_METHODS

    assert set(BUILTIN_METHODS) <= set(rows) and "broken" not in rows

    run = tmp_path / "run"
    fit = taskres(["fit", "--method", "example_centroid", "--dataset", str(class_folder), *TINY, "--shots", "2",
                   "--out", str(run), "--quiet", "--set", "mix=0.7"], site)
    assert fit.returncode == 0, fit.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    for recorded in (metrics["method_source"], config["method_source"]):
        assert recorded["package"] == "taskres-example-method" and recorded["version"] == "0.1.0"
    assert metrics["method"] == "example_centroid" and metrics["hparams"] == {"mix": 0.7}
    assert metrics["top1"]["test"] > metrics["evaluation"]["test"]["zeroshot"]["top1"]  # the shots helped

    # its run is a run like any other: predict (JSON) and export need nothing of the plugin (a cosine head)
    image = sorted((class_folder / "red_thing").iterdir())[0]
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"] == str(image)
    assert main(["export", str(run), "--format", "torchscript"]) == 0 and (run / "model.torchscript.pt").is_file()

    results = tmp_path / "results"
    bench = taskres(["bench", str(results), "--datasets", str(class_folder), "--methods", "zeroshot",
                     "example_centroid", "--shots", "2", "--seeds", "1", *TINY, "--quiet"], site)
    assert bench.returncode == 0, bench.stdout + bench.stderr
    records = {json.loads(p.read_text())["method"]: json.loads(p.read_text())
               for p in (results / "records").glob("*.json")}
    assert set(records) == {"zeroshot", "example_centroid"}  # the built-in ran beside the broken plugins
    assert all(r["status"] == "ok" for r in records.values())
    assert records["example_centroid"]["key"]["method_source"] == "taskres-example-method==0.1.0"
    assert "method_source" not in records["zeroshot"]["key"]  # built-in cells keep the keys they had
    assert records["example_centroid"]["scores"]["top1"] == pytest.approx(metrics["top1"]["test"])

    report = taskres(["report", str(results)], site)
    assert report.returncode == 0, report.stderr
    method_rows = [line for line in report.stdout.splitlines() if line.startswith("| example_centroid")]
    assert method_rows and "| zeroshot" in report.stdout


class _PluginHead(Classifier):
    kind = "test_plugin_head"

    def __init__(self, meta, weight):
        super().__init__(meta)
        self.weight = weight

    def tensors(self):
        return {"weight": self.weight}

    @classmethod
    def from_tensors(cls, tensors, meta, config):
        return cls(meta, tensors["weight"])


def test_a_run_whose_plugin_is_missing_names_the_package_to_install(tmp_path, monkeypatch):
    source = {"package": "taskres-fancy-head", "version": "1.2.3", "entry_point": "fancy:Head"}
    meta = ClassifierMeta(["a", "b"], {"model": "m"}, "fancy", extra={"method_source": source})
    save_classifier(_PluginHead(meta, torch.zeros(2, 4)), tmp_path / "classifier.safetensors")
    assert type(load_classifier(tmp_path)) is _PluginHead  # with the kind registered: loads
    monkeypatch.delitem(CLASSIFIERS, "test_plugin_head")  # as in an environment without the package
    with pytest.raises(ClassifierError, match=r"pip install 'taskres-fancy-head==1\.2\.3'"):
        load_classifier(tmp_path)


def test_unknown_method_says_why_a_plugin_is_missing(monkeypatch):
    from taskres.methods import METHODS, get_method

    monkeypatch.setitem(METHODS.problems, "fancy", "plugin method 'fancy' of package x==1 failed to load (boom)")
    with pytest.raises(ValueError, match="failed to load"):
        get_method("fancy")
    with pytest.raises(ValueError, match="method 'nothing' is not a known method"):
        get_method("nothing")


def test_methods_lists_every_built_in_with_its_paper(capsys):
    from taskres.methods import BUILTIN_METHODS
    from taskres.methods.auto import CANDIDATES

    assert main(["methods", "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(BUILTIN_METHODS) <= set(rows)
    for name in BUILTIN_METHODS:
        assert rows[name]["source"] == "built-in" and rows[name]["auto_candidate"] == (name in CANDIDATES)
        if name != "auto":  # a paper with its venue and year, e.g. "..., CVPR 2023"
            assert any(str(year) in rows[name]["paper"] for year in range(2021, 2025)), name


def test_conflicting_and_wrong_entry_points_are_each_named_and_left_out(monkeypatch, caplog):
    from importlib.metadata import EntryPoint

    from taskres import plugins
    from taskres.methods import BUILTIN_METHODS
    from taskres.methods.zeroshot import ZeroShot

    eps = [EntryPoint("twin", "taskres.methods.zeroshot:ZeroShot", plugins.GROUP),
           EntryPoint("twin", "taskres.methods.gda:GDA", plugins.GROUP),
           EntryPoint("not_a_method", "taskres.api:fit", plugins.GROUP),
           EntryPoint("fine", "taskres.methods.zeroshot:ZeroShot", plugins.GROUP)]
    monkeypatch.setattr(plugins, "_entry_points", lambda: eps)
    table = plugins.MethodTable(dict(BUILTIN_METHODS))
    with caplog.at_level("WARNING", logger="taskres"):
        assert table["fine"] is ZeroShot and "twin" not in table and "not_a_method" not in table
    assert set(table.problems) == {"twin", "not_a_method"} and len(caplog.records) == 2
    assert "declared by" in table.problems["twin"] and "not a taskres.methods.Method" in table.problems["not_a_method"]
    assert set(BUILTIN_METHODS) < set(table)
