"""The LP++, GDA and CLAP goldens catch a method that drifts: each small change to taskres's math fails them.

Each case changes one thing the release does (parity/lpp.py, gda.py, clap.py name the official lines) and
expects ``fixture.compare`` to fail in float64 and in float32, on the output the change should reach.
"""

from __future__ import annotations

import functools
import importlib

import pytest
import torch

from parity import fixture


def failing_keys(name: str, dtype: torch.dtype) -> set[str]:
    golden, meta = fixture.load_golden(name)
    got = importlib.import_module(f"parity.{meta['module']}").recompute(golden, meta, dtype)
    return {row["key"] for row in fixture.compare(got, golden, meta, dtype) if not row["ok"]}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_lpp_golden_needs_the_accumulated_alpha_gradient(monkeypatch, dtype):
    import taskres.methods.lpp as lpp

    assert not failing_keys("lpp", dtype)
    # the textbook step on the current gradient, not the release's never-zeroed sum
    monkeypatch.setattr(lpp, "LPPParams", functools.partial(lpp.LPPParams, alpha_grad="current"))
    assert {"alpha_last", "weight_last", "test_logits"} <= failing_keys("lpp", dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_gda_golden_needs_the_release_shrinkage(monkeypatch, dtype):
    import taskres.methods.gda as gda

    original = gda.gda_statistics

    def n_not_n_minus_1(x, y, num_classes):  # (N-1) S + tr(S) I with S normalised by N: 1.7 % off at N = 60
        mus, precision = original(x, y, num_classes)
        return mus, precision * (len(y) - 1) / len(y)

    monkeypatch.setattr(gda, "gda_statistics", n_not_n_minus_1)
    assert "precision" in failing_keys("gda", dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_clap_golden_needs_the_zero_shot_multipliers(monkeypatch, dtype):
    import taskres.methods.clap as clap

    # "balanced" multipliers (all 1), a variant the release offers, instead of the zero-shot confidence
    monkeypatch.setattr(clap, "zero_shot_confidence",
                        lambda x, y, text, logit_scale, c, scale=None: torch.ones(c, dtype=x.dtype))
    failing = failing_keys("clap", dtype)
    assert {"multipliers", "prototypes", "adaptive_prototypes"} <= failing
    assert not any(key.startswith("zslp_") for key in failing)  # ZS-LP has no multipliers
