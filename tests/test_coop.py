"""CoOp beside its authors' code: the precision it trains in (issue 19 fix 6) and its word-initialised context.

The float64/float32 goldens of ``parity/coop.py`` are compared by tests/parity/test_golden.py; the float16
run (CoOp's default ``PREC``, executed on a CPU) is compared here, against taskres's ``precision=fp16``.
"""

from __future__ import annotations

import logging

import pytest
import torch

from parity import coop as parity_coop
from parity import fixture
from taskres.features.views import CachedViews
from taskres.methods import get_method
from taskres.methods.base import FitContext
from taskres.methods.coop import PromptLearner, CoOpParams, resolve_precision
from taskres.methods.kit.text_encoder import TextTower


def _ctx(device: str = "cpu") -> FitContext:
    backbone = fixture.tiny_backbone() if device == "cpu" else _backbone_on(device)
    feats = fixture.features(torch.float32)
    names = [n.replace("_", " ") for n in fixture.CLASSNAMES]
    return FitContext(task_name="parity", classnames=names, templates=["a photo of a {}."],
                      text_classifier=torch.zeros(len(names), fixture.EMBED_DIM), logit_scale=backbone.logit_scale,
                      train=CachedViews(feats["train_views"][0], feats["train_labels"]), shots=fixture.SHOTS, seed=1,
                      backbone_identity=backbone.identity, backbone=backbone, progress=False)


def _backbone_on(device: str):
    from taskres.backbone import BackboneConfig, load_backbone

    config, weights = fixture.tiny_model_files()
    return load_backbone(BackboneConfig(str(config), str(weights), device=device, quick_gelu=True))


def test_precision_is_one_of_the_references_values():
    with pytest.raises(ValueError, match="coop: precision must be one of auto, fp16, fp32, amp, not 'bf16'"):
        get_method("coop", {"precision": "bf16"})


def test_auto_precision_is_the_references_fp16_on_a_gpu_and_fp32_on_a_cpu():
    assert resolve_precision("auto", torch.device("cuda")) == ("fp16", None)
    assert resolve_precision("amp", torch.device("cuda")) == ("amp", None)
    used, note = resolve_precision("auto", torch.device("cpu"))
    assert used == "fp32" and "fp32 on a CPU" in note
    assert resolve_precision("fp16", torch.device("cpu")) == ("fp16", None)  # torch runs fp16 on a CPU too


@pytest.mark.parametrize("asked, used, dtype", [("auto", "fp32", "float32"), ("fp16", "fp16", "float16"),
                                                ("amp", "fp32", "float32"), ("fp32", "fp32", "float32")])
def test_the_precision_a_run_used_is_recorded(asked, used, dtype, caplog):
    with caplog.at_level(logging.INFO, logger="taskres"):
        clf = get_method("coop", {"n_ctx": 4, "epochs": 2, "batch_size": 8, "precision": asked}).fit(_ctx())
    assert clf.meta.hparams["precision"] == used  # hparams go to metrics.json as they are
    assert clf.meta.extra["train_dtype"] == dtype
    assert torch.isfinite(clf.base).all() and clf.base.dtype == torch.float32
    if asked == "amp":  # asked for and not given: said in one line
        assert any("amp" in r.message and r.levelno == logging.WARNING for r in caplog.records)


def _against_official(precision: str, name: str):
    golden, meta = fixture.load_golden(name)
    run = parity_coop.PRECISION_RUNS[precision]
    ours = parity_coop.recompute(golden, meta, torch.float32, precision=precision)
    return ours, parity_coop.for_run(golden, run), meta


