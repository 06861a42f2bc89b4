"""TaskRes pinned to the facts of REFERENCE.md: forward pass, gradient, optimiser, schedule, defaults."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from taskres.classifier import (ClassifierMeta, CosineClassifier, cosine_logits, load_classifier, logit_scale_exp,
                               save_classifier)
from taskres.features import CachedViews
from taskres.methods import TrainingError, get_method
from taskres.methods.base import FitContext
from taskres.methods.taskres import TaskRes, TaskResParams, reference_defaults, taskres_logits, \
    taskres_loss_and_grad
from taskres.methods.kit.training import Schedule, epoch_batches

C, D = 5, 16


def separable_context(n_per_class=8, views=1, seed=0, noise=0.3, **kw) -> FitContext:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(C, D, generator=g)
    labels = torch.arange(C).repeat_interleave(n_per_class)
    feats = centres[labels][None] + noise * torch.randn(views, len(labels), D, generator=g)
    base = centres[[1, 0, 2, 3, 4]] + 0.5 * torch.randn(C, D, generator=g)  # useful but wrong on 2 classes
    return FitContext(task_name="synthetic", classnames=[f"c{i}" for i in range(C)], templates=["{}"],
                      text_classifier=base, logit_scale=math.log(100.0), train=CachedViews(feats, labels, seed),
                      shots=n_per_class, seed=seed, backbone_identity={"model": "synthetic", "fingerprint": "0"},
                      progress=False, **kw)


def test_zero_residual_gives_exactly_the_zero_shot_logits():
    ctx = separable_context()
    zs = get_method("zeroshot").fit(ctx)
    tr = get_method("taskres", {"epochs": 0}).fit(ctx)
    f = torch.randn(7, D)
    assert torch.equal(tr.residual, torch.zeros(C, D))
    assert torch.equal(zs(f), tr(f))
    expected = 100.0 * F.normalize(f, dim=-1) @ F.normalize(ctx.text_classifier, dim=-1).t()
    torch.testing.assert_close(zs(f), expected, rtol=1e-5, atol=1e-4)


def test_forward_is_the_papers_equation():
    base, x, f = torch.randn(C, D), torch.randn(C, D), torch.randn(3, D)
    alpha, scale = 0.5, math.log(100.0)
    t_prime = base + alpha * x  # alpha applied before any normalisation
    expected = 100.0 * (f / f.norm(dim=1, keepdim=True)) @ (t_prime / t_prime.norm(dim=1, keepdim=True)).t()
    torch.testing.assert_close(taskres_logits(f, base, x, alpha, scale), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_closed_form_gradient_matches_autograd(alpha):
    g = torch.Generator().manual_seed(3)
    f = F.normalize(torch.randn(11, D, generator=g), dim=-1)
    y = torch.randint(C, (11,), generator=g)
    base = torch.randn(C, D, generator=g, dtype=torch.float64)
    x = (0.3 * torch.randn(C, D, generator=g, dtype=torch.float64)).requires_grad_()
    loss = F.cross_entropy(taskres_logits(f.double(), base, x, alpha, math.log(100.0)), y)
    loss.backward()
    scale = logit_scale_exp(math.log(100.0))  # the same temperature as the forward pass
    closed_loss, closed_grad = taskres_loss_and_grad(f.double(), y, base, x.detach(), alpha, scale)
    torch.testing.assert_close(closed_loss, loss.detach())
    torch.testing.assert_close(closed_grad, x.grad)


def test_optimiser_is_adam_with_coupled_weight_decay():
    """One step by hand: Adam whose gradient includes 5e-4 * x (L2), not AdamW's decoupled decay."""
    ctx = separable_context(n_per_class=2)
    params = TaskResParams(epochs=1, lr=1e-3, warmup_lr=1e-3, batch_size=256)
    base = ctx.text_classifier
    # one epoch, one batch of all 10 samples; start from x = 0, so the first step is -lr * sign(grad)
    clf = TaskRes(params).fit(ctx)
    feats = F.normalize(ctx.train.views[0], dim=-1)
    idx = epoch_batches(10, 256, torch.Generator().manual_seed(ctx.seed))[0]
    _, grad = taskres_loss_and_grad(feats[idx], ctx.train.labels[idx], base, torch.zeros(C, D), 0.5, 100.0)
    m, v = 0.1 * grad, 0.001 * grad ** 2
    step = 1e-3 * (m / 0.1) / ((v / 0.001).sqrt() + 1e-8)
    torch.testing.assert_close(clf.residual, -step, rtol=1e-4, atol=1e-7)
    # a second step from a nonzero x differs between coupled L2 and decoupled decay: check coupled
    x = torch.nn.Parameter(torch.ones(C, D))
    x.grad = torch.zeros(C, D)
    from taskres.methods.kit.training import make_adam

    opt = make_adam([x], lr=1e-3, weight_decay=5e-4)
    opt.step()
    # with zero loss gradient, coupled L2 makes the gradient 5e-4 * x: Adam moves x by -lr (sign), AdamW by lr*wd
    torch.testing.assert_close(x.detach(), torch.full((C, D), 1 - 1e-3), rtol=0, atol=1e-6)


