"""What taskres promises about its feature cache: a damaged shard (changed bytes, truncated, zeroed, pickled)
or index is named in one warning, rebuilt, and the fit's result is the undamaged one's; rows turned into NaN/inf
are caught even when shards are not hashed (--verify-cache none); an image with NaN/inf features is named, or
skipped and counted with --skip-bad-images; a verdict "unreadable" never outlives its cause (a pixel limit
lifted, a file fixed): the image is tried again; two processes filling one cache at once both succeed."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
import torch
from conftest import CountingBackbone

from taskres.api import FitConfig, fit
from taskres.cli import main
from taskres.datasets import Sample, load_dataset, make_fewshot_split
from taskres.features import FeatureCache, View
from taskres.transforms import ImageError, load_image

SHARD = 4  # every entry spans several shards
SHOTS, SEED, VIEWS = 3, 1, 2


def fit_config(class_folder, root, **kw) -> FitConfig:
    return FitConfig(dataset=str(class_folder), shots=SHOTS, seed=SEED, views=VIEWS, cache_dir=str(root),
                     progress=False, method_params={"epochs": 3}, **kw)


def run_fit(class_folder, root, backbone, verify="full", **kw):
    cache = FeatureCache(root, shard_size=SHARD, verify=verify)
    result = fit(fit_config(class_folder, root, **kw), backbone=backbone, cache=cache)
    return result.metrics["top1"]["test"], {k: v.clone() for k, v in result.classifier.tensors().items()}


@pytest.fixture(scope="module")
def undamaged(class_folder, tiny_backbone, tmp_path_factory):
    """One fit on a fresh cache: the cache folder, the entries it holds, and the result to match."""
    root = tmp_path_factory.mktemp("faults") / "cache"
    top1, tensors = run_fit(class_folder, root, tiny_backbone)
    task = load_dataset(str(class_folder))
    split = make_fewshot_split(task, SHOTS, SEED)
    cache = FeatureCache(root, shard_size=SHARD)
    entries = {"test": cache.entry(tiny_backbone, task.test, View()),
               "train": cache.entry(tiny_backbone, split.train, View("aug", 0, SEED)),
               "val": cache.entry(tiny_backbone, split.val, View())}
    assert all(e.num_shards >= 2 for e in entries.values())
    return root, entries, top1, tensors


def damageable_copy(undamaged, tmp_path) -> pathlib.Path:
    """A copy of the undamaged cache folder, for a test to damage (the module's fixture stays intact)."""
    root = tmp_path / "cache"
    shutil.copytree(undamaged[0], root)
    return root


def opened_test_entry(root, backbone, entries, verify="full"):
    """(cache, its entry of the test split) in the cache folder ``root``."""
    cache = FeatureCache(root, shard_size=SHARD, verify=verify)
    return cache, cache.entry(backbone, entries["test"].paths)


def undamaged_test_rows(undamaged) -> torch.Tensor:
    root0, entries, *_ = undamaged
    return FeatureCache(root0, shard_size=SHARD).open(entries["test"]).to_tensor()


def data_offset(path: pathlib.Path) -> int:
    with open(path, "rb") as fh:
        np.lib.format.read_magic(fh)
        np.lib.format.read_array_header_1_0(fh)
        return fh.tell()


class Evil:
    """Unpickling this creates a marker file: the cache must never unpickle anything."""

    marker = None

    def __reduce__(self):
        return pathlib.Path.touch, (Evil.marker,)


def change_bytes(path):  # 16 bytes of the data inverted
    with open(path, "r+b") as fh:
        fh.seek(data_offset(path) + 40)
        b = fh.read(16)
        fh.seek(data_offset(path) + 40)
        fh.write(bytes(x ^ 0xFF for x in b))


def zero_all(path):
    path.write_bytes(bytes(path.stat().st_size))


def random_256(path):
    with open(path, "r+b") as fh:
        fh.seek(data_offset(path) + 8)
        fh.write(np.random.default_rng(0).bytes(256))


def cut_half(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def zero_header(path):
    data = path.read_bytes()
    path.write_bytes(bytes(data_offset(path)) + data[data_offset(path):])


def pickled(path):
    arr = np.empty(SHARD, dtype=object)
    arr[:] = [Evil() for _ in range(SHARD)]
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=True)


DAMAGE = {  # name: (entry, shard, how)
    "test shard bytes changed": ("test", 1, change_bytes),
    "test shard zeroed": ("test", 0, zero_all),
    "256 random bytes in a train shard": ("train", 1, random_256),
    "train shard cut to half": ("train", 2, cut_half),
    "val shard header zeroed": ("val", 1, zero_header),
    "test shard replaced by a pickled object array": ("test", 2, pickled),
}


def cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "feature cache" in r.getMessage()]


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_shard_is_named_rebuilt_and_the_fit_is_unchanged(damage, undamaged, class_folder, tiny_backbone,
                                                                    tmp_path, caplog):
    _, entries, top1, tensors = undamaged
    which, shard, how = DAMAGE[damage]
    root = damageable_copy(undamaged, tmp_path)
    entry = FeatureCache(root, shard_size=SHARD).entry(tiny_backbone, entries[which].paths, entries[which].view)
    path = entry.shard_path(shard)
    Evil.marker = tmp_path / "unpickled"
    how(path)
    with caplog.at_level("WARNING", logger="taskres"):
        got_top1, got = run_fit(class_folder, root, tiny_backbone)
    lines = cache_warnings(caplog)
    assert len(lines) == 1 and str(path) in lines[0] and "\n" not in lines[0], lines
    assert not Evil.marker.exists()
    original = entries[which].shard_path(shard)
    assert path.read_bytes() == original.read_bytes()  # rebuilt: the same rows, bit for bit
    assert got_top1 == top1 and tensors.keys() == got.keys()
    assert all(torch.equal(tensors[k], got[k]) for k in tensors)
    caplog.clear()
    with caplog.at_level("WARNING", logger="taskres"):
        run_fit(class_folder, root, tiny_backbone)
    assert cache_warnings(caplog) == []  # healed for good


