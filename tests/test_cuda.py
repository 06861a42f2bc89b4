"""The CUDA paths against the CPU: encoders in fp32/fp16/bf16, extraction, memory-mapped batches, zero-shot
logits, and ``taskres fit / eval / predict --device cuda``. Skipped where no CUDA device is available (CI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL

from taskres.api import FitConfig, build_context, evaluate, fit, predict
from taskres.backbone import BackboneConfig, load_backbone
from taskres.classifier import load_classifier
from taskres.cli import main
from taskres.datasets import Sample, load_dataset
from taskres.features import CachedViews, FeatureCache, MappedViews, View
from taskres.methods import get_method
from taskres.methods.base import FitContext
from taskres.methods.taskres import TaskRes, TaskResParams

DEVICE = "cuda"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = ["--backbone", TINY_MODEL, "--pretrained", "none"]


def backbone_on(device: str = DEVICE, precision: str = "fp32"):
    return load_backbone(BackboneConfig(TINY_MODEL, "none", device, precision))


@pytest.fixture(scope="module")
def gpu_backbone():
    return backbone_on()


@pytest.fixture
def exact_fp32():
    """Full float32 on the GPU: TF32 off for matmuls (torch's default) and for cuDNN convolutions (on by
    default, and the tiny model's patch embedding is a convolution)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def task(class_folder):
    return load_dataset(str(class_folder))


def preprocessed(backbone, samples) -> torch.Tensor:
    """The images of ``samples`` through the model's test transform, as one CPU batch."""
    from taskres.transforms import load_image

    return torch.stack([backbone.preprocess(load_image(s.path)) for s in samples])


def assert_close_features(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4) -> None:
    assert got.device.type == "cpu" and got.dtype == torch.float32  # encoders hand back float32 on the CPU
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float().cpu(), b.float().cpu(), dim=-1).min())


def assert_same_top1(got: torch.Tensor, want: torch.Tensor, margin: float = 1e-3) -> None:
    """Equal top-1 wherever ``want``'s best two classes are more than ``margin`` (relative) apart."""
    got, want = got.float().cpu(), want.float().cpu()
    top2 = want.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > margin * float(want.abs().max())
    assert int(clear.sum()) >= len(want) // 2, "too many near-ties to compare top-1"
    assert torch.equal(got.argmax(1)[clear], want.argmax(1)[clear])


def training_device_args(device: str) -> list[str]:
    """``--set device=...`` for TaskRes (by default it trains where the backbone is)."""
    return ["--set", f"device={device}"]


# -- the backbone --------------------------------------------------------------------------------------
def test_random_weights_and_identity_are_those_of_the_cpu(gpu_backbone, tiny_backbone):
    assert next(gpu_backbone.model.parameters()).device.type == DEVICE
    # the same fingerprint: a classifier fitted with --device cuda is accepted by a CPU backbone, and back
    assert gpu_backbone.identity == tiny_backbone.identity
    assert gpu_backbone.logit_scale == tiny_backbone.logit_scale
    assert gpu_backbone.embed_dim == tiny_backbone.embed_dim


def test_fp32_image_and_text_features_equal_the_cpu_ones(gpu_backbone, tiny_backbone, task, exact_fp32):
    x = preprocessed(tiny_backbone, task.test)
    assert_close_features(gpu_backbone.encode_images(x), tiny_backbone.encode_images(x))
    pinned = x.pin_memory()  # the extraction pipeline's batches come pinned, copied without blocking
    assert_close_features(gpu_backbone.encode_images(pinned), tiny_backbone.encode_images(x))
    texts = [f"a photo of a {c}." for c in task.classnames] + ["x", "a much longer caption " * 8]
    assert_close_features(gpu_backbone.encode_texts(texts, batch_size=3), tiny_backbone.encode_texts(texts))


def test_default_tf32_settings_stay_close_to_the_cpu(gpu_backbone, tiny_backbone, task):
    x = preprocessed(tiny_backbone, task.test)
    assert min_cosine(gpu_backbone.encode_images(x), tiny_backbone.encode_images(x)) > 0.999


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_features_are_close_to_fp32(precision, tiny_backbone, task):
    half = backbone_on(DEVICE, precision)
    assert half.identity["fingerprint"] == tiny_backbone.identity["fingerprint"]  # weights stay float32
    assert next(half.model.parameters()).dtype == torch.float32
    x = preprocessed(tiny_backbone, task.test)
    want = tiny_backbone.encode_images(x)
    got = half.encode_images(x)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert min_cosine(got, want) > 0.99
    assert not torch.equal(got, backbone_on(DEVICE, "fp32").encode_images(x))  # autocast did run in 16 bits
    texts = [f"a photo of a {c}." for c in task.classnames]
    assert min_cosine(half.encode_texts(texts), tiny_backbone.encode_texts(texts)) > 0.99