def test_schedule_matches_reference_formula_epoch_by_epoch():
    lr, epochs = 2e-3, 12
    seen = {}
    ctx = separable_context(n_per_class=1)
    TaskRes(TaskResParams(epochs=epochs, lr=lr)).fit(ctx, on_step=lambda e, s, l, loss: seen.setdefault(e, l))
    assert sorted(seen) == list(range(epochs))
    assert seen[0] == 1e-5  # warm-up epoch at constant 1e-5
    for e in range(1, epochs):
        assert seen[e] == pytest.approx(0.5 * lr * (1 + math.cos(math.pi * (e - 1) / epochs)), rel=1e-12)
    assert Schedule(lr, epochs).lr_at(1) == pytest.approx(lr)


def test_batches_drop_last_only_when_the_set_is_large():
    g = torch.Generator().manual_seed(0)
    small = epoch_batches(100, 256, g)
    assert [len(b) for b in small] == [100]
    large = epoch_batches(600, 256, g)
    assert [len(b) for b in large] == [256, 256]
    assert len(set(torch.cat(large).tolist())) == 512


def test_reference_defaults():
    assert reference_defaults("oxford_flowers", "RN50", 16) == {"alpha": 1.0, "lr": 2e-3, "epochs": 200}
    assert reference_defaults("dtd", "RN50", 4) == {"alpha": 0.5, "lr": 2e-3, "epochs": 100}
    assert reference_defaults("imagenet", "RN50", 16)["lr"] == 2e-4
    assert reference_defaults("dtd", "ViT-B-16", 1) == {"alpha": 0.5, "lr": 2e-4, "epochs": 200}


def test_taskres_learns_a_separable_task_and_keeps_the_prior_at_start():
    ctx = separable_context(n_per_class=16, views=2)
    test = separable_context(n_per_class=20, seed=0)  # same centres (same seed), fresh noise below
    g = torch.Generator().manual_seed(9)
    labels = test.train.labels
    feats = test.train.views[0] + 0.3 * torch.randn(len(labels), D, generator=g)
    zs_acc = (get_method("zeroshot").fit(ctx)(feats).argmax(1) == labels).float().mean()
    tr_acc = (TaskRes(TaskResParams(epochs=100, lr=5e-2)).fit(ctx)(feats).argmax(1) == labels).float().mean()
    assert tr_acc > 0.9
    assert tr_acc > zs_acc + 0.1


def test_saved_classifier_reloads_to_identical_logits(tmp_path):
    ctx = separable_context()
    clf = TaskRes(TaskResParams(epochs=3)).fit(ctx)
    save_classifier(clf, tmp_path / "c.safetensors")
    back = load_classifier(tmp_path / "c.safetensors")
    f = torch.randn(9, D)
    assert isinstance(back, CosineClassifier)
    assert torch.equal(clf(f), back(f))
    assert back.alpha == clf.alpha and back.classnames == clf.classnames
    assert back.meta.backbone == ctx.backbone_identity


def test_non_finite_loss_is_a_clear_error():
    ctx = separable_context()
    ctx.train.views[0, 0, 0] = float("nan")
    with pytest.raises(TrainingError, match="loss became nan"):
        TaskRes(TaskResParams(epochs=2, gradient="autograd")).fit(ctx)


def test_cosine_logits_use_clip_temperature():
    meta = ClassifierMeta(["a", "b"], {}, "x")
    w = torch.randn(2, D)
    clf = CosineClassifier(meta, w, None, 0.0, math.log(100.0))
    f = torch.randn(4, D)
    torch.testing.assert_close(clf(f), cosine_logits(f, w, math.log(100.0)))
    assert clf(f).abs().max() <= 100.0 + 1e-3