def test_a_damaged_index_is_rebuilt_without_encoding_again(undamaged, class_folder, tiny_backbone, tmp_path, caplog):
    root0, entries, top1, tensors = undamaged
    root = damageable_copy(undamaged, tmp_path)
    index = root / entries["test"].index_path.relative_to(root0)
    index.write_text(index.read_text()[:100])
    counting = CountingBackbone(tiny_backbone)
    with caplog.at_level("WARNING", logger="taskres"):
        got_top1, got = run_fit(class_folder, root, counting)
    lines = cache_warnings(caplog)
    assert len(lines) == 1 and str(index) in lines[0] and "rebuilt" in lines[0], lines
    assert counting.count == 0  # every shard checked out against its own record
    assert json.loads(index.read_text()) == json.loads(entries["test"].index_path.read_text())
    assert got_top1 == top1 and all(torch.equal(tensors[k], got[k]) for k in tensors)


def test_an_index_naming_files_outside_the_entry_is_rebuilt(undamaged, tiny_backbone, tmp_path, caplog):
    entries = undamaged[1]
    cache, entry = opened_test_entry(damageable_copy(undamaged, tmp_path), tiny_backbone, entries)
    index = json.loads(entry.index_path.read_text())
    index["shards"][0] = "../../elsewhere.npy"
    entry.index_path.write_text(json.dumps(index))
    with caplog.at_level("WARNING", logger="taskres"):
        feats = cache.features(tiny_backbone, samples_of(entries), progress=False)
    assert len(cache_warnings(caplog)) == 1 and "shard names" in cache_warnings(caplog)[0]
    assert torch.equal(feats, undamaged_test_rows(undamaged))


def samples_of(entries):
    return [Sample(p, 0) for p in entries["test"].paths]


def test_without_verification_changed_bytes_go_unnoticed_but_truncation_is_caught(undamaged, tiny_backbone,
                                                                                  tmp_path, caplog):
    entries = undamaged[1]
    root = damageable_copy(undamaged, tmp_path)
    samples = samples_of(entries)
    unchecked, entry = opened_test_entry(root, tiny_backbone, entries, verify="none")
    truth = undamaged_test_rows(undamaged)
    change_bytes(entry.shard_path(1))
    with caplog.at_level("WARNING", logger="taskres"):
        served = unchecked.features(tiny_backbone, samples, progress=False)
    assert cache_warnings(caplog) == [] and not torch.equal(served, truth)  # documented: the cost of "none"
    cut_half(entry.shard_path(0))
    with caplog.at_level("WARNING", logger="taskres"):
        again = unchecked.features(tiny_backbone, samples, progress=False)
    lines = cache_warnings(caplog)
    assert len(lines) == 1 and str(entry.shard_path(0)) in lines[0] and "truncated" in lines[0]
    assert torch.equal(again[:SHARD], truth[:SHARD])
    caplog.clear()  # the full check, back on, finds the changed bytes
    with caplog.at_level("WARNING", logger="taskres"):
        healed = FeatureCache(root, shard_size=SHARD).features(tiny_backbone, samples, progress=False)
    assert len(cache_warnings(caplog)) == 1 and str(entry.shard_path(1)) in cache_warnings(caplog)[0]
    assert torch.equal(healed, truth)


