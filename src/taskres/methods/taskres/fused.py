"""Fused CPU kernels for TaskRes's step (optional: they need numba, ``pip install taskres[fast]``).

A TaskRes step at ImageNet scale is two matrix products plus memory-bound passes over the [C, D] weights:
t' = t + alpha x, its row norms, (in bf16) its bf16 copy, the gradient's correction term, and Adam over x
and its two moments. In torch these are five or six kernels, each reading and writing 4 MB arrays; here
each path has one or two, each one pass over its rows:

bf16 products:

- ``weights_bf16``: t' = t + alpha x -> its bf16 copy (round to nearest even, as torch's conversion) and
  the row norms |t'_c|.
- ``adam_step``: the gradient dL/dx_c = G_c - coef_c t'_c (G the bf16 product g^T f, with the per-class
  scalings of ``ResidualGradient`` already in g), plus Adam's coupled weight decay, then the Adam update of
  x, m and v: the same arithmetic as torch's Adam (a test holds the two together).

fp32 products (the faithful default):

- ``adam_weights_fp32``: the same gradient and Adam update, and in the same sweep the next step's
  t' = t + alpha x and its row norms, so a step is the two products, the [B, C] softmax part and this one
  kernel. Its arithmetic is torch's, operation for operation (``x + wd x`` coupled decay, ``lerp`` for the
  first moment, ``sqrt(v) / sqrt(1 - beta2^k) + eps``); only the order of the norm's sum differs.

All run over rows in parallel. The bf16 kernels are compiled with full fast-math (the products' operands
are rounded to 8 bits anyway). The fp32 kernel allows only reassociation and fused multiply-adds (what
vectorising the norm's sum needs): no approximate reciprocals or square roots, so it stays within
round-off of torch's fp32 step (tests hold it there).
"""

from __future__ import annotations

import functools
import importlib.util
import math

import numpy as np
import torch


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether numba is installed (it is imported, and the kernels compiled, only when first used)."""
    return importlib.util.find_spec("numba") is not None


@functools.lru_cache(maxsize=None)
def _kernels():
    import numba

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def weights_bf16(base, x, alpha, out_bits, norms):  # pragma: no cover - compiled
        rows, cols = base.shape
        for c in numba.prange(rows):
            acc = np.float32(0.0)
            for d in range(cols):
                w = base[c, d] + alpha * x[c, d]
                acc += w * w
                bits = np.float32(w).view(np.uint32)
                bits = np.uint32(bits + np.uint32(0x7FFF) + np.uint32((bits >> np.uint32(16)) & np.uint32(1)))
                out_bits[c, d] = np.uint16(np.uint32(bits >> np.uint32(16)))
            norms[c] = np.sqrt(acc)

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def adam_step(grad_bits, coef, base, x, alpha, m, v, step_size, beta1, beta2, eps, weight_decay,
                  inv_bias2_sqrt):  # pragma: no cover - compiled
        rows, cols = base.shape
        one_minus_b1 = np.float32(1.0) - beta1
        one_minus_b2 = np.float32(1.0) - beta2
        for c in numba.prange(rows):
            k = coef[c]
            for d in range(cols):
                g = np.uint32(np.uint32(grad_bits[c, d]) << np.uint32(16)).view(np.float32)
                xv = x[c, d]
                g = g - k * (base[c, d] + alpha * xv) + weight_decay * xv  # dL/dx + coupled L2
                mv = m[c, d] + one_minus_b1 * (g - m[c, d])
                vv = beta2 * v[c, d] + one_minus_b2 * g * g
                m[c, d] = mv
                v[c, d] = vv
                x[c, d] = xv - step_size * mv / (np.sqrt(vv) * inv_bias2_sqrt + eps)

    @numba.njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True)
    def adam_weights_fp32(grad, coef, base, x, alpha, m, v, step_size, one_minus_b1, beta2, one_minus_b2, eps,
                          weight_decay, bias2_sqrt, weights, norms):  # pragma: no cover - compiled
        rows, cols = base.shape
        for c in numba.prange(rows):
            k = coef[c]
            acc = np.float32(0.0)
            for d in range(cols):
                xv = x[c, d]
                g = (grad[c, d] - k * weights[c, d]) + weight_decay * xv  # dL/dx + coupled L2
                mv = m[c, d] + one_minus_b1 * (g - m[c, d])
                vv = beta2 * v[c, d] + one_minus_b2 * g * g
                m[c, d] = mv
                v[c, d] = vv
                xn = xv - step_size * mv / (np.sqrt(vv) / bias2_sqrt + eps)
                x[c, d] = xn
                w = base[c, d] + alpha * xn  # the next step's t'
                weights[c, d] = w
                acc += w * w
            norms[c] = np.sqrt(acc)

    @numba.njit(fastmath={"reassoc", "contract"}, inline="always")
    def exp_nonpositive(x):  # pragma: no cover - compiled
        # e^x for x <= 0, within 2 ulp of expf: x = k ln2 + r (ln2 in two parts, Cody-Waite), e^r by Cephes'
        # degree-6 polynomial for expf, times 2^k put in the exponent bits. Plain arithmetic, so the loops
        # around it vectorise (numba's own exp is a scalar libm call here: no SVML in pip's llvmlite).
        x = max(x, np.float32(-87.0))  # below, e^x < 1.7e-38 is flushed to ~0 either way
        k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
        r = (x - k * np.float32(0.693359375)) - k * np.float32(-2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        p = p * r * r + r + np.float32(1.0)
        return p * np.int32((np.int32(k) + np.int32(127)) << np.int32(23)).view(np.float32)

    @numba.njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True)
    def softmax_terms(dots, col, k, labels, g, gd, losses):  # pragma: no cover - compiled
        batch, classes = dots.shape
        for b in numba.prange(batch):
            top = np.float32(-np.inf)
            for c in range(classes):
                z = dots[b, c] * col[c]
                g[b, c] = z
                top = max(top, z)
            total = np.float32(0.0)
            for c in range(classes):
                e = exp_nonpositive(g[b, c] - top)
                g[b, c] = e
                total += e
            inv = np.float32(1.0) / total
            label = labels[b]
            losses[b] = top + np.log(total) - dots[b, label] * col[label]  # log-sum-exp - z_label
            for c in range(classes):
                u = g[b, c] * inv  # softmax - onehot
                if c == label:
                    u -= np.float32(1.0)
                gd[b, c] = u * dots[b, c]
                g[b, c] = u * k[c]

    return numba, weights_bf16, adam_step, adam_weights_fp32, softmax_terms


def _bits(t: torch.Tensor) -> np.ndarray:
    """A bf16 tensor's storage as a uint16 numpy array (no copy)."""
    return t.view(torch.int16).numpy().view(np.uint16)


