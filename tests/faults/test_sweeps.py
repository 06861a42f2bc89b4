"""What taskres promises about sweeps: bad parameters and sweep-file values are refused in one line before
any cell runs; a label cannot lead a record out of the results folder."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_MODEL
from kit import TINY, colours, one_line_error  # noqa: F401 (fixtures)

from taskres.cli import main


def test_bench_refuses_bad_parameters_before_any_cell(colours, tmp_path, capsys):
    err = one_line_error(["bench", str(tmp_path / "r"), "--datasets", str(colours), "--methods", "taskres",
                          "--shots", "1", *TINY, "--set", "taskres.epochs=-5"], capsys)
    assert "--set epochs must be at least 0, not -5" in err and not (tmp_path / "r").exists()


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


# -- sweep files: each value type-checked as a --set value is -------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("augment: 'false'", "augment: expected true or false, not the text 'false'"),
    ("views: ten", "views: expected a whole number, not the text 'ten'"),
    ("views: 2.5", "views: expected a whole number, not 2.5"),
    ("batch_size: big", "batch_size: expected a whole number, not the text 'big'"),
    ("shots: [2.7]", "shots: expected a whole number, not 2.7"),
    ("seeds: [true]", "seeds: expected a whole number, not True"),
    ("skip_bad_images: 1", "skip_bad_images: expected true or false, not 1"),
    ("datasets: {a: 1}", "datasets: expected a list, not the mapping"),
    ("method_params: [taskres, 1]", "method_params: expected a mapping of method names"),
    ("method_params: {taskres: [1]}", "method_params: expected a mapping of method names"),
    ("method_params: {taskres: {epochs: 2.7}}", "--set epochs: expected a whole number or none, not 2.7"),
    ("method_params: {taskres: {epochs: many}}", "--set epochs=many: expected a whole number"),
    ("precision: fp64", "--precision must be one of fp32, fp16, bf16, not 'fp64'"),
    ("device: gpu", "--device must be cpu or cuda[:N], not 'gpu'"),
    ("backbones: [{name: x, quick_gelu: 'yes'}]", "backbone quick_gelu: expected true or false or none, not the text"),
])
@pytest.mark.parametrize("dry", [True, False])
def test_a_sweep_file_value_of_the_wrong_type_is_one_line_before_any_cell(colours, tmp_path, capsys, text, expected,
                                                                          dry):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(text + "\n")
    results = tmp_path / "results"
    args = ["bench", str(results), "--config", str(sweep), "--datasets", str(colours), "--methods", "taskres",
            "--shots", "1", "--views", "1", "--quiet"] + (["--dry-run"] if dry else [])
    if "backbones" not in text:
        args += TINY if "precision" not in text and "device" not in text else ["--backbone", TINY_MODEL]
    if "shots" in text or "views" in text:  # the file's own value, not the flag's
        flag = "--shots" if "shots" in text else "--views"
        i = args.index(flag)
        del args[i:i + 2]
    err = one_line_error(args, capsys)
    assert expected in err, err
    if "--config" in err or "--set" not in expected:
        assert "precision" in text or "device" in text or str(sweep) in err
    assert not results.exists()


def test_a_sweep_file_with_good_values_runs_as_given(colours, tmp_path, capsys):
    sweep = tmp_path / "sweep.yaml"  # 2e-4 is a string to YAML 1.1: parsed as the number it is
    sweep.write_text("augment: false\nshots: 1,2\nmethod_params:\n  taskres: {lr: 2e-4, epochs: 2}\n")
    results = tmp_path / "results"
    assert main(["bench", str(results), "--config", str(sweep), "--datasets", str(colours), "--methods", "taskres",
                 *TINY, "--views", "1", "--quiet"]) == 0
    records = sorted((results / "records").iterdir())
    assert len(records) == 2
    record = json.loads(records[0].read_text())
    assert record["config"]["augment"] is False and record["metrics"]["augmentation"] is None
    assert record["hparams"]["lr"] == 2e-4 and record["hparams"]["epochs"] == 2


def test_configs_built_in_python_get_the_same_type_checks(colours):
    from taskres.api import FitConfig, fit
    from taskres.protocols import SweepConfig, check_sweep

    with pytest.raises(ValueError, match="augment: expected true or false, not the text 'false'"):
        fit(FitConfig(dataset=str(colours), augment="false"))
    with pytest.raises(ValueError, match="^SweepConfig.views: expected a whole number, not 2.5"):  # the field
        check_sweep(SweepConfig(datasets=[str(colours)], methods=["zeroshot"], views=2.5))