def test_verify_option_is_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("TASKRES_VERIFY_CACHE", "fast")
    with pytest.raises(ValueError, match="TASKRES_VERIFY_CACHE must be one of full, none, not 'fast'"):
        FeatureCache(tmp_path)
    assert FeatureCache(tmp_path, verify="none").verify == "none"
    monkeypatch.setenv("TASKRES_VERIFY_CACHE", "none")
    assert FeatureCache(tmp_path).verify == "none"
    monkeypatch.delenv("TASKRES_VERIFY_CACHE")
    assert FeatureCache(tmp_path).verify == "full"


# -- non-finite features ---------------------------------------------------------------------------------
def poison(monkeypatch, backbone, image_path, value, column):
    """Make the encoder return ``value`` in ``column`` of one image's features (under the test transform)."""
    target = backbone.preprocess(load_image(image_path))
    encode = backbone.encode_images

    def encode_images(images):
        out = encode(images).clone()
        for j in range(len(images)):
            if torch.equal(images[j], target):
                out[j, column] = value
        return out

    monkeypatch.setattr(backbone, "encode_images", encode_images)


@pytest.mark.parametrize("value, column, what", [(float("nan"), 3, "NaN in 1 of"), (float("inf"), 0, "inf in 1 of")])
def test_non_finite_features_name_the_image_or_are_skipped_and_counted(value, column, what, class_folder,
                                                                       tiny_backbone, tmp_path, monkeypatch, caplog):
    task = load_dataset(str(class_folder))
    victim = task.test[5].path
    poison(monkeypatch, tiny_backbone, victim, value, column)
    with pytest.raises(ImageError) as err:
        run_fit(class_folder, tmp_path / "c", tiny_backbone)
    message = str(err.value)
    assert "\n" not in message and victim in message and "non-finite features" in message and what in message
    assert "FitConfig.skip_bad_images=True" in message  # the library's words; the CLI says --skip-bad-images
    with caplog.at_level("WARNING", logger="taskres"):
        result = fit(fit_config(class_folder, tmp_path / "c", skip_bad_images=True), backbone=tiny_backbone,
                     cache=FeatureCache(tmp_path / "c", shard_size=SHARD))
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == [f"skipped 1 image(s) with non-finite features, e.g. {message.split(' (use')[0]}"]
    assert result.metrics["num_images"]["test"] == len(task.test) - 1
    entry = FeatureCache(tmp_path / "c", shard_size=SHARD).entry(tiny_backbone, task.test)
    recorded = FeatureCache(tmp_path / "c", shard_size=SHARD).open(entry).bad
    assert [(b.row, b.kind) for b in recorded] == [(5, "non-finite")]
    monkeypatch.undo()  # the record stays: a later run without --skip-bad-images still names the image
    with pytest.raises(ImageError, match="non-finite features from the image encoder for .*" + victim.split("/")[-1]):
        run_fit(class_folder, tmp_path / "c", tiny_backbone)


