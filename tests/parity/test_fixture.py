"""The parity fixture: the tiny CLIP is the same model in OpenAI's code and in taskres, and goldens round-trip."""

from __future__ import annotations

import math

import pytest
import torch

clip = pytest.importorskip("clip")  # clip-anytorch, the dev extra

from parity import fixture  # noqa: E402


def test_tiny_clip_features_equal_taskres_backbone():
    model = fixture.tiny_clip(torch.float32)
    backbone = fixture.tiny_backbone()
    prompts = [f"a photo of a {name}." for name in fixture.CLASSNAMES]
    with torch.no_grad():
        official_text = model.encode_text(clip.tokenize(prompts))
        pics, _ = fixture.images("val")
        pixels = torch.stack([clip.clip._transform(fixture.IMAGE_SIZE)(im) for im in pics])
        official_image = model.encode_image(pixels)
    ours_pixels = torch.stack([backbone.preprocess(im) for im in pics])
    assert torch.allclose(ours_pixels, pixels, atol=1e-6)
    assert torch.allclose(backbone.encode_texts(prompts), official_text, atol=1e-5)
    assert torch.allclose(backbone.encode_images(ours_pixels), official_image, atol=1e-5)
    assert backbone.logit_scale == pytest.approx(float(model.logit_scale))
    # distinct prompts give distinct features (a degenerate model would make every comparison vacuous)
    assert (official_text[:, None] - official_text[None]).abs().amax(-1).fill_diagonal_(1).min() > 1e-3


def test_exact_layernorm_gives_float64_encoders():
    from clip.model import LayerNorm

    model = fixture.tiny_clip(torch.float64)
    tokens = clip.tokenize([f"a photo of a {name}." for name in fixture.CLASSNAMES])
    with torch.no_grad():
        with fixture.exact_layernorm(LayerNorm):
            exact = model.encode_text(tokens)
        with pytest.raises(RuntimeError):  # OpenAI's LayerNorm casts to fp32: a float64 model cannot run
            model.encode_text(tokens)
        rounded = fixture.tiny_clip(torch.float32).encode_text(tokens).double()
    again = fixture.tiny_clip(torch.float64)
    with torch.no_grad(), fixture.exact_layernorm(LayerNorm):
        assert torch.equal(again.encode_text(tokens), exact)  # deterministic
    assert 0 < float((exact - rounded).abs().max()) < 1e-4  # fp32 round-off, no more


def test_features_are_fixed_and_shaped():
    a, b = fixture.features(torch.float64), fixture.features(torch.float32)
    views, n, d = a["train_views"].shape
    assert (views, n, d) == (fixture.VIEWS, fixture.SHOTS * len(fixture.CLASSNAMES), fixture.EMBED_DIM)
    assert torch.equal(a["train_views"].float(), b["train_views"]) and b["train_views"].dtype == torch.float32
    assert torch.equal(fixture.features()["test"], a["test"])
    assert a["train_labels"].bincount().tolist() == [fixture.SHOTS] * len(fixture.CLASSNAMES)
    assert any("_" in name for name in fixture.CLASSNAMES) and any("_" not in n for n in fixture.CLASSNAMES)


def _meta():
    return {"official": {"repo": "o/r", "commit": "0" * 40, "files": ["f.py"]}, "what": "w", "patches": [],
            "outputs": ["y", "pred"],
            "tolerance": {"float64": {"atol": 1e-12, "rtol": 0}, "float32": {"atol": 1e-6, "rtol": 1e-6}}}


def test_golden_round_trip_and_compare(tmp_path, monkeypatch):
    monkeypatch.setattr(fixture, "GOLDEN_DIR", tmp_path)
    tensors = {"x": torch.arange(3.0, dtype=torch.float64), "pred": torch.tensor([0, 2]),
               "float64/y": torch.ones(2, dtype=torch.float64), "float32/y": torch.full((2,), 1.5)}
    fixture.save_golden("demo", tensors, _meta())
    golden, meta = fixture.load_golden("demo")
    assert fixture.golden_names() == ["demo"] and meta["module"] == "demo"
    assert all(torch.equal(golden[k], v) for k, v in tensors.items())
    assert fixture.for_dtype(golden, torch.float32)["y"].tolist() == [1.5, 1.5]
    good = fixture.compare({"y": torch.ones(2, dtype=torch.float64), "pred": torch.tensor([0, 2])}, golden, meta,
                           torch.float64)
    assert all(row["ok"] for row in good)
    off = {"y": torch.ones(2, dtype=torch.float64) + 1e-9, "pred": torch.tensor([0, 1])}
    bad = fixture.compare(off, golden, meta, torch.float64)
    assert [row["ok"] for row in bad] == [False, False] and math.isinf(bad[1]["ratio"])
    assert not fixture.compare({"y": torch.ones(3)}, golden, meta, torch.float64)[0]["ok"]


def test_save_golden_refuses_an_output_missing_for_a_dtype(tmp_path, monkeypatch):
    monkeypatch.setattr(fixture, "GOLDEN_DIR", tmp_path)
    with pytest.raises(ValueError, match="float32"):
        fixture.save_golden("demo", {"float64/y": torch.ones(1, dtype=torch.float64), "pred": torch.ones(1)}, _meta())


def test_feature_pool_draws_around_the_same_class_directions():
    pool, labels = fixture.feature_pool(8, 0.5, seed=3)
    again, _ = fixture.feature_pool(8, 0.5, seed=3)
    assert torch.equal(pool, again) and pool.shape == (8 * len(fixture.CLASSNAMES), fixture.EMBED_DIM)
    cos = torch.nn.functional.normalize(pool, dim=-1) @ fixture.class_centres().t()
    assert (cos.argmax(1) == labels).all()  # little noise: each point nearest its own class direction
    feats = fixture.features()
    own = torch.nn.functional.normalize(feats["test"], dim=-1) @ fixture.class_centres().t()
    assert (own.argmax(1) == feats["test_labels"]).float().mean() > 0.9  # features() shares the directions