class _FusedAdam:
    """The residual x, Adam's moments and the step count, updated by the fused kernels (CPU, float32)."""

    def __init__(self, base: torch.Tensor, residual: torch.Tensor, alpha: float, lr: float, weight_decay: float,
                 betas=(0.9, 0.999), eps: float = 1e-8):
        if not available():
            raise RuntimeError("the fused kernels need numba (pip install taskres[fast])")
        numba, self._weights_kernel, self._adam_kernel, self._fp32_kernel, _ = _kernels()
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        if base.dtype != torch.float32 or residual.dtype != torch.float32 or not residual.is_contiguous() \
                or base.device.type != "cpu" or residual.device.type != "cpu":
            raise ValueError("the fused kernels take contiguous float32 CPU tensors")
        self.base, self.residual = base.contiguous(), residual  # residual: updated in place
        self.alpha, self.lr, self.weight_decay, self.betas, self.eps = alpha, lr, weight_decay, betas, eps
        self.exp_avg = torch.zeros_like(residual)
        self.exp_avg_sq = torch.zeros_like(residual)
        self.steps = 0
        self.norms = torch.empty(base.shape[0], dtype=torch.float32)
        self._np = [a.numpy() for a in (self.base, residual, self.exp_avg, self.exp_avg_sq, self.norms)]

    def _next(self) -> tuple[np.float32, float]:
        """Count a step; Adam's bias-corrected step size (float32) and sqrt(1 - beta2^k) (float64)."""
        self.steps += 1
        beta1, beta2 = self.betas
        return np.float32(self.lr / (1 - beta1 ** self.steps)), math.sqrt(1 - beta2 ** self.steps)