# -- extraction and the cache ----------------------------------------------------------------------------
@pytest.mark.parametrize("view", [View(), View("aug", 1, 3)], ids=["test", "aug"])
def test_extraction_with_workers_equals_the_cpu(view, gpu_backbone, tiny_backbone, task, tmp_path, exact_fp32):
    samples = task.train + task.test
    want = FeatureCache(None).features(tiny_backbone, samples, view, batch_size=8, num_workers=0, progress=False)
    cache = FeatureCache(tmp_path / "gpu", shard_size=16)
    got = cache.features(gpu_backbone, samples, view, batch_size=8, num_workers=2, progress=False)
    assert_close_features(got, want)
    entry = cache.entry(gpu_backbone, samples, view)
    assert (entry.directory / "index.json").is_file() and cache.missing_shards(entry) == []
    assert torch.equal(cache.mapped(gpu_backbone, samples, view, progress=False).to_tensor(), got)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_extraction_sends_half_images_and_stays_close(precision, tiny_backbone, task):
    samples = task.train + task.test
    want = FeatureCache(None).features(tiny_backbone, samples, batch_size=8, num_workers=0, progress=False)
    got = FeatureCache(None).features(backbone_on(DEVICE, precision), samples, batch_size=8, num_workers=2,
                                      progress=False)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert min_cosine(got, want) > 0.99


