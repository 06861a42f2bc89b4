"""TaskRes's training step without autograd: the closed-form gradient of the equation in ``__init__``,
the fused CPU step built on it, and the training sources those steps read (normalised once, on the device).

Every class here is held by a test to the plain equation (``taskres_logits`` with autograd and
``torch.optim.Adam``): the equation first (``__init__.py``), then these fast paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import OptionError
from .fused import FusedBf16Adam, FusedFp32Adam, FusedSoftmaxTerms

PRODUCTS = ("fp32", "bf16")
GRADIENTS = ("closed_form", "autograd")


def check_products(products: str) -> None:
    if products not in PRODUCTS:
        raise OptionError("products", f"must be one of {', '.join(PRODUCTS)}, not {products!r}", method="taskres")


class SoftmaxTerms:
    """The [B, C] part of a TaskRes step, shared by :class:`ResidualGradient` and :class:`FusedStep`.

    From d = f t'^T and |t'|: the loss, g scaled per class by alpha s / (n_c B), and the correction's
    per-class coefficient coef_c = alpha s / n_c^3 * sum_b g_bc d_bc / B, so that dL/dx = g^T f - coef t'.
    """

    def __init__(self, alpha: float, scale: float):
        self.alpha, self.scale = alpha, scale
        self._row_cache = {}

    def _rows(self, batch: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (batch, device, dtype)
        if key not in self._row_cache:
            self._row_cache[key] = (torch.arange(batch, device=device),
                                    torch.full((batch,), -1.0, dtype=dtype, device=device))
        return self._row_cache[key]

    def __call__(self, dots: torch.Tensor, norms: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = len(labels)
        col = self.scale / norms  # s / n_c
        z = dots * col
        g = torch.softmax(z, dim=1)
        rows, minus_one = self._rows(batch, labels.device, g.dtype)
        # log-sum-exp from the row maxima: lse = max z - log(max p), exact, and p's maximum cannot underflow
        loss = (z.amax(dim=1) - g.amax(dim=1).log_() - z[rows, labels]).mean()
        g.index_put_((rows, labels), minus_one, accumulate=True)  # softmax - onehot
        k = col * (self.alpha / batch)
        coef = torch.linalg.vecdot(g, dots, dim=0).mul_(k).div_(norms.square())
        return loss, g.mul_(k), coef


class ResidualGradient:
    """A batch's cross-entropy and its exact gradient w.r.t. the residual x, without autograd.

    With t' = t + alpha x, n_c = |t'_c|, d_bc = f_b . t'_c, z_bc = s d_bc / n_c and g = (softmax(z) - onehot) / B:

        dL/dx_c = alpha (s / n_c) [ sum_b g_bc f_b  -  (sum_b g_bc d_bc / n_c^2) t'_c ]

    The normalisation of t' is folded into per-class scalings of g, so besides the two matrix products
    (f t'^T and g^T f) a step makes three passes over the [C, D] weights; their buffers are allocated once.

    ``products``: "fp32" computes everything in the dtype of ``base`` (the faithful path). "bf16" gives the
    two products bfloat16 operands (the features and t' rounded to 8 significant bits) with float32
    accumulation, and keeps the rest in float32: the norms, the softmax, the gradient's correction term and
    the residual that Adam updates. Where the hardware has bf16 dot products (x86 avx512_bf16/AMX, recent
    GPUs) the products run 2-3 times faster; BENCHMARKS.md measures the accuracy gap.

    Call with L2-normalised features of dtype ``feature_dtype``. The gradient returned is a buffer that the
    next call overwrites (an optimiser step consumes it first).
    """

    def __init__(self, base: torch.Tensor, alpha: float, scale: float, products: str = "fp32"):
        check_products(products)
        self.base, self.alpha, self.products = base, alpha, products
        self.feature_dtype = torch.bfloat16 if products == "bf16" else base.dtype
        self.terms = SoftmaxTerms(alpha, scale)
        self.weights = torch.empty_like(base)  # t'
        self.norms = torch.empty(base.shape[0], dtype=base.dtype, device=base.device)
        self.grad = torch.empty_like(base)
        self._low = torch.empty_like(base, dtype=torch.bfloat16) if products == "bf16" else None

    def __call__(self, feats: torch.Tensor, labels: torch.Tensor,
                 residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights, norms, grad = self.weights, self.norms, self.grad
        torch.add(self.base, residual, alpha=self.alpha, out=weights)  # t' = t + alpha * x
        torch.linalg.vector_norm(weights, dim=1, out=norms)
        if self._low is None:
            dots = torch.mm(feats, weights.t())  # d [B, C]
        else:
            self._low.copy_(weights)
            dots = torch.mm(feats, self._low.t()).to(weights.dtype)
        loss, g, coef = self.terms(dots, norms, labels)
        if self._low is None:
            torch.mm(g.t(), feats, out=grad)
        else:
            grad.copy_(torch.mm(g.t().to(torch.bfloat16), feats))
        grad.addcmul_(weights, coef[:, None], value=-1.0)
        return loss, grad


def taskres_loss_and_grad(feats_normed: torch.Tensor, labels: torch.Tensor, base: torch.Tensor,
                          residual: torch.Tensor, alpha: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One call of :class:`ResidualGradient` in full precision (the loss and a fresh gradient tensor)."""
    return ResidualGradient(base, alpha, scale)(feats_normed, labels, residual)


class FusedStep:
    """A whole training step on the CPU with the fused kernels of :mod:`.fused`: the same loss and gradient as
    ``ResidualGradient(..., products)`` followed by Adam (:class:`CoupledAdam`'s update), with the passes over
    the weights fused. fp32: the two products, the [B, C] softmax part and one kernel that makes the
    gradient, the Adam update and the next step's t' and norms. bf16: two kernels (t' to bf16 with its
    norms; gradient and Adam). ``residual`` is updated in place."""

    def __init__(self, base: torch.Tensor, residual: torch.Tensor, alpha: float, scale: float, lr: float,
                 weight_decay: float, products: str = "bf16"):
        check_products(products)
        self.products, self.param = products, residual  # what the step updates (in place)
        self.terms = FusedSoftmaxTerms(alpha, scale)
        self.feature_dtype = torch.bfloat16 if products == "bf16" else torch.float32
        if products == "bf16":
            self.adam = FusedBf16Adam(base, residual, alpha, lr, weight_decay)
        else:
            self.adam = FusedFp32Adam(base, residual, alpha, lr, weight_decay)
            self._product = torch.empty_like(base)

    def __call__(self, feats: torch.Tensor, labels: torch.Tensor, lr: float) -> torch.Tensor:
        weights, norms = self.adam.weights()
        self.adam.lr = lr
        if self.products == "bf16":
            dots = torch.mm(feats, weights.t()).float()
            loss, g, coef = self.terms(dots, norms, labels)
            self.adam.step(torch.mm(g.t().to(torch.bfloat16), feats), coef)
        else:
            loss, g, coef = self.terms(torch.mm(feats, weights.t()), norms, labels)
            self.adam.step(torch.mm(g.t(), feats, out=self._product), coef)
        return loss


class DeviceSource:
    """A training source whose batches (float32) and labels are moved to ``device``."""

    def __init__(self, source, device: torch.device):
        self.source, self.device = source, device
        self.labels = source.labels.to(device)
        self.num_samples = source.num_samples

    def features(self, idx, epoch):
        return self.source.features(idx, epoch).float().to(self.device)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 cached views are normalised in float32; float64 ones (parity checks) stay float64."""
    return x if x.dtype == torch.float64 else x.float()


class NormalisedSource:
    """A training source whose rows come L2-normalised, in the products' dtype, on the training device.

    Cached views are normalised and converted once, not at every step (in bf16 they take half the memory).
    """

    def __init__(self, source, dtype: torch.dtype, device: torch.device):
        self.source, self.dtype, self.device = source, dtype, device
        self.labels = source.labels.to(device)
        self.num_samples = source.num_samples
        views = getattr(source, "views", None)
        self._views = None if views is None else F.normalize(_at_least_fp32(views), dim=-1).to(device, dtype)

    def features(self, idx, epoch):
        if self._views is None:
            return F.normalize(_at_least_fp32(self.source.features(idx, epoch)), dim=-1).to(self.device, self.dtype)
        if self._views.shape[0] == 1:
            return self._views[0].index_select(0, idx.to(self.device))
        return self._views[self.source.view_choice(epoch)[idx].to(self.device), idx.to(self.device)]
