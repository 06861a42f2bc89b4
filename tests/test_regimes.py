"""Every method in every regime (issue 19 fix 4, issue 21 item 5): the same classifier from in-memory and
memory-mapped views, or a one-line refusal where a regime cannot be honoured (never a silent other fit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from taskres.api import FitConfig, fit
from taskres.backbone import BackboneConfig
from taskres.errors import OptionError
from taskres.features import CachedFeatures, CachedViews, MappedViews
from taskres.methods import METHODS, FitContext, TrainingError, check_regime, get_method
from taskres.methods import common
from taskres.protocols import BackboneSpec, SweepConfig, check_sweep

from conftest import TINY_MODEL

V, N, D, C = 3, 12, 8, 3  # views, images, feature width, classes
ONE_PASS = ["linear_probe", "tip_adapter", "tip_adapter_f", "gda", "lpp", "clap"]
SHORT = {"tip_adapter_f": {"epochs": 2, "batch_size": 5}, "clap": {"epochs": 3, "batch_size": 5},
         "lpp": {"epochs": 20}}


def views_and_labels(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N) % C
    centres = torch.randn(C, D, generator=g)
    return centres[labels] + 0.7 * torch.randn(V, N, D, generator=g), labels


def mapped_views(views: torch.Tensor, labels: torch.Tensor, folder, seed: int = 1) -> MappedViews:
    """The same views written as memory-mapped shards (two shards per view: gathers cross shard borders)."""
    entries = []
    for v in range(len(views)):
        files = []
        for s, part in enumerate((views[v, :5], views[v, 5:])):
            path = folder / f"view{v}-shard{s}.npy"
            np.save(path, part.numpy())
            files.append(path)
        entries.append(CachedFeatures(files))
    return MappedViews(entries, labels, seed=seed)


def context(train, seed: int = 1) -> FitContext:
    g = torch.Generator().manual_seed(5)
    val_labels = torch.arange(6) % C
    return FitContext(task_name="toy", classnames=["a", "b", "c"], templates=["{}"],
                      text_classifier=torch.randn(C, D, generator=g), logit_scale=float(np.log(100.0)), train=train,
                      shots=4, seed=seed, backbone_identity={"model": "toy"},
                      val_features=torch.randn(6, D, generator=g), val_labels=val_labels, progress=False)


def outputs(method: str, train, params=None) -> torch.Tensor:
    torch.manual_seed(0)
    clf = get_method(method, {**SHORT.get(method, {}), **(params or {})}).fit(context(train))
    probe = torch.randn(7, D, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        return clf(probe).double()


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(common, "ROW_CHUNK", 5)  # streaming in several chunks, crossing views and shards


@pytest.mark.parametrize("method", ONE_PASS)
def test_memory_mapped_views_give_the_in_memory_classifier(method, tmp_path, small_chunks):
    views, labels = views_and_labels()
    ram = outputs(method, CachedViews(views, labels, seed=1))
    mapped = outputs(method, mapped_views(views, labels, tmp_path))
    torch.testing.assert_close(mapped, ram, rtol=1e-6, atol=1e-6)


def test_tip_adapter_keys_are_the_mean_of_every_view_when_mapped(tmp_path, small_chunks):
    """Before the fix a mapped source gave Tip-Adapter the keys of one view instead of the mean of V."""
    views, labels = views_and_labels()
    clf = get_method("tip_adapter").fit(context(mapped_views(views, labels, tmp_path)))
    torch.testing.assert_close(clf.keys.double(), F.normalize(views.double().mean(0), dim=-1), rtol=1e-6, atol=1e-6)


def plain_gda(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GDA's head from the whole matrix at once, in float64 (the definition the streamed moments must give)."""
    x = F.normalize(x.double(), dim=-1)
    mus = torch.stack([x[y == c].mean(0) for c in range(C)])
    centred = x - mus[y]
    n, d = centred.shape
    cov = centred.t() @ centred / (n - 1)
    precision = d * torch.linalg.pinv((n - 1) * cov + torch.trace(cov) * torch.eye(d, dtype=x.dtype))
    weight = mus @ precision
    return weight, np.log(1.0 / C) - 0.5 * (weight * mus).sum(1)


@pytest.mark.parametrize("views_kind", ["all", "mean", "one"])
def test_gda_streams_every_view_from_mapped_shards(views_kind, tmp_path, small_chunks):
    """GDA fits on V x N samples when mapped (before the fix: N samples of one view)."""
    views, labels = views_and_labels()
    source = mapped_views(views, labels, tmp_path)
    clf = get_method("gda", {"alpha": 1.0, "train_views": views_kind}).fit(context(source))
    x, y = {"all": (views.reshape(V * N, D), labels.repeat(V)), "mean": (views.double().mean(0), labels),
            "one": (source.features(torch.arange(N), 0), labels)}[views_kind]
    weight, bias = plain_gda(x, y)
    ctx = context(source)
    text = F.normalize(ctx.text_classifier.double(), dim=-1)
    expected_w = 100.0 * text + weight
    torch.testing.assert_close(clf.weight.double(), expected_w, rtol=1e-5, atol=1e-5 * float(expected_w.abs().max()))
    torch.testing.assert_close(clf.bias.double(), bias, rtol=1e-5, atol=1e-5 * float(bias.abs().max()))


