"""The feature cache: reuse, resume after a kill, keys that cannot go stale, bad images, regimes."""

from __future__ import annotations

import pytest
import torch
from conftest import CountingBackbone

from taskres.api import FitConfig, build_context, training_source
from taskres.datasets import load_dataset, make_fewshot_split
from taskres.features import CachedViews, FeatureCache, OnlineAugmented, View, entry_key
from taskres.methods.taskres import TaskRes, TaskResParams
from taskres.transforms import ImageError


def test_second_request_is_served_from_disk(tiny_backbone, class_folder, tmp_path):
    task = load_dataset(str(class_folder))
    cache = FeatureCache(tmp_path / "c", shard_size=8)
    b = CountingBackbone(tiny_backbone)
    first = cache.features(b, task.test, progress=False)
    assert b.count == len(task.test)
    again = FeatureCache(tmp_path / "c", shard_size=8).features(b, task.test, progress=False)
    assert b.count == len(task.test)
    assert torch.equal(first, again)
    uncached = FeatureCache(None).features(tiny_backbone, task.test, progress=False)
    torch.testing.assert_close(first, uncached)


def test_killed_extraction_resumes_without_redoing_finished_shards(tiny_backbone, class_folder, tmp_path):
    task = load_dataset(str(class_folder))
    samples = task.train  # 24 images: 3 shards of 8
    cache = FeatureCache(tmp_path / "c", shard_size=8)
    killed = CountingBackbone(tiny_backbone, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        cache.features(killed, samples, batch_size=8, progress=False)
    key = entry_key(tiny_backbone, [s.path for s in samples], View())
    entry = cache.entry_dir(key)
    # the finished shard and its check record; no partial file, no index
    assert sorted(p.name for p in entry.iterdir()) == ["shard-00000.check.json", "shard-00000.npy"]
    resumed = CountingBackbone(tiny_backbone)
    feats = cache.features(resumed, samples, batch_size=8, progress=False)
    assert resumed.count == 16
    assert (entry / "index.json").is_file()
    torch.testing.assert_close(feats, FeatureCache(None).features(tiny_backbone, samples, progress=False))


def test_cache_key_changes_with_weights_view_and_images(tiny_backbone, class_folder):
    from taskres.backbone import BackboneConfig, load_backbone

    task = load_dataset(str(class_folder))
    paths = [s.path for s in task.train]
    k = entry_key(tiny_backbone, paths, View())
    assert k == entry_key(tiny_backbone, list(paths), View())
    assert k != entry_key(tiny_backbone, paths[:-1], View())
    assert k != entry_key(tiny_backbone, paths, View("aug", 0, 1))
    assert entry_key(tiny_backbone, paths, View("aug", 0, 1)) != entry_key(tiny_backbone, paths, View("aug", 1, 1))
    other = load_backbone(BackboneConfig(tiny_backbone.config.name, "none"))
    with torch.no_grad():
        other.model.logit_scale.add_(1.0)  # other weights, same architecture and name
    other.identity["fingerprint"] = __import__("taskres.backbone", fromlist=["x"]).weights_fingerprint(other.model)
    assert entry_key(other, paths, View()) != k


def test_augmented_views_are_deterministic_and_independent_of_workers(tiny_backbone, class_folder):
    task = load_dataset(str(class_folder))
    samples = task.train[:6]
    a = FeatureCache(None).features(tiny_backbone, samples, View("aug", 0, 5), batch_size=4, num_workers=0,
                                    progress=False)
    b = FeatureCache(None).features(tiny_backbone, samples[::-1], View("aug", 0, 5), batch_size=3,
                                    num_workers=2, progress=False)
    torch.testing.assert_close(a, b.flip(0), rtol=1e-5, atol=1e-5)
    c = FeatureCache(None).features(tiny_backbone, samples, View("aug", 1, 5), progress=False)
    assert not torch.allclose(a, c)


def test_corrupt_image_names_the_file_or_is_skipped_with_a_count(tiny_backbone, class_folder, tmp_path, caplog):
    task = load_dataset(str(class_folder))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    samples = task.test[:3] + [type(task.test[0])(str(bad), 0)]
    with pytest.raises(ImageError, match=r"unreadable or corrupt image: .*broken.png"):
        FeatureCache(tmp_path / "c").features(tiny_backbone, samples, progress=False)
    with caplog.at_level("WARNING", logger="taskres"):
        feats = FeatureCache(tmp_path / "c").features(tiny_backbone, samples, skip_bad=True, progress=False)
    assert torch.isnan(feats[3]).all() and not torch.isnan(feats[:3]).any()
    assert "skipped 1 unreadable image(s)" in caplog.text


def test_cached_single_view_equals_online_without_augmentation_step_for_step(tiny_backbone, class_folder, tmp_path):
    task = load_dataset(str(class_folder))
    split = make_fewshot_split(task, 4, seed=1)
    cfg = FitConfig(augment=False, seed=1, progress=False)
    cached = training_source(cfg, tiny_backbone, FeatureCache(tmp_path / "c"), split)
    online = training_source(FitConfig(augment=False, seed=1, regime="online", progress=False), tiny_backbone,
                             FeatureCache(tmp_path / "c"), split)
    assert isinstance(cached, CachedViews) and isinstance(online, OnlineAugmented)
    runs = {}
    for name, source in (("cached", cached), ("online", online)):
        steps = []
        clf = TaskRes(TaskResParams(epochs=5, lr=1e-2, batch_size=6)).fit(
            build_context(task, tiny_backbone, source, shots=4, seed=1, progress=False),
            on_step=lambda e, s, lr, loss: steps.append((e, s, loss)))
        runs[name] = (steps, clf.residual)
    (cs, cres), (os_, ores) = runs["cached"], runs["online"]
    assert [s[:2] for s in cs] == [s[:2] for s in os_] and len(cs) == 5 * 2  # 16 images, batch 6: last short batch dropped
    torch.testing.assert_close(torch.tensor([s[2] for s in cs]), torch.tensor([s[2] for s in os_]),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cres, ores, rtol=1e-4, atol=1e-6)


def test_online_augmentation_differs_across_epochs(tiny_backbone, class_folder):
    task = load_dataset(str(class_folder))
    src = OnlineAugmented(tiny_backbone, task.train[:4], seed=1)
    idx = torch.arange(4)
    assert not torch.allclose(src.features(idx, 0), src.features(idx, 1))
    torch.testing.assert_close(src.features(idx, 1), src.features(idx, 1))


def test_cached_views_pick_one_view_per_image_per_epoch():
    views = torch.arange(3 * 5, dtype=torch.float32).reshape(3, 5, 1).expand(3, 5, 2).contiguous()
    src = CachedViews(views, torch.zeros(5, dtype=torch.long), seed=0)
    seen = set()
    for epoch in range(20):
        f = src.features(torch.arange(5), epoch)
        rows = (f[:, 0] // 5).long()
        assert torch.equal(f[:, 0] % 5, torch.arange(5, dtype=torch.float32))  # image i gets a view of image i
        seen.update(rows.tolist())
    assert seen == {0, 1, 2}