class FusedBf16Adam(_FusedAdam):
    """For bf16 products: t' is made from x (in bf16, with its norms) before each step's products."""

    def __init__(self, base: torch.Tensor, residual: torch.Tensor, alpha: float, lr: float, weight_decay: float,
                 betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(base, residual, alpha, lr, weight_decay, betas, eps)
        self.low = torch.empty_like(base, dtype=torch.bfloat16)  # bf16 t'
        self._low_bits = _bits(self.low)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """bf16 t' and the float32 norms of t', from the current x."""
        base, x, _, _, norms = self._np
        self._weights_kernel(base, x, np.float32(self.alpha), self._low_bits, norms)
        return self.low, self.norms

    def step(self, product: torch.Tensor, coef: torch.Tensor) -> None:
        """One Adam step with the gradient ``product - coef[:, None] * t'`` (``product`` bf16 [C, D])."""
        step_size, bias2_sqrt = self._next()
        beta1, beta2 = self.betas
        base, x, m, v, _ = self._np
        self._adam_kernel(_bits(product.contiguous()), coef.float().contiguous().numpy(), base, x,
                          np.float32(self.alpha), m, v, step_size, np.float32(beta1), np.float32(beta2),
                          np.float32(self.eps), np.float32(self.weight_decay), np.float32(1 / bias2_sqrt))


class FusedFp32Adam(_FusedAdam):
    """For fp32 products: t' (float32) and its norms are kept, and remade by each step's kernel from the
    updated x, so that a step is the products, the softmax part and one pass over the weights."""

    def __init__(self, base: torch.Tensor, residual: torch.Tensor, alpha: float, lr: float, weight_decay: float,
                 betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(base, residual, alpha, lr, weight_decay, betas, eps)
        self.current = torch.add(self.base, residual, alpha=alpha)  # t' for the first step
        torch.linalg.vector_norm(self.current, dim=1, out=self.norms)
        self._current = self.current.numpy()

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """t' = t + alpha x and its norms, for the current x."""
        return self.current, self.norms

    def step(self, product: torch.Tensor, coef: torch.Tensor) -> None:
        """One Adam step with the gradient ``product - coef[:, None] * t'`` (``product`` float32 [C, D]); t' and
        its norms are then those of the updated x."""
        if product.dtype != torch.float32 or not product.is_contiguous():
            raise ValueError("the fused fp32 step takes a contiguous float32 product")
        step_size, bias2_sqrt = self._next()
        beta1, beta2 = self.betas
        base, x, m, v, norms = self._np
        # 1 - beta in double, then rounded, as torch does (1 - float32(0.999) would be 1.3e-5 off)
        self._fp32_kernel(product.numpy(), coef.float().contiguous().numpy(), base, x, np.float32(self.alpha), m, v,
                          step_size, np.float32(1 - beta1), np.float32(beta2), np.float32(1 - beta2),
                          np.float32(self.eps), np.float32(self.weight_decay), np.float32(bias2_sqrt), self._current,
                          norms)


class FusedSoftmaxTerms:
    """:class:`~taskres.methods.taskres.SoftmaxTerms` (the [B, C] part of a step) as one kernel on rows in
    parallel: z = s d / n, the softmax with its log-sum-exp, g = (softmax - onehot) scaled per class, and the
    products g d whose column sums make the correction's coefficients. Same arithmetic as the torch ops to
    round-off (the exponential is a polynomial within 2 ulp of expf). Buffers are kept per batch size; the g
    returned is overwritten by the next call."""

    def __init__(self, alpha: float, scale: float):
        if not available():
            raise RuntimeError("the fused kernels need numba (pip install taskres[fast])")
        self.alpha, self.scale = alpha, scale
        self._kernel = _kernels()[4]
        self._buffers: dict[tuple[int, int], tuple] = {}

    def __call__(self, dots: torch.Tensor, norms: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, classes = dots.shape
        if dots.dtype != torch.float32 or dots.device.type != "cpu":
            raise ValueError("the fused softmax terms take float32 CPU dots")
        if (batch, classes) not in self._buffers:
            self._buffers[(batch, classes)] = (torch.empty(batch, classes), torch.empty(batch, classes),
                                               torch.empty(batch))
        g, gd, losses = self._buffers[(batch, classes)]
        col = self.scale / norms  # s / n_c
        k = col * (self.alpha / batch)
        self._kernel(dots.contiguous().numpy(), col.numpy(), k.numpy(), labels.contiguous().numpy(), g.numpy(),
                     gd.numpy(), losses.numpy())
        coef = gd.sum(dim=0).mul_(k).div_(norms.square())
        return losses.mean(), g, coef