def test_coupled_adam_is_torch_adam_step_for_step():
    from taskres.methods.kit.training import CoupledAdam, make_adam

    g = torch.Generator().manual_seed(4)
    grads = [torch.randn(C, D, generator=g) for _ in range(6)]
    lrs = [1e-5, 2e-3, 1.5e-3, 1e-3, 5e-4, 1e-4]
    start = torch.randn(C, D, generator=g)
    ours = torch.nn.Parameter(start.clone())
    adam = CoupledAdam(ours, lrs[0], 5e-4)
    fused = torch.nn.Parameter(start.clone())
    plain = torch.nn.Parameter(start.clone())
    opt_fused = make_adam([fused], lrs[0], 5e-4)
    opt_plain = torch.optim.Adam([plain], lr=lrs[0], weight_decay=5e-4)
    for grad, lr in zip(grads, lrs):
        adam.lr = lr
        adam.step(grad)
        for p, opt in ((fused, opt_fused), (plain, opt_plain)):
            p.grad = grad.clone()
            opt.param_groups[0]["lr"] = lr
            opt.step()
        assert torch.equal(ours.detach(), fused.detach())
        torch.testing.assert_close(ours.detach(), plain.detach(), rtol=1e-6, atol=1e-7)
    assert not torch.equal(ours.detach(), start)


def test_bf16_products_stay_close_to_the_exact_gradient():
    from taskres.methods.taskres import ResidualGradient

    g = torch.Generator().manual_seed(5)
    n, classes, dim = 64, 40, 128
    f = F.normalize(torch.randn(n, dim, generator=g), dim=-1)
    y = torch.randint(classes, (n,), generator=g)
    base = torch.randn(classes, dim, generator=g)
    x = 0.1 * torch.randn(classes, dim, generator=g)
    exact_loss, exact_grad = ResidualGradient(base, 0.5, 100.0)(f, y, x)
    exact_grad = exact_grad.clone()
    step = ResidualGradient(base, 0.5, 100.0, "bf16")
    assert step.feature_dtype == torch.bfloat16
    loss, grad = step(f.bfloat16(), y, x)
    assert grad.dtype == torch.float32 and loss.dtype == torch.float32
    assert abs(float(loss) - float(exact_loss)) < 0.02 * float(exact_loss)
    assert F.cosine_similarity(grad.flatten(), exact_grad.flatten(), dim=0) > 0.999
    assert not torch.equal(grad, exact_grad)  # the products really ran in bf16


def test_bf16_products_train_nearly_the_same_residual():
    ctx = separable_context(n_per_class=16, views=2)
    exact = TaskRes(TaskResParams(epochs=30, lr=5e-3, batch_size=16)).fit(ctx)
    fast = TaskRes(TaskResParams(epochs=30, lr=5e-3, batch_size=16, products="bf16")).fit(ctx)
    assert fast.meta.hparams["products"] == "bf16"
    diff = (fast.residual - exact.residual).norm() / exact.residual.norm()
    assert 0 < diff < 0.05
    feats = ctx.train.views[1]
    assert (fast(feats).argmax(1) == exact(feats).argmax(1)).float().mean() > 0.97


def test_products_and_device_options_are_checked():
    ctx = separable_context()
    with pytest.raises(ValueError, match="products must be one of fp32, bf16"):
        TaskRes(TaskResParams(epochs=1, products="fp8")).fit(ctx)
    with pytest.raises(ValueError, match="taskres: products must be fp32 with gradient=autograd, not bf16"):
        TaskRes(TaskResParams(epochs=1, products="bf16", gradient="autograd")).fit(ctx)
    with pytest.raises(ValueError, match="taskres: device 'gpu0' is not a device"):
        TaskRes(TaskResParams(epochs=1, device="gpu0")).fit(ctx)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            TaskRes(TaskResParams(epochs=1, device="cuda")).fit(ctx)


def test_non_finite_loss_stops_the_closed_form_path_too():
    ctx = separable_context()
    ctx.train.views[0, 3, :] = float("inf")
    with pytest.raises(TrainingError, match=r"loss became nan in epoch 0"):
        TaskRes(TaskResParams(epochs=3)).fit(ctx)


@pytest.mark.parametrize("products", ["fp32", "bf16"])
def test_batch_by_batch_sources_train_like_in_memory_views(products):
    """Sources without an in-memory ``views`` tensor (memory-mapped, online) are normalised and converted
    per batch; that must give the same residual as the views normalised once."""

    class BatchOnly:
        def __init__(self, inner):
            self.inner, self.labels, self.num_samples = inner, inner.labels, inner.num_samples

        def features(self, idx, epoch):
            return self.inner.features(idx, epoch)

    ctx = separable_context(n_per_class=16, views=3)
    params = TaskResParams(epochs=5, lr=5e-3, batch_size=16, products=products)
    in_memory = TaskRes(params).fit(ctx)
    batched = TaskRes(params).fit(dataclasses.replace(ctx, train=BatchOnly(ctx.train)))
    torch.testing.assert_close(batched.residual, in_memory.residual, rtol=1e-5, atol=1e-7)
    assert in_memory.residual.abs().sum() > 0


