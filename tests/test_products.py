"""--set products=auto|bf16|fp32: the probe's decision, its cache and the warning for a slow bf16."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from taskres.features import CachedViews
from taskres.methods.taskres import products
from taskres.methods.base import FitContext
from taskres.methods.taskres import TaskRes, TaskResParams

CPU = torch.device("cpu")
BASE = torch.randn(7, 12, generator=torch.Generator().manual_seed(0))
AVX2 = {"fp32": 2.9e-3, "bf16": 19.1e-3}  # the AVX2 machine: bf16 6.6x slower
BF16_MACHINE = {"fp32": 2.9e-3, "bf16": 1.3e-3}


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(products, "_warned", set())


def counting(timings):
    calls = []

    def measure():
        calls.append(1)
        return dict(timings)

    return measure, calls


def test_decide_takes_bf16_only_where_it_is_clearly_faster():
    assert products.decide(BF16_MACHINE) == "bf16"
    assert products.decide(AVX2) == "fp32"
    assert products.decide({"fp32": 1.0, "bf16": 0.95}) == "fp32"  # within the probe's noise: stay faithful
    assert products.decide({"fp32": 1.0, "bf16": 1.0}) == "fp32"
    assert products.decide({"fp32": 1.0, "bf16": products.BF16_MARGIN}) == "bf16"


@pytest.mark.parametrize("timings, chosen", [(AVX2, "fp32"), (BF16_MACHINE, "bf16")])
def test_auto_says_what_it_chose_and_caches_the_probe(timings, chosen, caplog, tmp_path):
    measure, calls = counting(timings)
    path = tmp_path / "probe.json"
    with caplog.at_level(logging.INFO, logger="taskres"):
        assert products.choose_products("auto", BASE, 32, CPU, True, measure, path) == chosen
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(f"products=auto: {chosen} (measured now")
    assert f"{timings['bf16'] / timings['fp32']:.2f}x" in lines[0]
    stored = json.loads(path.read_text())
    assert list(stored.values()) == [timings]
    # the next run on this machine and shape reads the cache: no second probe
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="taskres"):
        assert products.choose_products("auto", BASE, 32, CPU, True, measure, path) == chosen
    assert len(calls) == 1 and "cached probe" in caplog.records[0].getMessage()
    # another shape is another key: measured again, and both are kept
    assert products.choose_products("auto", BASE, 16, CPU, True, measure, path) == chosen
    assert len(calls) == 2 and len(json.loads(path.read_text())) == 2


def test_the_cache_key_names_the_machine_torch_threads_and_shape():
    key = products.machine_key(CPU, 1000, 1024, 256, True)
    assert torch.__version__ in key and "1000x1024 batch 256" in key and "flags" in key
    assert f"{torch.get_num_threads()} threads" in key
    assert key != products.machine_key(CPU, 1000, 1024, 256, False)


def test_the_default_cache_lives_under_taskres_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKRES_CACHE", str(tmp_path / "c"))
    measure, _ = counting(AVX2)
    products.choose_products("auto", BASE, 32, CPU, True, measure)
    assert (tmp_path / "c" / "products-probe.json").is_file()


def test_an_unreadable_cache_is_named_measured_again_and_rewritten(caplog, tmp_path):
    path = tmp_path / "probe.json"
    path.write_text("{not json")
    measure, calls = counting(AVX2)
    with caplog.at_level(logging.WARNING, logger="taskres"):
        assert products.choose_products("auto", BASE, 32, CPU, True, measure, path) == "fp32"
    assert len(calls) == 1 and str(path) in caplog.text and "unreadable" in caplog.text
    assert list(json.loads(path.read_text()).values()) == [AVX2]
    # an entry with bad numbers is not trusted either
    path.write_text(json.dumps({products.machine_key(CPU, 7, 12, 32, True): {"fp32": -1, "bf16": "x"}}))
    assert products.choose_products("auto", BASE, 32, CPU, True, measure, path) == "fp32" and len(calls) == 2


def test_asking_for_bf16_where_it_is_slower_warns_once_with_the_factor(caplog, tmp_path):
    measure, _ = counting(AVX2)
    path = tmp_path / "probe.json"
    with caplog.at_level(logging.WARNING, logger="taskres"):
        for _ in range(3):
            assert products.choose_products("bf16", BASE, 32, CPU, True, measure, path) == "bf16"  # as asked
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "products=bf16 is 6.59x slower than fp32" in warnings[0].getMessage()


def test_bf16_where_it_is_faster_and_fp32_say_nothing(caplog, tmp_path):
    measure, calls = counting(BF16_MACHINE)
    with caplog.at_level(logging.INFO, logger="taskres"):
        assert products.choose_products("bf16", BASE, 32, CPU, True, measure, tmp_path / "p.json") == "bf16"
        assert products.choose_products("fp32", BASE, 32, CPU, True, measure, tmp_path / "q.json") == "fp32"
    assert caplog.records == [] and len(calls) == 1  # fp32 (the default) never probes
    with pytest.raises(ValueError, match="products must be one of fp32, bf16, auto"):
        products.choose_products("fp8", BASE, 32, CPU, True, measure)


def test_the_probe_times_both_paths_on_this_machine():
    for fused in (True, False):
        timings = products.time_steps(BASE, 16, CPU, fused, steps=1, repeats=1)
        assert set(timings) == {"fp32", "bf16"} and all(0 < t < 10 for t in timings.values())


def _context():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(7).repeat_interleave(4)
    feats = BASE[labels][None] + 0.3 * torch.randn(1, len(labels), 12, generator=g)
    return FitContext(task_name="synthetic", classnames=[f"c{i}" for i in range(7)], templates=["{}"],
                      text_classifier=BASE, logit_scale=math.log(100.0), train=CachedViews(feats, labels, 0),
                      shots=4, seed=1, backbone_identity={"model": "synthetic"}, progress=False)


@pytest.mark.parametrize("timings, chosen", [(AVX2, "fp32"), (BF16_MACHINE, "bf16")])
def test_taskres_auto_trains_with_what_the_probe_chose_and_records_it(timings, chosen, monkeypatch):
    seen = []

    def probe(base, batch, device, fused):
        seen.append((tuple(base.shape), batch))
        return dict(timings)

    monkeypatch.setattr(products, "time_steps", probe)
    ctx = _context()
    clf = TaskRes(TaskResParams(epochs=2, lr=5e-3, batch_size=256, products="auto")).fit(ctx)
    same = TaskRes(TaskResParams(epochs=2, lr=5e-3, batch_size=256, products=chosen)).fit(ctx)
    assert seen == [((7, 12), 28)]  # the run's shape; the batch is the whole (small) training set
    assert clf.meta.hparams["products"] == chosen
    assert torch.equal(clf.residual, same.residual)
    # autograd has fp32 products only: auto needs no probe there
    auto_grad = TaskRes(TaskResParams(epochs=1, products="auto", gradient="autograd")).fit(ctx)
    assert auto_grad.meta.hparams["products"] == "fp32" and len(seen) == 1