def test_clap_multipliers_use_every_view_when_mapped(tmp_path, small_chunks):
    from taskres.methods.clap import zero_shot_confidence

    views, labels = views_and_labels()
    clf = get_method("clap", {"epochs": 0}).fit(context(mapped_views(views, labels, tmp_path)))
    ctx = context(None)
    expected = zero_shot_confidence(views.reshape(V * N, D), labels.repeat(V), ctx.text_classifier, ctx.logit_scale, C)
    got = torch.tensor(clf.meta.extra["multipliers_mean_min_max"]["initial"])
    torch.testing.assert_close(got, torch.tensor([expected.mean(), expected.min(), expected.max()]),
                               rtol=1e-5, atol=1e-6)


def test_every_view_in_memory_at_once_is_refused_when_mapped(tmp_path):
    views, labels = views_and_labels()
    with pytest.raises(TrainingError, match="train_views=all with --memory-map") as err:
        get_method("lpp", {"train_views": "all", "epochs": 1}).fit(context(mapped_views(views, labels, tmp_path)))
    assert "\n" not in str(err.value)
    cfg = FitConfig(method="lpp", dataset=str(tmp_path / "no-such-dataset"), memory_map=True,
                    method_params={"train_views": "all"}, progress=False)
    with pytest.raises(ValueError, match="train_views=all with --memory-map: lpp"):
        fit(cfg)  # refused before any image is encoded
    check_regime(get_method("gda", {"train_views": "all"}), "cached", memory_map=True)  # GDA streams them


@pytest.mark.parametrize("method", ONE_PASS)
def test_online_regime_is_refused_in_one_line_before_any_work(method, tmp_path):
    cfg = FitConfig(method=method, dataset=str(tmp_path / "no-such-dataset"), regime="online",
                    backbone=BackboneConfig(TINY_MODEL, "none"), progress=False)
    with pytest.raises(ValueError, match=f"--regime online: {method} ") as err:
        fit(cfg)  # the regime is refused before the (missing) dataset is looked at
    assert "\n" not in str(err.value) and "--regime cached" in str(err.value)
    with pytest.raises(ValueError, match="--regime online"):
        check_sweep(SweepConfig(methods=[method], regime="online", datasets=["mini-shapes"], shots=[1], seeds=[1],
                                backbones=[BackboneSpec(TINY_MODEL, "none")]))


def test_methods_that_take_steps_on_batches_keep_the_online_regime():
    for name in set(METHODS) - set(ONE_PASS) - {"auto"}:
        check_regime(get_method(name), "online")  # no refusal: these train batch by batch, or use no images
    with pytest.raises(ValueError, match="--regime online: auto"):  # its candidates are the one-pass methods
        check_regime(get_method("auto"), "online")


def test_a_one_pass_method_given_an_online_source_by_hand_refuses():
    class Online:  # what the online regime hands a method: features per batch, no cached views
        labels, num_samples, dim = torch.arange(N) % C, N, D

        def features(self, idx, epoch):
            return torch.randn(len(idx), D)

    with pytest.raises(TrainingError, match="--regime online"):
        get_method("gda").fit(context(Online()))


def test_online_with_memory_map_is_refused_in_one_line(tmp_path):
    cfg = FitConfig(method="taskres", dataset=str(tmp_path / "no-such-dataset"), regime="online", memory_map=True,
                    progress=False)
    with pytest.raises(OptionError, match="FitConfig.memory_map with regime online") as err:
        fit(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["gda", "tip_adapter"])
def test_fit_with_memory_map_equals_fit_in_memory_end_to_end(method, class_folder, tmp_path):
    """Through the feature cache's own shards (api.fit): the same classifier, the same top-1."""
    runs = {}
    for name, mapped in (("ram", False), ("mapped", True)):
        cfg = FitConfig(method=method, dataset=str(class_folder), backbone=BackboneConfig(TINY_MODEL, "none"),
                        shots=2, seed=1, views=3, memory_map=mapped, cache_dir=str(tmp_path / "cache"),
                        progress=False)
        runs[name] = fit(cfg)
    ram, mapped = runs["ram"].classifier, runs["mapped"].classifier
    for (key, a), b in zip(ram.tensors().items(), mapped.tensors().values()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6, msg=key)
    assert runs["ram"].metrics["top1"] == runs["mapped"].metrics["top1"]


BATCH_METHODS = {"taskres": {"epochs": 3, "fused": False}, "clip_adapter": {"epochs": 3},
                 "coop": {"epochs": 2, "n_ctx": 2},
                 "taskres_enhanced": {"epochs": 2, "proj_epochs": 2, "proj_lrs": [1e-3], "fused": False}}


@pytest.mark.parametrize("method", sorted(BATCH_METHODS))
def test_methods_trained_on_batches_agree_in_memory_mapped_and_online(method, class_folder, tmp_path):
    """Without augmentation (one view) the three regimes show the same features in the same batches: the same
    classifier to round-off (online encodes batch by batch, the cache 128 images at a time)."""
    runs = {}
    for name, regime, mapped in (("ram", "cached", False), ("mapped", "cached", True), ("online", "online", False)):
        cfg = FitConfig(method=method, dataset=str(class_folder), backbone=BackboneConfig(TINY_MODEL, "none"),
                        shots=2, seed=1, views=1, augment=False, regime=regime, memory_map=mapped,
                        method_params=BATCH_METHODS[method], cache_dir=str(tmp_path / "cache"), progress=False)
        runs[name] = fit(cfg).classifier
    for name in ("mapped", "online"):
        for (key, a), b in zip(runs["ram"].tensors().items(), runs[name].tensors().values()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"{name} {key}")