def test_fused_weights_kernel_rounds_like_torch_and_gives_the_norms():
    pytest.importorskip("numba")
    from taskres.methods.taskres.fused import FusedBf16Adam

    g = torch.Generator().manual_seed(6)
    base = torch.randn(37, 300, generator=g)
    x = torch.randn(37, 300, generator=g)
    # t' exactly on bf16 rounding ties (1 + 2^-8 -> 1, 1 + 3 * 2^-8 -> 1 + 2^-6: to even) and other edges
    base[0, :8] = 0.0
    x[0, :8] = torch.tensor([1.00390625, 1.01171875, -1.00390625, 3.0, 0.0, -0.0, 1e-30, 65504.0]) * 2
    adam = FusedBf16Adam(base, x.clone(), 0.5, 1e-3, 5e-4)
    low, norms = adam.weights()
    weights = base + 0.5 * x
    assert torch.equal(low.view(torch.int16), weights.to(torch.bfloat16).view(torch.int16))  # nearest, ties even
    torch.testing.assert_close(norms, weights.norm(dim=1), rtol=1e-5, atol=0)


def test_fused_adam_kernel_is_torch_adam_on_the_corrected_gradient():
    pytest.importorskip("numba")
    from taskres.methods.taskres.fused import FusedBf16Adam
    from taskres.methods.kit.training import CoupledAdam

    g = torch.Generator().manual_seed(7)
    base = torch.randn(C, D, generator=g)
    x0 = 0.1 * torch.randn(C, D, generator=g)
    fused = FusedBf16Adam(base, x0.clone(), 0.5, 1e-3, 5e-4)
    ref = torch.nn.Parameter(x0.clone())
    adam = CoupledAdam(ref, 1e-3, 5e-4)
    for lr in (1e-5, 2e-3, 1e-3, 5e-4):
        product = torch.randn(C, D, generator=g).to(torch.bfloat16)
        coef = torch.randn(C, generator=g)
        grad = product.float() - coef[:, None] * (base + 0.5 * ref.detach())
        fused.lr = adam.lr = lr
        fused.step(product, coef)
        adam.step(grad)
        torch.testing.assert_close(fused.residual, ref.detach(), rtol=1e-5, atol=1e-7)
    assert not torch.equal(fused.residual, x0)


def test_fused_bf16_training_matches_the_torch_bf16_path():
    pytest.importorskip("numba")
    ctx = separable_context(n_per_class=16, views=2)
    params = dict(epochs=20, lr=5e-3, batch_size=16, products="bf16")
    plain = TaskRes(TaskResParams(**params, fused=False)).fit(ctx)
    seen = []
    fused = TaskRes(TaskResParams(**params)).fit(ctx, on_step=lambda e, s, lr, loss: seen.append(loss))
    diff = (fused.residual - plain.residual).norm() / plain.residual.norm()
    assert diff < 2e-3
    assert len(seen) == 20 * 5 and plain.meta.extra["loss_history"] == pytest.approx(
        fused.meta.extra["loss_history"], rel=1e-3)


def test_bf16_falls_back_to_torch_without_numba(monkeypatch):
    from taskres.methods.taskres import fused

    monkeypatch.setattr(fused, "available", lambda: False)
    monkeypatch.setattr("taskres.methods.taskres.fused_available", lambda: False)
    ctx = separable_context(n_per_class=4)
    clf = TaskRes(TaskResParams(epochs=3, lr=5e-3, products="bf16")).fit(ctx)
    assert clf.residual.abs().sum() > 0
    with pytest.raises(RuntimeError, match="need numba"):
        fused.FusedBf16Adam(ctx.text_classifier, torch.zeros(C, D), 0.5, 1e-3, 5e-4)