def test_bad_image_rows_are_nan_on_cuda_too(gpu_backbone, task, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    samples = task.test[:5] + [Sample(str(bad), 0)] + task.test[5:9]
    feats = FeatureCache(tmp_path / "c", shard_size=4).features(gpu_backbone, samples, batch_size=3,
                                                                 skip_bad=True, num_workers=2, progress=False)
    assert torch.isnan(feats[5]).all() and not torch.isnan(feats[torch.arange(10) != 5]).any()


# -- training sources ----------------------------------------------------------------------------------
def test_mapped_views_deliver_the_cpu_batches_on_cuda(tiny_backbone, task, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    samples = task.train[:7] + [Sample(str(bad), 1)] + task.train[7:] + task.test
    cache = FeatureCache(tmp_path / "c", shard_size=5)
    views = [cache.mapped(tiny_backbone, samples, View("aug", v, 2), skip_bad=True, progress=False)
             for v in range(3)]
    labels = torch.tensor([s.label for s in samples])
    cpu = MappedViews(views, labels, seed=4)
    gpu = MappedViews(views, labels, seed=4, device=DEVICE)
    assert gpu.labels.device.type == DEVICE and torch.equal(gpu.labels.cpu(), cpu.labels)
    assert gpu.num_samples == cpu.num_samples == len(samples) - 1
    gen = torch.Generator().manual_seed(0)
    for epoch in (0, 1, 5):
        idx = torch.randperm(gpu.num_samples, generator=gen)[:13]
        want = cpu.features(idx, epoch)
        for index in (idx, idx.to(DEVICE)):  # a trainer may hold its batch indices on either side
            got = gpu.features(index, epoch)
            assert got.device.type == DEVICE and got.dtype == torch.float32
            assert torch.equal(got.cpu(), want)
        assert torch.equal(gpu.labels[idx.to(DEVICE)].cpu(), cpu.labels[idx])
    assert not torch.isnan(gpu.features(torch.arange(gpu.num_samples), 0)).any()  # the bad row is dropped


def synthetic_context(train, base, classes: int, shots: int) -> FitContext:
    return FitContext(task_name="synthetic", classnames=[f"c{i}" for i in range(classes)], templates=["{}"],
                      text_classifier=base, logit_scale=float(np.log(100.0)), train=train, shots=shots, seed=1,
                      backbone_identity={"model": "synthetic", "fingerprint": "0"}, progress=False)


def synthetic_data(classes=20, shots=16, dim=64, views=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(shots)
    feats = centres[labels][None] + 1.5 * torch.randn(views, len(labels), dim, generator=g)
    base = centres + 2.0 * torch.randn(classes, dim, generator=g)
    return feats, labels, base


@pytest.mark.parametrize("gradient", ["closed_form", "autograd"])
def test_taskres_trains_the_same_on_cuda(gradient):
    feats, labels, base = synthetic_data()
    fits = {}
    for device in ("cpu", DEVICE):
        params = TaskResParams(alpha=0.5, lr=2e-3, epochs=8, batch_size=64, gradient=gradient, device=device)
        fits[device] = TaskRes(params).fit(synthetic_context(CachedViews(feats, labels, seed=1), base, 20, 16))
    cpu, gpu = fits["cpu"], fits[DEVICE]
    assert gpu.residual.device.type == "cpu" and gpu.base.device.type == "cpu"  # a classifier lives on the CPU
    assert cpu.residual.abs().max() > 0
    torch.testing.assert_close(gpu.residual, cpu.residual, rtol=1e-3, atol=1e-3 * float(cpu.residual.abs().max()))
    np.testing.assert_allclose(gpu.meta.extra["loss_history"], cpu.meta.extra["loss_history"], rtol=1e-4)


def test_taskres_trains_the_same_from_mapped_views_on_cuda(tiny_backbone, task, tmp_path):
    samples = task.train + task.test
    cache = FeatureCache(tmp_path / "c", shard_size=6)
    views = [View("aug", v, 1) for v in range(2)]
    labels = torch.tensor([s.label for s in samples])
    eager = torch.stack([cache.features(tiny_backbone, samples, v, progress=False) for v in views])
    mapped = [cache.mapped(tiny_backbone, samples, v, progress=False) for v in views]
    base = torch.randn(4, tiny_backbone.embed_dim, generator=torch.Generator().manual_seed(0))
    fits = []
    for source, device in ((CachedViews(eager, labels, seed=1), "cpu"),
                           (MappedViews(mapped, labels, seed=1, device=DEVICE), DEVICE),
                           (CachedViews(eager.to(DEVICE), labels.to(DEVICE), seed=1), DEVICE)):
        params = TaskResParams(epochs=4, lr=1e-2, batch_size=8, device=device)
        fits.append(TaskRes(params).fit(synthetic_context(source, base, 4, 10)))
    assert fits[0].meta.extra["loss_history"][0] > fits[0].meta.extra["loss_history"][-1]  # it did learn
    for other in fits[1:]:
        torch.testing.assert_close(other.residual, fits[0].residual, rtol=1e-4,
                                   atol=1e-4 * float(fits[0].residual.abs().max()))


def test_bf16_products_on_cuda_stay_close_to_fp32():
    feats, labels, base = synthetic_data(classes=50, shots=16, dim=128)
    res = {}
    for products in ("fp32", "bf16"):
        params = TaskResParams(alpha=0.5, lr=2e-3, epochs=10, batch_size=128, products=products, device=DEVICE)
        res[products] = TaskRes(params).fit(synthetic_context(CachedViews(feats, labels, seed=1), base, 50, 16))
    assert res["fp32"].residual.abs().max() > 0
    cos = F.cosine_similarity(res["bf16"].residual.flatten(), res["fp32"].residual.flatten(), dim=0)
    assert float(cos) > 0.99
    assert_same_top1(res["bf16"](feats[0]), res["fp32"](feats[0]), margin=1e-2)


# -- zero-shot and the whole run -----------------------------------------------------------------------------
def test_zero_shot_logits_on_cuda_equal_the_cpu_ones(gpu_backbone, tiny_backbone, task, exact_fp32):
    zs = get_method("zeroshot")
    clf_cpu = zs.fit(build_context(task, tiny_backbone, None, shots=0, seed=1, progress=False))
    clf_gpu = zs.fit(build_context(task, gpu_backbone, None, shots=0, seed=1, progress=False))
    assert clf_gpu.base.device.type == "cpu"
    torch.testing.assert_close(clf_gpu.base, clf_cpu.base, rtol=1e-4, atol=1e-4 * float(clf_cpu.base.abs().max()))
    x = preprocessed(tiny_backbone, task.test)
    want = clf_cpu(tiny_backbone.encode_images(x))
    on_gpu = clf_gpu.to(DEVICE)
    got = on_gpu(gpu_backbone.encode_images(x).to(DEVICE))
    assert got.device.type == DEVICE
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-3)
    assert_same_top1(got, want)
    assert torch.allclose(on_gpu.predict_proba(gpu_backbone.encode_images(x).to(DEVICE)).sum(1).cpu(),
                          torch.ones(len(x)))


def fit_args(dataset, out, device, cache, *extra):
    trained = "zeroshot" not in extra
    return ["fit", "--dataset", str(dataset), *TINY, "--device", device, "--shots", "2", "--views", "2",
            "--out", str(out), "--cache-dir", str(cache), "--quiet",
            *(["--set", "epochs=5", *training_device_args(device)] if trained else []), *extra]


@pytest.mark.parametrize("regime", ["cached", "online"])
def test_fit_on_cuda_writes_a_run_that_the_cpu_reproduces(regime, class_folder, task, tiny_backbone, tmp_path,
                                                          capsys, exact_fp32):
    runs = {}
    for device in ("cpu", DEVICE):
        out = tmp_path / device
        assert main(fit_args(class_folder, out, device, tmp_path / f"cache-{device}", "--regime", regime)) == 0
        assert (out / "metrics.json").is_file() and (out / "classifier.safetensors").is_file()
        runs[device] = out
    assert "test top-1 =" in capsys.readouterr().out
    config = json.loads((runs[DEVICE] / "config.json").read_text())
    assert config["backbone"]["device"] == DEVICE
    metrics = {d: json.loads((runs[d] / "metrics.json").read_text()) for d in runs}
    assert metrics[DEVICE]["regime"] == regime and 0 <= metrics[DEVICE]["top1"]["test"] <= 100
    assert metrics[DEVICE]["backbone"] == metrics["cpu"]["backbone"]

    clf = load_classifier(runs[DEVICE])  # reloads on the CPU
    ref = load_classifier(runs["cpu"])
    assert clf.residual.device.type == "cpu" and clf.residual.abs().max() > 0  # trained
    torch.testing.assert_close(clf.residual, ref.residual, rtol=1e-3, atol=1e-3 * float(ref.residual.abs().max()))

    x = preprocessed(tiny_backbone, task.test)
    cpu_logits = clf(tiny_backbone.encode_images(x))
    gpu_backbone = backbone_on()
    gpu_logits = clf.to(DEVICE)(gpu_backbone.encode_images(x).to(DEVICE))
    assert gpu_logits.device.type == DEVICE
    torch.testing.assert_close(gpu_logits.cpu(), cpu_logits, rtol=1e-4, atol=1e-3)
    assert_same_top1(gpu_logits, cpu_logits)
    assert_same_top1(cpu_logits, ref(tiny_backbone.encode_images(x)))

    # the run's own test top-1 (cuda features) is what the CPU measures with the saved classifier
    on_cpu = evaluate(runs[DEVICE], str(class_folder), cache_dir="", progress=False,
                      backbone_cfg=BackboneConfig(TINY_MODEL, "none", "cpu"))
    assert on_cpu["top1"] == pytest.approx(metrics[DEVICE]["top1"]["test"], abs=100.0 / on_cpu["num_images"])
    on_gpu = evaluate(runs[DEVICE], str(class_folder), cache_dir="", progress=False,
                      backbone_cfg=BackboneConfig(TINY_MODEL, "none", DEVICE))
    assert on_gpu["top1"] == pytest.approx(on_cpu["top1"], abs=100.0 / on_cpu["num_images"])


def test_eval_and_predict_with_device_cuda(class_folder, tmp_path, capsys):
    assert main(fit_args(class_folder, tmp_path / "run", "cpu", tmp_path / "c", "--method", "zeroshot")) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--dataset", str(class_folder), *TINY, "--device", DEVICE,
                 "--json", "--quiet", "--cache-dir", ""]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert res["top1"] == pytest.approx(metrics["top1"]["test"], abs=100.0 / res["num_images"])
    images = [str(sorted((class_folder / f"{c}_thing").iterdir())[0]) for c in ("red", "blue")]
    cpu = predict(tmp_path / "run", images, k=4)
    gpu = predict(tmp_path / "run", images, k=4, backbone_cfg=BackboneConfig(TINY_MODEL, "none", DEVICE))
    for a, b in zip(gpu, cpu):
        assert [n for n, _ in a["top"]][:1] == [n for n, _ in b["top"]][:1]
        np.testing.assert_allclose(sorted(p for _, p in a["top"]), sorted(p for _, p in b["top"]), atol=1e-3)
    assert main(["predict", str(tmp_path / "run"), images[0], "--top", "2", *TINY, "--device", DEVICE]) == 0
    assert capsys.readouterr().out.splitlines()[0] == images[0]


def test_fit_api_with_half_precision_on_cuda(class_folder, tmp_path):
    cfg = FitConfig(method="taskres", dataset=str(class_folder), backbone=BackboneConfig(TINY_MODEL, "none", DEVICE,
                                                                                        "bf16"),
                    shots=2, views=2, method_params={"epochs": 3}, out=str(tmp_path / "run"), progress=False)
    result = fit(cfg)
    assert result.metrics["backbone"]["precision"] == "bf16"
    assert (tmp_path / "run" / "classifier.safetensors").is_file()
    assert torch.isfinite(load_classifier(tmp_path / "run").residual).all()
