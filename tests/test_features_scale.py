"""The cache at scale: memory-mapped shards, fp16 storage, shard-size changes, training from mapped views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CountingBackbone

from taskres.datasets import Sample, load_dataset
from taskres.features import CachedFeatures, CachedViews, FeatureCache, MappedViews, View
from taskres.methods.base import FitContext
from taskres.methods.taskres import TaskRes, TaskResParams


@pytest.fixture(scope="module")
def samples(class_folder):
    task = load_dataset(str(class_folder))
    return task.train + task.test  # 40 images


def test_memory_mapped_rows_equal_eager_loading(tiny_backbone, samples, tmp_path):
    cache = FeatureCache(tmp_path / "c", shard_size=7)
    eager = cache.features(tiny_backbone, samples, progress=False)
    mapped = cache.mapped(tiny_backbone, samples, progress=False)
    assert isinstance(mapped, CachedFeatures) and len(mapped.files) == 6  # 40 rows in shards of 7
    assert all(isinstance(a, np.memmap) for a in mapped._shards)  # nothing read into RAM up front
    assert mapped.shape == tuple(eager.shape) and mapped.dtype == np.float32
    idx = torch.tensor([39, 0, 6, 7, 7, 13, 14, 20, 3, -1])  # across shard edges, unsorted, repeated, negative
    assert torch.equal(mapped.rows(idx), eager[idx])
    assert torch.equal(mapped[5:23:3], eager[5:23:3])
    assert torch.equal(mapped[8], eager[8])
    assert torch.equal(mapped.to_tensor(), eager)
    torch.testing.assert_close(eager, FeatureCache(None).features(tiny_backbone, samples, progress=False))
    with pytest.raises(IndexError):
        mapped.rows([40])


def test_fp16_storage_is_a_separate_entry_holding_rounded_rows(tiny_backbone, samples, tmp_path):
    fp32 = FeatureCache(tmp_path / "c", shard_size=16).features(tiny_backbone, samples, progress=False)
    half = FeatureCache(tmp_path / "c", shard_size=16, store="fp16")
    counting = CountingBackbone(tiny_backbone)
    first = half.features(counting, samples, progress=False)
    assert counting.count == len(samples)  # not served from the fp32 entry
    assert torch.equal(first, fp32.half().float())
    again = half.features(counting, samples, progress=False)
    assert counting.count == len(samples) and torch.equal(again, first)
    entry = half.entry(tiny_backbone, samples)
    mapped = half.open(entry)
    assert mapped.dtype == np.float16 and torch.equal(mapped.to_tensor(), first)
    size16 = sum(f.stat().st_size for f in mapped.files)
    size32 = sum(f.stat().st_size for f in FeatureCache(tmp_path / "c").open(
        FeatureCache(tmp_path / "c", shard_size=16).entry(tiny_backbone, samples)).files)
    assert size16 < 0.6 * size32


def test_a_complete_entry_is_read_whatever_the_shard_size(tiny_backbone, samples, tmp_path):
    FeatureCache(tmp_path / "c", shard_size=7).features(tiny_backbone, samples, progress=False)
    counting = CountingBackbone(tiny_backbone)
    FeatureCache(tmp_path / "c", shard_size=64).features(counting, samples, progress=False)
    assert counting.count == 0


def test_resuming_with_another_shard_size_never_reuses_foreign_rows(tiny_backbone, class_folder, tmp_path):
    # 12 images in shards of 8: shard 1 is rows 8..12 (4 rows). In shards of 4, shard 1 is rows 4..8, also
    # 4 rows: a cache that named both "shard 1" would hand back the wrong images.
    samples = load_dataset(str(class_folder)).test[:12]
    truth = FeatureCache(None).features(tiny_backbone, samples, progress=False)
    first = FeatureCache(tmp_path / "c", shard_size=8)
    first.features(tiny_backbone, samples, progress=False)
    entry = first.entry(tiny_backbone, samples)
    entry.index_path.unlink()  # as if killed before the index was written
    counting = CountingBackbone(tiny_backbone)
    resumed = FeatureCache(tmp_path / "c", shard_size=4).features(counting, samples, progress=False)
    assert counting.count == 12  # no file of the other layout is taken for one of this layout
    torch.testing.assert_close(resumed, truth)
    assert not torch.equal(truth[4:8], truth[8:12])  # the check above could tell the rows apart


def test_finish_names_a_missing_shard(tiny_backbone, samples, tmp_path):
    cache = FeatureCache(tmp_path / "c", shard_size=16)
    cache.features(tiny_backbone, samples, progress=False)
    entry = cache.entry(tiny_backbone, samples)
    entry.shard_path(1).unlink()
    assert cache.open(entry) is None and cache.missing_shards(entry) == [1]
    with pytest.raises(FileNotFoundError, match=r"shard-00001\.npy"):
        cache.finish(entry, tiny_backbone)


def test_mapped_views_deliver_what_cached_views_deliver(tiny_backbone, samples, tmp_path):
    cache = FeatureCache(tmp_path / "c", shard_size=9)
    views = [View("aug", v, 3) for v in range(3)]
    eager = torch.stack([cache.features(tiny_backbone, samples, v, progress=False) for v in views])
    labels = torch.tensor([s.label for s in samples])
    mapped = MappedViews([cache.mapped(tiny_backbone, samples, v, progress=False) for v in views], labels, seed=5)
    cached = CachedViews(eager, labels, seed=5)
    assert not hasattr(mapped, "views")  # the trainer must not try to normalise it whole
    assert (mapped.num_samples, mapped.dim, mapped.num_views) == (cached.num_samples, cached.dim, 3)
    idx = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))[:17]
    for epoch in (0, 1, 7):
        assert torch.equal(mapped.features(idx, epoch), cached.features(idx, epoch))
    assert torch.equal(mapped.labels, cached.labels)


def test_mapped_views_drop_unreadable_rows(tiny_backbone, samples, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with_bad = samples[:5] + [Sample(str(bad), 3)] + samples[5:10]
    cache = FeatureCache(tmp_path / "c", shard_size=4)
    feats = cache.mapped(tiny_backbone, with_bad, skip_bad=True, progress=False)
    assert feats.bad_rows.tolist() == [5]
    labels = torch.tensor([s.label for s in with_bad])
    src = MappedViews([feats], labels)
    clean = cache.features(tiny_backbone, samples[:10], progress=False)
    assert src.num_samples == 10 and torch.equal(src.labels, labels[torch.arange(11) != 5])
    # equal up to float rounding: the encoder saw different batches (one held the broken image)
    torch.testing.assert_close(src.features(torch.arange(10), 0), clean, rtol=1e-5, atol=1e-6)


def test_taskres_trains_the_same_from_mapped_views(tiny_backbone, samples, tmp_path):
    cache = FeatureCache(tmp_path / "c", shard_size=6)
    views = [View("aug", v, 1) for v in range(2)]
    labels = torch.tensor([s.label for s in samples])
    eager = torch.stack([cache.features(tiny_backbone, samples, v, progress=False) for v in views])
    mapped = MappedViews([cache.mapped(tiny_backbone, samples, v, progress=False) for v in views], labels, seed=1)
    base = torch.randn(4, tiny_backbone.embed_dim, generator=torch.Generator().manual_seed(0))
    fits = []
    for source in (CachedViews(eager, labels, seed=1), mapped):
        ctx = FitContext(task_name="t", classnames=list("abcd"), templates=["{}"], text_classifier=base,
                         logit_scale=float(np.log(100.0)), train=source, shots=10, seed=1,
                         backbone_identity=tiny_backbone.identity, progress=False)
        fits.append(TaskRes(TaskResParams(epochs=4, lr=1e-2, batch_size=8)).fit(ctx))
    assert fits[0].meta.extra["loss_history"][0] > fits[0].meta.extra["loss_history"][-1]  # it did learn
    torch.testing.assert_close(fits[0].residual, fits[1].residual, rtol=1e-5, atol=1e-6)
