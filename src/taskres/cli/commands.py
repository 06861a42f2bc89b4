"""The commands a record says to repeat a cell with: ``taskres fit``/``eval`` alone, or a one-cell ``bench``.

Built here, beside the flags they name, so that the library's records need not know the flag spellings.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the protocol module imports this one to write its records
    from ..protocols import BackboneSpec, Cell, SweepConfig


def activation_flags(b: "BackboneSpec") -> list[str]:
    return [] if b.quick_gelu is None else ["--quick-gelu" if b.quick_gelu else "--no-quick-gelu"]


def fit_command(cell: Cell, sweep: SweepConfig, split_file: Path, out: Path) -> str:
    """The ``taskres fit`` command that repeats a cell's training alone, on its exact few-shot split."""
    b = cell.backbone
    cmd = ["taskres", "fit", "--method", cell.method, "--dataset", cell.dataset]
    if sweep.data_root:
        cmd += ["--data-root", sweep.data_root]
    cmd += ["--backbone", b.name, "--pretrained", b.pretrained, "--device", b.device, "--precision", b.precision,
            *activation_flags(b), "--shots", str(cell.shots), "--seed", str(cell.seed), "--regime", sweep.regime,
            "--views", str(sweep.views)]
    for k, v in sweep.method_params.get(cell.method, {}).items():
        cmd += ["--set", f"{k}={v}"]
    cmd += _data_flags(sweep)
    if sweep.cache_dir is not None:
        cmd += ["--cache-dir", sweep.cache_dir]
    cmd += ["--split-file", str(split_file), "--out", str(out)]
    return shlex.join(cmd)


def _data_flags(sweep: SweepConfig) -> list[str]:
    """The switches a rerun command needs to see the same training images as the sweep did."""
    flags = [] if sweep.augment else ["--no-augment"]
    if sweep.search_split != "fewshot":
        flags += ["--search-split", sweep.search_split]
    if sweep.allow_fewer_shots:
        flags.append("--allow-fewer-shots")
    if sweep.skip_bad_images:
        flags.append("--skip-bad-images")
    return flags


def eval_command(run_dir: Path, dataset: str, sweep: SweepConfig) -> str:
    cmd = ["taskres", "eval", str(run_dir), "--dataset", dataset]
    if sweep.data_root:
        cmd += ["--data-root", sweep.data_root]
    return shlex.join(cmd)


def bench_command(cell: Cell, sweep: SweepConfig, results_dir: Path) -> str:
    """A one-cell ``taskres bench`` that repeats the cell in a folder of its own."""
    b = cell.backbone
    cmd = ["taskres", "bench", str(results_dir), "--protocol", cell.protocol, "--datasets", cell.dataset,
           "--methods", cell.method, "--shots", str(cell.shots), "--seeds", str(cell.seed),
           "--backbone", b.name, "--pretrained", b.pretrained, "--device", b.device, "--precision", b.precision,
           *activation_flags(b), "--regime", sweep.regime, "--views", str(sweep.views)]
    if sweep.data_root:
        cmd += ["--data-root", sweep.data_root]
    if cell.protocol == "domain":
        cmd += ["--targets", *sweep.targets]
    for k, v in sweep.method_params.get(cell.method, {}).items():
        cmd += ["--set", f"{cell.method}.{k}={v}"]
    cmd += _data_flags(sweep)
    return shlex.join(cmd)