def test_fused_fp32_kernel_is_torch_adam_and_remakes_the_weights():
    """One kernel: gradient product - coef t', coupled L2, Adam (as CoupledAdam, to round-off), and the next
    step's t' = t + alpha x with its norms."""
    pytest.importorskip("numba")
    from taskres.methods.taskres.fused import FusedFp32Adam
    from taskres.methods.kit.training import CoupledAdam

    g = torch.Generator().manual_seed(8)
    base = torch.randn(37, 300, generator=g)
    x0 = 0.1 * torch.randn(37, 300, generator=g)
    fused = FusedFp32Adam(base, x0.clone(), 0.5, 1e-3, 5e-4)
    ref = x0.clone()
    adam = CoupledAdam(ref, 1e-3, 5e-4)
    for lr in (1e-5, 2e-3, 1e-3, 5e-4):
        weights, norms = fused.weights()
        expected = base + 0.5 * ref
        torch.testing.assert_close(weights, expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(norms, expected.norm(dim=1), rtol=1e-6, atol=0)
        product, coef = torch.randn(37, 300, generator=g), torch.randn(37, generator=g)
        fused.lr = adam.lr = lr
        fused.step(product, coef)
        adam.step(product - coef[:, None] * expected)
        torch.testing.assert_close(fused.residual, ref, rtol=1e-6, atol=5e-8)
        torch.testing.assert_close(fused.exp_avg, adam.exp_avg, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(fused.exp_avg_sq, adam.exp_avg_sq, rtol=1e-5, atol=1e-8)
    assert not torch.equal(fused.residual, x0)
    with pytest.raises(ValueError, match="contiguous float32"):
        fused.step(product.t(), coef)


def test_fused_fp32_step_is_the_torch_fp32_step_step_for_step():
    """FusedStep("fp32") against ResidualGradient + CoupledAdam on the same batches: losses and residuals to
    round-off, at every step."""
    pytest.importorskip("numba")
    from taskres.methods.taskres import FusedStep, ResidualGradient
    from taskres.methods.kit.training import CoupledAdam

    g = torch.Generator().manual_seed(9)
    classes, dim = 23, 64
    base = torch.randn(classes, dim, generator=g)
    feats = F.normalize(torch.randn(200, dim, generator=g), dim=-1)
    labels = torch.randint(classes, (200,), generator=g)
    fused_x, ref_x = torch.zeros(classes, dim), torch.zeros(classes, dim)
    fused = FusedStep(base, fused_x, 0.5, 100.0, 1e-3, 5e-4, "fp32")
    step, adam = ResidualGradient(base, 0.5, 100.0), CoupledAdam(ref_x, 1e-3, 5e-4)
    for i, idx in enumerate(epoch_batches(200, 32, torch.Generator().manual_seed(0)) * 4):
        lr = 1e-5 if i == 0 else 5e-3
        loss = fused(feats[idx], labels[idx], lr)
        ref_loss, grad = step(feats[idx], labels[idx], ref_x)
        adam.lr = lr
        adam.step(grad)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fused_x, ref_x, rtol=1e-5, atol=1e-6)
    assert ref_x.abs().max() > 1e-2  # it trained


@pytest.mark.parametrize("fused", [True, False])
def test_closed_form_training_agrees_with_autograd_fused_or_not(fused):
    """The H1-style exactness for both closed-form paths: the fused fp32 step and the torch one."""
    if fused:
        pytest.importorskip("numba")
    ctx = separable_context(views=3)
    rec = {"closed_form": [], "autograd": []}
    out = {}
    for mode in rec:
        out[mode] = TaskRes(TaskResParams(epochs=6, lr=2e-3, batch_size=8, gradient=mode, fused=fused)).fit(
            ctx, on_step=lambda e, s, lr, loss: rec[mode].append(loss)).residual
    assert len(rec["closed_form"]) == 6 * 5
    torch.testing.assert_close(torch.tensor(rec["closed_form"]), torch.tensor(rec["autograd"]))
    torch.testing.assert_close(out["closed_form"], out["autograd"], rtol=1e-4, atol=1e-6)


def test_fp32_runs_fused_when_numba_is_there_and_matches_the_torch_path(monkeypatch):
    pytest.importorskip("numba")
    from taskres.methods import taskres as taskres_module

    made = []
    ctx = separable_context(n_per_class=16, views=2)
    params = dict(epochs=20, lr=5e-3, batch_size=16)

    class Recording(taskres_module.FusedStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self.products)

    monkeypatch.setattr(taskres_module, "FusedStep", Recording)
    fused = TaskRes(TaskResParams(**params)).fit(ctx)
    plain = TaskRes(TaskResParams(**params, fused=False)).fit(ctx)
    assert made == ["fp32"]
    torch.testing.assert_close(fused.residual, plain.residual, rtol=1e-4, atol=1e-6)
    assert fused.meta.extra["loss_history"] == pytest.approx(plain.meta.extra["loss_history"], rel=1e-5)