# fp16: CoOp's default PREC; amp: its autocast path (CUDA's in the release) moved to the CPU on both sides
@pytest.mark.parametrize("name", ["coop", "coop_words"])
@pytest.mark.parametrize("precision", ["fp16", "amp"])
def test_half_precisions_agree_with_coops_own_runs_within_fp16_round_off(precision, name):
    ours, official, meta = _against_official(precision, name)
    rel = meta["tolerance_float16"]["rel_to_max"]
    for key in parity_coop.OUTPUTS:
        if key == "predictions":
            continue
        want, got = official[key].double(), ours[key].double()
        assert got.dtype == want.dtype and got.shape == want.shape
        assert (got - want).abs().max() <= rel * want.abs().max(), key
    # a prediction may differ only where the official top-2 logits are within the logits' tolerance of each
    # other (the tiny model's class logits lie within ~1 of each other, so such near-ties are common here)
    top2 = official["logits"].double().topk(2, dim=1).values
    close = (top2[:, 0] - top2[:, 1]) <= 2 * rel * official["logits"].double().abs().max()
    assert ((ours["predictions"] == official["predictions"]) | close).all()


@pytest.mark.parametrize("name", ["coop", "coop_words"])
@pytest.mark.parametrize("precision", ["fp16", "amp"])
def test_half_precisions_are_coops_paths_to_the_last_ulps_with_its_full_pass_and_batch_order(precision, name,
                                                                                           monkeypatch):
    # The two shortcuts taskres takes (the transformer on the prompts' prefix, its own batch order) make the
    # round-off gap above: without them every output is CoOp's to 4 ulps of its dtype at the output's largest
    # value (measured on 1 and 2 threads: most are equal bit for bit; the new classes' fp32 features of the
    # amp run differ by 2.7 ulps, open_clip's batch-first attention summing in another order than OpenAI's;
    # the lr by 1e-19, torch's cosine being a recursion and Schedule the closed form).
    import taskres.methods.kit.training as training

    monkeypatch.setattr(TextTower, "_needed_length", lambda self, tokens: tokens.shape[1])
    monkeypatch.setattr(training, "epoch_batches",
                        lambda n, batch_size, generator, keep_partial=False: [torch.arange(n)])
    ours, official, _ = _against_official(precision, name)
    for key in parity_coop.OUTPUTS:
        got, want = ours[key], official[key]
        if not want.is_floating_point():
            assert torch.equal(got, want), key
            continue
        ulps = 4 * torch.finfo(want.dtype).eps * want.double().abs().max()
        assert got.dtype == want.dtype and (got.double() - want.double()).abs().max() <= ulps, key
    assert official["ctx_delta"].abs().max() > 0  # it did learn


def test_a_words_context_has_one_vector_per_word_as_coop_counts_them():
    # CoOp: n_ctx = len(ctx_init.split(" ")) and the context is the first n_ctx token embeddings; "itap" is two
    # BPE tokens, so 3 words are 4 tokens and the 4th stays in the fixed part of the prompt.
    tower = TextTower(fixture.tiny_backbone())
    learner = PromptLearner(tower, ["dog"], CoOpParams(ctx_init="an itap of"), seed=1)
    assert learner.n_ctx == 3 and tuple(learner.ctx.shape) == (3, tower.width)
    tokens = tower.tokenize(["an itap of dog."])[0]
    with torch.no_grad():
        assert torch.equal(learner.ctx, tower.embed(tokens[1:4]))
        assert torch.equal(learner.token_suffix[0, 0], tower.embed(tokens[4:5])[0])  # "of", kept fixed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("asked, used, dtype", [("auto", "fp16", "float16"), ("amp", "amp", "float32")])
def test_on_a_gpu_coop_trains_in_the_references_precision(asked, used, dtype):
    ctx = _ctx("cuda")
    clf = get_method("coop", {"n_ctx": 4, "epochs": 3, "batch_size": 8, "precision": asked}).fit(ctx)
    assert clf.meta.hparams["precision"] == used and clf.meta.extra["train_dtype"] == dtype
    assert torch.isfinite(clf.base).all() and all(torch.isfinite(torch.tensor(clf.meta.extra["loss_history"])))
    fp32 = get_method("coop", {"n_ctx": 4, "epochs": 3, "batch_size": 8, "precision": "fp32"}).fit(ctx)
    # the same training in another precision: close in direction, not equal
    cos = torch.nn.functional.cosine_similarity(clf.base, fp32.base, dim=-1)
    assert (cos > 0.99).all() and not torch.equal(clf.base, fp32.base)
