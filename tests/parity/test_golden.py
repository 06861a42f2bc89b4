"""Every golden output of the authors' code, recomputed by taskres in float64 and float32 (issue 19).

Each ``tests/parity/golden/<name>.safetensors`` was written by ``python -m parity.<module> --repo SNAPSHOT``
from the official implementation; ``parity.<module>.recompute`` computes the same keys with taskres's own
code. A method that drifts from its authors' code fails here with the method, key, dtype and difference.
The official code is never needed: only the golden files.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from parity import fixture

GOLDENS = fixture.golden_names()


def test_goldens_are_present():
    assert GOLDENS, f"no golden file under {fixture.GOLDEN_DIR}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", GOLDENS)
def test_golden(name, dtype):
    golden, meta = fixture.load_golden(name)
    module = importlib.import_module(f"parity.{meta['module']}")
    got = module.recompute(golden, meta, dtype)
    failures = [row for row in fixture.compare(got, golden, meta, dtype) if not row["ok"]]
    assert not failures, "\n".join(describe(name, meta, row) for row in failures)


def describe(name: str, meta: dict, row: dict) -> str:
    """One line per failing key: what drifted from which official file, by how much, against what bound."""
    where = f"{meta['official']['repo']}@{meta['official']['commit'][:10]}"
    detail = row["problem"] or (f"max |taskres - official| = {row['max_abs']:.3g}, {row['ratio']:.3g} x the allowed "
                                f"atol {row['atol']:g} + rtol {row['rtol']:g} * |official|")
    return f"{name} ({where}) key {row['key']!r} in {row['dtype']}: {detail}"