def test_non_finite_features_through_the_command_line(class_folder, tmp_path, monkeypatch, capsys, caplog):
    from taskres.backbone import Backbone

    victim = load_dataset(str(class_folder)).test[2].path
    encode = Backbone.encode_images
    target = {}

    def encode_images(self, images):
        if "x" not in target:
            target["x"] = self.preprocess(load_image(victim))
        out = encode(self, images).clone()
        out[[j for j in range(len(images)) if torch.equal(images[j], target["x"])], 7] = float("nan")
        return out

    monkeypatch.setattr(Backbone, "encode_images", encode_images)
    from conftest import TINY_MODEL

    args = ["fit", "--dataset", str(class_folder), "--backbone", TINY_MODEL, "--pretrained", "none", "--shots", "2",
            "--views", "1", "--set", "epochs=1", "--cache-dir", str(tmp_path / "c"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and victim in err and "NaN in 1 of" in err, err
    assert main([*args, "--skip-bad-images"]) == 0
    captured = capsys.readouterr()
    warned = captured.err + caplog.text
    assert "skipped 1 image(s) with non-finite features" in warned and victim in warned
    assert f"({len(load_dataset(str(class_folder)).test) - 1} images)" in captured.out


def test_a_writer_killed_between_record_and_shard_leaves_a_missing_shard(undamaged, tiny_backbone, tmp_path, caplog):
    entries = undamaged[1]
    cache, entry = opened_test_entry(damageable_copy(undamaged, tmp_path), tiny_backbone, entries)
    entry.index_path.unlink()
    entry.shard_path(2).unlink()  # its record was written, the shard's rename never happened
    with caplog.at_level("WARNING", logger="taskres"):
        assert cache.missing_shards(entry) == [2]
        feats = cache.features(tiny_backbone, samples_of(entries), progress=False)
    assert cache_warnings(caplog) == []  # the normal state of a resumed run: nothing to report
    assert torch.equal(feats, undamaged_test_rows(undamaged))


def test_an_entry_written_before_check_records_is_encoded_again(undamaged, tiny_backbone, tmp_path, caplog):
    entries = undamaged[1]
    cache, entry = opened_test_entry(damageable_copy(undamaged, tmp_path), tiny_backbone, entries)
    index = json.loads(entry.index_path.read_text())
    old = {k: v for k, v in index.items() if k not in ("format", "checks")}
    entry.index_path.write_text(json.dumps({**old, "bad_rows": []}))
    for record in entry.directory.glob("*.check.json"):
        record.unlink()
    counting = CountingBackbone(tiny_backbone)
    with caplog.at_level("WARNING", logger="taskres"):
        feats = cache.features(counting, samples_of(entries), progress=False)
    lines = cache_warnings(caplog)
    assert len(lines) == 1 and "predates content checks" in lines[0] and str(entry.directory) in lines[0]
    assert counting.count == entry.n
    assert torch.equal(feats, undamaged_test_rows(undamaged))


def _fit_in_child(class_folder, root, out, backbone, barrier, log_file):
    import logging

    logging.basicConfig(filename=log_file, level=logging.WARNING, force=True)
    barrier.wait()  # both processes find the cache empty and encode the same shards at the same time
    fit(fit_config(class_folder, root, out=str(out)), backbone=backbone, cache=FeatureCache(root, shard_size=SHARD))


def test_two_fits_at_once_share_one_cache(class_folder, tiny_backbone, tmp_path):
    """Two processes encode the same shards at once: both succeed alike, without a word, and the cache checks out."""
    import multiprocessing

    from taskres.classifier import load_classifier
    from taskres.features.shards import check_shard

    # forkserver: children forked from a fresh server, not from a pytest process whose earlier tests left threads
    # and handlers behind (in the full suite a plain fork saw both children end by SIGTERM)
    ctx = multiprocessing.get_context("forkserver")
    root, barrier = tmp_path / "cache", ctx.Barrier(2)
    procs = [ctx.Process(target=_fit_in_child, args=(class_folder, root, tmp_path / f"run{i}", tiny_backbone, barrier,
                                                     tmp_path / f"log{i}")) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0]
    assert all("feature cache" not in (tmp_path / f"log{i}").read_text() for i in range(2) if (tmp_path / f"log{i}").exists())
    a, b = (load_classifier(tmp_path / f"run{i}").tensors() for i in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    indexes = list(root.rglob("index.json"))
    assert len(indexes) == 4  # train views 1 and 2, val, test
    for index in indexes:
        record = json.loads(index.read_text())
        for name, check in zip(record["shards"], record["checks"]):
            assert check_shard(index.parent / name, check, full=True) is None
    assert not list(root.rglob("*.tmp"))


def test_extract_names_and_re_encodes_a_damaged_shard(class_folder, tmp_path, capsys, caplog):
    from conftest import TINY_MODEL

    root = tmp_path / "cache"
    args = ["extract", "--dataset", str(class_folder), "--backbone", TINY_MODEL, "--pretrained", "none",
            "--shard-size", str(SHARD), "--split", "test", "--cache-dir", str(root), "--quiet"]
    assert main(args) == 0
    shard = sorted(root.rglob("shard-00001.npy"))[0]
    before = shard.read_bytes()
    random_256(shard)
    capsys.readouterr()
    with caplog.at_level("WARNING", logger="taskres"):
        assert main(args) == 0
    assert "encoded 1 shard(s)" in capsys.readouterr().out
    lines = cache_warnings(caplog)
    assert len(lines) == 1 and str(shard) in lines[0]
    assert shard.read_bytes() == before


# -- verdicts on images -----------------------------------------------------------------------------------
def test_an_image_refused_once_is_tried_again_once_its_cause_is_gone(tmp_path, capsys, caplog, monkeypatch):
    """A verdict "unreadable" depends on the pixel limit in force and on permissions, which the cache key
    does not see: the error's own advice (--max-image-pixels 0) must work after a refusal was cached."""
    from conftest import TINY_MODEL, make_class_folder
    from PIL import Image

    from taskres.transforms import MAX_PIXELS_ENV

    monkeypatch.setenv(MAX_PIXELS_ENV, "")  # the CLI sets it for its decoding workers; restored after the test
    folder = make_class_folder(tmp_path / "d" / "colours", per_class=6)
    big = load_dataset(str(folder)).test[0].path
    Image.new("RGB", (60, 60), (220, 30, 30)).save(big)  # 3,600 pixels; the others have 1,600
    args = ["fit", "--dataset", str(folder), "--backbone", TINY_MODEL, "--pretrained", "none", "--method",
            "zeroshot", "--shots", "1", "--views", "1", "--quiet", "--max-image-pixels", "2000"]
    assert main([*args, "--skip-bad-images"]) == 0
    assert "(7 images)" in capsys.readouterr().out  # the big one skipped, the verdict cached
    with caplog.at_level("INFO", logger="taskres"):
        assert main([*args[:-1], "0"]) == 0  # the error's advice works: read, not refused from the cache
    assert "(8 images)" in capsys.readouterr().out and "reads now" in caplog.text


def test_an_image_fixed_under_the_same_size_and_time_is_read_again(class_folder, tiny_backbone, tmp_path):
    """A file unreadable for a reason the key cannot see (permissions; here its bytes swapped back under the
    same size and mtime) is read again on the next run, not served as skipped from the cache."""
    import os

    task = load_dataset(str(class_folder))
    samples = task.test[:SHARD + 2]
    cache = FeatureCache(tmp_path / "c", shard_size=SHARD)
    truth = cache.features(tiny_backbone, samples, progress=False)
    cache = FeatureCache(tmp_path / "c2", shard_size=SHARD)
    victim = pathlib.Path(samples[1].path)
    good, st = victim.read_bytes(), victim.stat()
    victim.write_bytes(b"x" * len(good))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    try:
        first = cache.encoded(tiny_backbone, samples, skip_bad=True, progress=False)
    finally:
        victim.write_bytes(good)
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert first.valid.tolist() == [True, False] + [True] * SHARD
    again = cache.encoded(tiny_backbone, samples, progress=False)  # no skip: the image reads now
    assert bool(again.valid.all()) and torch.equal(again.features, truth)


def test_nan_bytes_under_verify_none_are_caught_and_rebuilt(undamaged, class_folder, tiny_backbone, tmp_path, caplog):
    """--verify-cache none does not hash shards; bytes changed into NaN must still never reach a method or a
    metric (ECE's bincount, GDA's LinAlgError): the shard is named, removed and encoded again."""
    _, entries, top1, tensors = undamaged
    root = damageable_copy(undamaged, tmp_path)
    for which in ("test", "train"):
        entry = FeatureCache(root, shard_size=SHARD).entry(tiny_backbone, entries[which].paths, entries[which].view)
        path = entry.shard_path(1)
        with open(path, "r+b") as fh:
            fh.seek(data_offset(path) + 4 * 5)
            fh.write(np.array([np.nan, np.inf], dtype=np.float32).tobytes())
    with caplog.at_level("WARNING", logger="taskres"):
        got_top1, got = run_fit(class_folder, root, tiny_backbone, verify="none")
    lines = cache_warnings(caplog)
    assert len(lines) == 2 and all("NaN/inf in rows its record calls valid" in line for line in lines), lines
    assert got_top1 == top1 and all(torch.equal(tensors[k], got[k]) for k in tensors)  # the undamaged run's
